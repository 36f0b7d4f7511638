"""Write the golden repository of format 2.0: manifests whose body is columnar (run once).

    python tests/golden/make_golden_columnar.py --out tests/golden/v2.0

tqsnap writes a columnar body only from 100,000 items; a golden repository of that size would
weigh tens of megabytes, so this script lowers the threshold to 0 items and writes the same
streams as ``make_golden.py``'s ``state_dict`` repository, every manifest of them format 2.0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import make_golden  # noqa: E402

import tqsnap.engine.writer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    tqsnap.engine.writer.COLUMNAR_BODY_MIN_ITEMS = 0  # every snapshot, even one of no items
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        expected = make_golden.write_state_dict_repo(repo)
        shutil.rmtree(repo / ".tmp", ignore_errors=True)
        target = args.out / "state_dict"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(repo, target / "repo")
        expected["torch"] = torch.__version__
        (target / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
