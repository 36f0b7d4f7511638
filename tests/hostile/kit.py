"""Building blocks of the hostile-repository cases: a scene, fingerprints and one refusal check.

A scene is a small valid repository (stream ``s`` with seqs 1 and 2, tag ``keep`` on seq 1)
with a sentinel directory ``outside/`` beside it holding files an escape would reach: a copy of
a shard under a shard-like name, a copy of a manifest, a secret. Every case asserts that
nothing outside was written, deleted or read (its files' atimes are set before their mtimes,
so under ``relatime`` any read moves them), and that the repository's tree is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tqsnap.errors import TqsnapError

STREAM = "s"
MANIFEST_2 = "snapshots/s/00000000000000000002.json"
MANIFEST_1 = "snapshots/s/00000000000000000001.json"
TAG_KEY = "tags/keep.json"
CONFIG = "tqsnap.json"
SECRET = b"outside-the-repository secret bytes\n" * 64
OLD = 30 * 86400  # seconds: older than any grace a scene uses
NOBODY = 65534


def fingerprint(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``root`` (never following links): type, size, mtime and content hash."""
    out: dict[str, tuple[Any, ...]] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode), st.st_mtime_ns)
    return out


@dataclass
class Scene:
    base: Path
    repo: Path
    outside: Path
    atime_probe: bool  # whether this file system moves atime on a read (relatime/strictatime)

    @property
    def url(self) -> str:
        return str(self.repo)

    def path(self, key: str) -> Path:
        return self.repo / key

    def doc(self, key: str = MANIFEST_2) -> dict[str, Any]:
        return json.loads(self.path(key).read_bytes())

    def write(self, key: str, content: bytes | dict[str, Any]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        path.write_bytes(data)

    def shard_keys(self, seq: int = 2) -> list[str]:
        return [s["key"] for s in self.doc(f"snapshots/s/{seq:020d}.json")["shards"]]

    def all_shards(self) -> list[Path]:
        return sorted(p for p in (self.repo / "shards").rglob("*") if p.is_file() and not p.is_symlink())

    def age(self, *keys: str, seconds: float = OLD) -> None:
        """Make objects look old (LastModified = mtime) so gc may judge them."""
        for key in keys:
            path = self.path(key)
            st = path.lstat()
            os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds), follow_symlinks=False)

    def age_all_shards(self) -> None:
        self.age(*(str(p.relative_to(self.repo)) for p in self.all_shards()))

    # --- the sentinel ---------------------------------------------------------------------------

    def arm(self) -> None:
        """Set every outside file's atime well before its mtime (relatime then records a read)."""
        for path in self.outside.rglob("*"):
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                os.utime(path, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))

    def outside_atimes(self) -> dict[str, int]:
        return {
            str(p): p.stat().st_atime_ns for p in self.outside.rglob("*") if p.is_file() and not p.is_symlink()
        }


def build_template(root: Path) -> Path:
    """The valid repository every scene starts from (made once per session)."""
    import torch

    import tqsnap

    repo = root / "repo"
    tqsnap.init_repo(str(repo), grace="2h", max_write_duration="30m")
    tqsnap.save(str(repo), {"w": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, 4)}, stream=STREAM)
    tqsnap.save(str(repo), {"w": torch.arange(1000, dtype=torch.float32) * 2, "b": torch.ones(3, 4)}, stream=STREAM)
    tqsnap.tag(str(repo), "keep", stream=STREAM, snapshot=1)
    shutil.rmtree(repo / ".tmp", ignore_errors=True)
    return repo


