"""A minimal reader of tqsnap repositories written from docs/format.md (and docs/format/) alone.

It imports nothing of tqsnap: only the standard library, xxhash and zstandard. It reads
format 1.0, 1.1, 1.2 and 2.0 (state tree versions 1 to 3; the columnar body). It lists
streams, resolves snapshots (tombstones, tags), fetches and verifies shards, assembles items,
and rebuilds ``state_dict`` trees. Tensors come back as ``(dtype name, shape, raw bytes)``, so
dtypes numpy lacks (bfloat16, float8) need no special case. Its one job is to prove that the
format document is enough to read what tqsnap writes.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash
import zstandard

SEQ_FILE = re.compile(r"([0-9]{20})\.json")
#: docs/format.md section 7.1: bytes per element of every dtype name.
DTYPE_SIZE = {"bool": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "int8": 1, "int16": 2, "int32": 4,
              "int64": 8, "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "complex32": 4, "complex64": 8,
              "complex128": 16, "bits16": 2} | dict.fromkeys(
    ["float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
     "bits8", "bits1x8", "bits2x4", "bits4x2", *(f"{s}int{n}" for s in ("", "u") for n in range(1, 8))], 1)  # fmt: skip


@dataclass(frozen=True, eq=False)  # hashable by identity: a tensor may be a dict key, as in torch
class RawTensor:
    dtype: str
    shape: tuple[int, ...]
    data: bytes
    meta: dict[str, Any]


class FormatViolation(Exception):
    """The repository breaks a MUST of docs/format.md."""


def _json(path: Path, majors: tuple[str, ...] = ("1",)) -> dict[str, Any]:
    def no_constants(name: str) -> Any:
        raise FormatViolation(f"{path}: {name} is not allowed")

    doc = json.loads(path.read_bytes(), parse_constant=no_constants)
    if not isinstance(doc, dict):
        raise FormatViolation(f"{path}: not a JSON object")
    major = str(doc.get("format_version", "")).split(".")[0]
    if major not in majors:
        raise FormatViolation(f"{path}: unsupported format_version {doc.get('format_version')!r}")
    return doc


class Repo:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        config = _json(self.root / "tqsnap.json")
        if config["hash"] != "xxh3-128":
            raise FormatViolation("hash must be xxh3-128")

    def _seqs(self, prefix: str, stream: str) -> list[int]:
        folder = self.root / prefix / stream
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := SEQ_FILE.fullmatch(p.name)))

    def streams(self) -> list[str]:
        folder = self.root / "snapshots"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def visible(self, stream: str) -> list[int]:
        dead = set(self._seqs("tombstones", stream))
        return [s for s in self._seqs("snapshots", stream) if s not in dead]

    def resolve(self, stream: str, selector: str | int) -> int:
        visible = self.visible(stream)
        if selector == "latest":
            return visible[-1]
        if isinstance(selector, str) and selector.startswith("tag:"):
            versions = self._seqs("tags", selector[4:])  # format 1.1: the highest version wins
            name = f"{selector[4:]}/{versions[-1]:020d}" if versions else selector[4:]
            tag = _json(self.root / "tags" / f"{name}.json")
            if tag["target"] is None:
                raise FormatViolation(f"tag {selector} was deleted")
            if tag["target"]["stream"] != stream:
                raise FormatViolation(f"tag {selector} targets another stream")
            selector = tag["target"]["seq"]
        if selector not in visible:
            raise FormatViolation(f"{stream}@{selector} is not visible")
        return int(selector)

    def manifest(self, stream: str, seq: int) -> dict[str, Any]:
        m = _json(self.root / "snapshots" / stream / f"{seq:020d}.json", ("1", "2"))
        if m["stream"] != stream or m["seq"] != seq:
            raise FormatViolation(f"manifest {stream}@{seq} names {m['stream']}@{m['seq']}")
        if m["format_version"].startswith("2.") and m["body_format"] != "columnar/1":
            raise FormatViolation(f"manifest {stream}@{seq}: unknown body_format {m['body_format']!r}")
        if m["format_version"].startswith("2."):
            m["items"], m["extra"] = columnar_body(bytes(self.shard(m["shards"][m["body_shard"]])))
        elif m.get("body_shard") is not None:
            body = json.loads(bytes(self.shard(m["shards"][m["body_shard"]])))
            m["items"], m["extra"] = body["items"], body["extra"]
        return m

    def shard(self, ref: dict[str, Any]) -> bytes:
        stored = (self.root / ref["key"]).read_bytes()
        if len(stored) != ref["stored_size"]:
            raise FormatViolation(f"{ref['key']}: {len(stored)} bytes stored, not {ref['stored_size']}")
        if ref["codec"] == "raw":
            data = stored
        elif ref["codec"] == "zstd":  # one frame that declares its content size
            if zstandard.frame_content_size(stored) != ref["size"]:
                raise FormatViolation(f"{ref['key']}: the zstd frame does not declare size {ref['size']}")
            data = zstandard.ZstdDecompressor().decompress(stored, max_output_size=ref["size"])
        else:
            raise FormatViolation(f"{ref['key']}: unknown codec {ref['codec']!r}")
        if len(data) != ref["size"] or xxhash.xxh3_128_hexdigest(data) != ref["hash"]:
            raise FormatViolation(f"{ref['key']}: bytes do not match size and hash")
        return data

    def items(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Every item of a snapshot: tensors as RawTensor, other kinds as bytes."""
        shards = [self.shard(ref) for ref in manifest["shards"]]
        out: dict[str, Any] = {}
        for item in manifest["items"]:
            parts = []
            for index, offset, length in item["extents"]:
                if offset + length > len(shards[index]):
                    raise FormatViolation(f"item {item['path']}: extent outside its shard")
                parts.append(shards[index][offset : offset + length])
            data = b"".join(parts)
            if len(data) != item["size"]:
                raise FormatViolation(f"item {item['path']}: extents do not add up to its size")
            if "hash" in item and xxhash.xxh3_128_hexdigest(data) != item["hash"]:
                raise FormatViolation(f"item {item['path']}: bytes do not match its hash")
            if item["kind"] == "tensor":
                if math.prod(item["shape"]) * DTYPE_SIZE[item["dtype"]] != item["size"]:
                    raise FormatViolation(f"item {item['path']}: size is not elements times element size")
                out[item["path"]] = RawTensor(item["dtype"], tuple(item["shape"]), data, item.get("meta", {}))
            else:
                out[item["path"]] = data
        return out


