"""Adapters: turn TransferQueue, torch DCP and plain state dicts into items and back."""