def atime_moves(base: Path) -> bool:
    probe = base / "atime-probe"
    probe.write_bytes(b"x" * 10)
    st = probe.stat()
    os.utime(probe, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
    before = probe.stat().st_atime_ns
    probe.read_bytes()
    moved = probe.stat().st_atime_ns != before
    probe.unlink()
    return moved


def make_scene(template: Path, base: Path) -> Scene:
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # the unprivileged cases must reach it
    repo = base / "repo"
    shutil.copytree(template, repo, symlinks=True)
    outside = base / "outside"
    (outside / "shards" / "ab").mkdir(parents=True)
    shard = next(p for p in (template / "shards").rglob("*") if p.is_file())
    (outside / "shards" / "ab" / shard.name).write_bytes(shard.read_bytes())
    (outside / "shards" / shard.parent.name).mkdir(exist_ok=True)
    (outside / "shards" / shard.parent.name / shard.name).write_bytes(shard.read_bytes())
    (outside / "manifest.json").write_bytes((template / MANIFEST_2).read_bytes())
    (outside / "secret.bin").write_bytes(SECRET)
    for path in [base, *base.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return Scene(base, repo, outside, atime_moves(base))


def refuses(
    scene: Scene,
    action: Callable[[], Any],
    error: type[BaseException] = TqsnapError,
    names: str | None = None,
) -> BaseException:
    """Run ``action``; assert a typed error naming ``names`` and that nothing changed or leaked."""
    repo_before, outside_before = fingerprint(scene.repo), fingerprint(scene.outside)
    scene.arm()
    atimes = scene.outside_atimes()
    with pytest.raises(TqsnapError) as info:
        action()
    err = info.value
    assert isinstance(err, error), f"{type(err).__name__}: {err}"
    if names is not None:
        assert names in str(err), f"the error does not name {names!r}: {err}"
    assert SECRET.decode()[:20] not in str(err)
    unchanged(scene, repo_before, outside_before, atimes)
    return err


def unchanged(
    scene: Scene,
    repo_before: dict[str, tuple[Any, ...]],
    outside_before: dict[str, tuple[Any, ...]],
    atimes: dict[str, int],
) -> None:
    if scene.atime_probe:
        assert scene.outside_atimes() == atimes, "a file outside the repository was read"
    assert fingerprint(scene.outside) == outside_before, "something outside the repository changed"
    assert fingerprint(scene.repo) == repo_before, "the repository changed"


def behaves(scene: Scene, action: Callable[[], Any]) -> Any:
    """Run a valid ``action``; assert it changed nothing in the repository nor outside."""
    repo_before, outside_before = fingerprint(scene.repo), fingerprint(scene.outside)
    scene.arm()
    atimes = scene.outside_atimes()
    result = action()
    unchanged(scene, repo_before, outside_before, atimes)
    return result


def run_as_nobody(code: str, timeout: float = 60) -> dict[str, Any]:
    """Run ``code`` (which sets ``result``) as an unprivileged user; return ``result``.

    Permission cases need a user the kernel checks: root reads any directory. The code's
    exception, if any, comes back as ``{"error": type name, "message": str, "tqsnap": bool}``.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    return run_python(code, timeout=timeout, user=NOBODY)


def run_python(code: str, *, timeout: float = 60, user: int | None = None, prelude: str = "") -> dict[str, Any]:
    script = textwrap.dedent(
        """
        import json, sys, traceback
        from tqsnap.errors import TqsnapError
        {prelude}
        result = {{}}
        try:
        {body}
        except BaseException as exc:
            result = {{"error": type(exc).__name__, "message": str(exc)[:2000],
                       "tqsnap": isinstance(exc, TqsnapError), "trace": traceback.format_exc()[-3000:]}}
        sys.stdout.write("\\nRESULT " + json.dumps(result, default=str))
        """
    ).format(prelude=textwrap.dedent(prelude), body=textwrap.indent(textwrap.dedent(code), "    "))
    command = [sys.executable, "-c", script]
    if user is not None:  # setpriv, since Popen(user=...) cannot exec a venv python under /root
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to switch to an unprivileged user")
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    marker = proc.stdout.rfind("\nRESULT ")
    assert marker >= 0, f"the child died (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout[marker + len("\nRESULT ") :])