def columnar_body(data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A ``columnar/1`` body (docs/format.md section 6.1) as the items and extra of a JSON body."""
    (header_len,) = struct.unpack_from("<I", data, 8)
    if data[:8] != b"TQSNCOL1" or 12 + header_len > len(data):
        raise FormatViolation("not a columnar/1 body")
    h = json.loads(data[12 : 12 + header_len])
    if h["body_format"] != "columnar/1":
        raise FormatViolation(f"body_format {h['body_format']!r}")

    def col(name: str, code: str = "", width: int = 1) -> Any:
        off, length = h["columns"][name]
        if off < 12 + header_len or off + length > len(data) or length % width:
            raise FormatViolation(f"column {name} lies outside the body")
        return struct.unpack_from(f"<{length // width}{code}", data, off) if code else data[off : off + length]

    po, paths, kind, dtype, flags = col("path_offsets", "I", 4), col("path_data"), col("kind"), col("dtype"), col("flags")
    size, so, dims, xo = col("size", "Q", 8), col("shape_offsets", "I", 4), col("shape_dims", "Q", 8), col("extent_offsets", "I", 4)
    xs, xoff, xlen = col("extent_shard", "I", 4), col("extent_offset", "Q", 8), col("extent_length", "Q", 8)
    hashes, mo, metas = col("hash"), col("meta_offsets", "I", 4), col("meta_data")
    items = []
    for i in range(h["items"]):
        item = {"path": paths[po[i] : po[i + 1]].decode("utf-8"), "kind": h["kinds"][kind[i]], "size": size[i],
                "extents": [[xs[j], xoff[j], xlen[j]] for j in range(xo[i], xo[i + 1])]}
        if h["dtypes"][dtype[i]] is not None:
            item["dtype"] = h["dtypes"][dtype[i]]
        if flags[i] & 1:
            item["shape"] = list(dims[so[i] : so[i + 1]])
        if flags[i] & 2:
            item["hash"] = hashes[16 * i : 16 * i + 16].hex()
        if mo[i + 1] > mo[i]:
            item["meta"] = json.loads(metas[mo[i] : mo[i + 1]])
        items.append(item)
    if len({item["path"] for item in items}) != len(items):
        raise FormatViolation("two items share a path")
    return items, json.loads(col("extra"))


def state_tree(node: dict[str, Any], items: dict[str, Any], version: int = 3) -> Any:
    """Rebuild a ``state_dict`` tree (docs/format/state_dict.md) over the snapshot's items."""
    ((tag, body),) = node.items()
    if tag in ("v", "int"):
        return body
    if tag == "$int":
        return int(body)
    if tag in ("float", "$float"):
        special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
        return special[body] if isinstance(body, str) else float(body)
    if tag == "dict":  # tree version 3 keeps the order in an array of pairs
        return {k: state_tree(v, items, version) for k, v in (body if version >= 3 else body.items())}
    if tag in ("items", "$dict"):
        return {_key(state_tree(k, items, version)): state_tree(v, items, version) for k, v in body}
    if tag == "list":
        return [state_tree(v, items, version) for v in body]
    if tag in ("tuple", "$tuple"):
        return tuple(state_tree(v, items, version) for v in body)
    if tag in ("tensor", "bytes"):
        return items[body]
    if tag == "bytearray":
        return bytearray(items[body])
    raise FormatViolation(f"state tree node {tag!r} is not readable without pickle")


def _key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def job_part(manifest: dict[str, Any], part: str) -> dict[str, Any]:
    """The manifest a snapshot of one part's kind would have (docs/format/job.md, "Reading one part")."""
    if manifest["kind"] != "job" or manifest["extra"]["job"]["version"] != 1:
        raise FormatViolation("not a job snapshot of layout version 1")
    entry, prefix = manifest["extra"]["job"]["parts"][part], f"{part}/"
    items = [{**i, "path": i["path"][len(prefix) :]} for i in manifest["items"] if i["path"].startswith(prefix)]
    if len(items) != entry["items"]:
        raise FormatViolation(f"part {part!r}: {len(items)} items, not {entry['items']}")
    return {**manifest, "kind": entry["kind"], "extra": entry["header"], "items": items}


def load_state(repo: Repo, stream: str, selector: str | int = "latest", part: str | None = None) -> Any:
    manifest = repo.manifest(stream, repo.resolve(stream, selector))
    if part is not None:
        manifest = job_part(manifest, part)
    version = manifest["extra"].get("tree_version")
    if manifest["kind"] != "state_dict" or version not in (1, 2, 3):
        raise FormatViolation("not a state_dict snapshot of tree version 1, 2 or 3")
    return state_tree(manifest["extra"]["tree"], repo.items(manifest), version)
