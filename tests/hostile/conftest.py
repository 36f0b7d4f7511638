"""Fixtures of the hostile-repository cases: a fresh scene per case, copied from one template."""

from __future__ import annotations

from pathlib import Path

import pytest

from .kit import Scene, build_template, make_scene


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("hostile-template"))


@pytest.fixture
def scene(template: Path, tmp_path: Path) -> Scene:
    # tmp_path's parents are private to root; unprivileged cases get a base they can reach.
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="tqsnap-hostile-", dir="/tmp"))
    yield make_scene(template, base)
    import shutil

    for path in [base, *base.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(base, ignore_errors=True)
