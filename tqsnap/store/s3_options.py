"""Storage options for an S3 store, in boto3's names or in fsspec/s3fs's.

Users arrive with options written for s3fs (``storage_options`` of pandas, fsspec, torch DCP's
fsspec writer) or for boto3. Both are accepted and mapped onto the keyword arguments of
:class:`~tqsnap.store.s3.S3Store`; one setting given twice with different values, or a key
that neither library defines for this purpose, is refused with an error naming it (a silently
ignored credential would send requests with another identity).

==========================================  =================================================
s3fs / fsspec                               boto3 / tqsnap
==========================================  =================================================
``key``                                     ``aws_access_key_id``
``secret``                                  ``aws_secret_access_key``
``token``                                   ``aws_session_token``
``profile``                                 ``profile`` (also ``profile_name``)
``client_kwargs={"endpoint_url": ...}``     ``endpoint_url``
``client_kwargs={"region_name": ...}``      ``region`` (also ``region_name``)
``config_kwargs={...}``                     ``config=botocore.config.Config(...)``
``endpoint_url`` (s3fs top level)           ``endpoint_url``
==========================================  =================================================
"""

from __future__ import annotations

from typing import Any

#: alias -> the S3Store argument it means.
_ALIASES = {
    "key": "aws_access_key_id",
    "secret": "aws_secret_access_key",
    "token": "aws_session_token",
    "profile_name": "profile",
    "region_name": "region",
}
#: client_kwargs keys (boto3 ``client()`` arguments) -> the S3Store argument.
_CLIENT_KWARGS = {
    "endpoint_url": "endpoint_url",
    "region_name": "region",
    "aws_access_key_id": "aws_access_key_id",
    "aws_secret_access_key": "aws_secret_access_key",
    "aws_session_token": "aws_session_token",
}


def normalize_s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with s3fs-style keys mapped to :class:`~tqsnap.store.s3.S3Store` arguments.

    Values that are None count as not given. Raises ``ValueError`` naming the key for a
    conflict or a ``client_kwargs`` entry tqsnap cannot honour.
    """
    out: dict[str, Any] = {}

    def put(name: str, value: Any, given_as: str) -> None:
        if value is None:
            return
        if name in out and out[name] != value:
            raise ValueError(
                f"storage option {given_as!r} conflicts with another option that sets {name!r} to a "
                "different value; give it once"
            )
        out[name] = value

    for key, value in options.items():
        if key == "client_kwargs":
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ValueError("storage option 'client_kwargs' must be a dict such as {'endpoint_url': URL}")
            for ck, cv in value.items():
                if ck not in _CLIENT_KWARGS:
                    raise ValueError(
                        f"storage option client_kwargs[{ck!r}] is not supported; accepted: "
                        f"{', '.join(sorted(_CLIENT_KWARGS))}"
                    )
                put(_CLIENT_KWARGS[ck], cv, f"client_kwargs[{ck!r}]")
        elif key == "config_kwargs":
            if value:
                from botocore.config import Config

                put("config", Config(**value), key)
        else:
            put(_ALIASES.get(key, key), value, key)
    return out
