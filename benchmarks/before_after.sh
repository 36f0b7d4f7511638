#!/usr/bin/env bash
# Run one benchmark on an earlier commit and on the working tree, alternating, in one go:
#
#   bash benchmarks/before_after.sh BASE_COMMIT ROUNDS bench_core.py --tensors 64 --repeat 3
#
# Each round runs the base first, then the working tree, so drift on a shared machine hits
# both alike; the spread between a version's own rounds is the run-to-run noise. Each run's
# output goes to benchmarks/results/before_after/<bench>-<base|head>-<round>.txt.
set -euo pipefail
base=$1; rounds=$2; bench=$3; shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)/base
git -C "$here" worktree add --detach "$tree" "$base" >/dev/null
trap 'git -C "$here" worktree remove --force "$tree"' EXIT
out="$here/benchmarks/results/before_after"
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  echo "== round $round: base $base"
  (cd "$tree" && PYTHONPATH="$tree" python "benchmarks/$bench" "$@") | tee "$out/${bench%.py}-base-$round.txt"
  echo "== round $round: working tree"
  (cd "$here" && PYTHONPATH="$here" python "benchmarks/$bench" "$@") | tee "$out/${bench%.py}-head-$round.txt"
done
