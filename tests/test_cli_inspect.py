"""``tqsnap ls``, ``show``, ``restore --to`` and partial loads, run as an operator runs them.

Each restored file is then read by a separate Python that never imports tqsnap, with the
loader a user would reach for (``torch.load(weights_only=True)``, safetensors, DCP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_subprocess import run_tqsnap as run

import tqsnap
from tqsnap.store import open_store
from tqsnap.store.counting import CountingStore

EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND = 0, 2, 3




def lines(proc: subprocess.CompletedProcess[str], command: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(d["command"] == command and d["schema"] == 1 and d["tqsnap_version"] for d in docs)
    return docs


def without_tqsnap(code: str, tmp_path: Path) -> str:
    """Run ``code`` in a Python that cannot import tqsnap; return its stdout."""
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    (blocker / "tqsnap.py").write_text("raise ImportError('tqsnap must not be needed')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(blocker)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


STATE = {
    "model": {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(4, dtype=torch.bfloat16)},
    "optim": [{"lr": 0.1, "betas": (0.9, 0.99)}],
    "step": 7,
    "name": "run-1",
}


@pytest.fixture
def repo(tmp_path: Path) -> str:
    url = str(tmp_path / "repo")
    tqsnap.save(url, STATE, stream="run")
    return url


def test_ls_lists_items_with_kind_dtype_shape_and_size(repo: str) -> None:
    proc = run("ls", repo, "run@1", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    docs = lines(proc, "ls")
    assert [(d["path"], d["kind"], d["dtype"], d["shape"], d["size"]) for d in docs] == [
        ("model/b", "tensor", "bfloat16", [4], 8),
        ("model/w", "tensor", "float32", [3, 4], 48),
    ]
    text = run("ls", repo, "latest", "--stream", "run").stdout
    assert "model/w" in text and "3x4" in text and "48 B" in text


def test_show_prints_human_times_and_sizes_not_reprs(repo: str) -> None:
    proc = run("show", repo, "--snapshot", "run@1")
    assert proc.returncode == EXIT_OK, proc.stderr
    out = proc.stdout
    assert "UTC" in out and ("ago" in out or "just now" in out)
    assert "items" in out and " B" in out
    assert "{" not in out and "'" not in out, out  # no dict or string reprs


def test_restore_to_pt_loads_with_plain_torch_weights_only(repo: str, tmp_path: Path) -> None:
    target = tmp_path / "out.pt"
    proc = run("restore", repo, "run@1", "--to", str(target), "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    (doc,) = lines(proc, "restore")
    assert doc["format"] == "torch" and doc["tensors"] == 2
    out = without_tqsnap(
        f"import torch; s = torch.load({str(target)!r}, weights_only=True); "
        "print(s['model']['w'].sum().item(), s['model']['b'].dtype, s['optim'][0]['betas'], s['step'], s['name'])",
        tmp_path,
    )
    assert out.split() == ["66.0", "torch.bfloat16", "(0.9,", "0.99)", "7", "run-1"]
    proc = run("restore", repo, "run@1", "--to", str(target))
    assert proc.returncode == EXIT_USAGE and "--force" in proc.stderr, "an existing file is not replaced silently"


def test_restore_include_writes_only_the_chosen_items(repo: str, tmp_path: Path) -> None:
    target = tmp_path / "part.pt"
    proc = run("restore", repo, "run@1", "--to", str(target), "--include", "model/w", "--include", "step")
    assert proc.returncode == EXIT_OK, proc.stderr
    state = torch.load(target, weights_only=True)
    assert set(state) == {"model", "step"} and set(state["model"]) == {"w"}
    proc = run("restore", repo, "run@1", "--to", str(tmp_path / "none.pt"), "--include", "nothing*")
    assert proc.returncode == EXIT_NOT_FOUND and "tqsnap ls" in proc.stderr
    assert not (tmp_path / "none.pt").exists()


def test_restore_to_safetensors_loads_with_safetensors_alone(repo: str, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    target = tmp_path / "model.safetensors"
    proc = run("restore", repo, "run@1", "--to", str(target), "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    (doc,) = lines(proc, "restore")
    assert "step" in doc["skipped"]
    out = without_tqsnap(
        f"from safetensors.torch import load_file; s = load_file({str(target)!r}); print(sorted(s))", tmp_path
    )
    assert out.strip() == "['model.b', 'model.w']"


def test_restore_to_safetensors_without_the_package_is_a_clear_error(repo: str, tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "safetensors"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('not installed')\n")
    proc = run(
        "restore", repo, "run@1", "--to", str(tmp_path / "x.safetensors"),
        env={"PYTHONPATH": os.pathsep.join([str(shim.parent), os.getcwd()])},
    )
    assert proc.returncode == EXIT_USAGE and "pip install safetensors" in proc.stderr


def test_a_dcp_snapshot_restores_to_a_dcp_directory_and_a_pt_file(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    import tqsnap.dcp

    url = str(tmp_path / "repo")
    state = {"model": {"w": torch.arange(20.0).reshape(4, 5), "b": torch.ones(3)}, "step": 11}
    dcp.save(state, storage_writer=tqsnap.dcp.Writer(url, stream="ck"))
    directory = tmp_path / "ckpt"
    proc = run("restore", url, "ck@latest", "--to", str(directory))
    assert proc.returncode == EXIT_OK, proc.stderr
    out = without_tqsnap(
        "import torch, torch.distributed.checkpoint as dcp\n"
        "from torch.distributed.checkpoint.format_utils import dcp_to_torch_save\n"
        f"dcp_to_torch_save({str(directory)!r}, 'full.pt')\n"
        "s = torch.load('full.pt', weights_only=False)\n"
        "print(s['model']['w'].sum().item(), s['model']['b'].tolist(), s['step'])\n",
        tmp_path,
    )
    assert out.split("\n")[0] == "190.0 [1.0, 1.0, 1.0] 11"
    proc = run("restore", url, "ck@1", "--to", str(tmp_path / "w.pt"), "--include", "model.w")
    assert proc.returncode == EXIT_OK, proc.stderr
    state_w = torch.load(tmp_path / "w.pt", weights_only=True)
    assert list(state_w) == ["model"] and list(state_w["model"]) == ["w"]


def test_load_include_fetches_only_the_shards_it_needs(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    big = {"a": torch.randn(2_000_000), "b": torch.randn(2_000_000), "step": 3}
    tqsnap.save(url, big, stream="s")
    full = CountingStore(open_store(url))
    everything = tqsnap.load(full, stream="s")
    part = CountingStore(open_store(url))
    chosen = tqsnap.load(part, stream="s", include=["b"])
    assert set(chosen) == {"b"} and torch.equal(chosen["b"], everything["b"])
    assert part.bytes["get"] < 0.6 * full.bytes["get"], (part.bytes, full.bytes)
    assert part.bytes["get"] >= big["b"].numel() * 4


@pytest.mark.s3
def test_ls_and_restore_from_a_real_s3_server(s3_repo_url: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, options = s3_repo_url
    tqsnap.save(url, STATE, stream="run", storage_options=options)
    endpoint = ["--endpoint-url", options["endpoint_url"]]
    proc = run("ls", url, "run@1", "--json", *endpoint, options=options)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert [d["path"] for d in lines(proc, "ls")] == ["model/b", "model/w"]
    target = tmp_path / "s3.pt"
    proc = run("restore", "run@latest", "--to", str(target), *endpoint, env={"TQSNAP_REPO": url}, options=options)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert torch.load(target, weights_only=True)["model"]["w"].sum().item() == 66.0
    proc = run("restore", url, "run@4", "--to", str(tmp_path / "no.pt"), "--json", *endpoint, options=options)
    assert proc.returncode == EXIT_NOT_FOUND
    assert lines(proc, "restore")[0]["error"]["exit_code"] == EXIT_NOT_FOUND
