"""Test helpers that ship with tqsnap, for its own tests and for authors of new store backends."""

from __future__ import annotations

from .store_contract import StoreContract

__all__ = ["StoreContract"]
