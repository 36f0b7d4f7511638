#!/usr/bin/env bash
# Run one benchmark on an earlier commit and on the current code, alternating, in one go:
#
#   bash benchmarks/before_after.sh BASE_COMMIT ROUNDS bench_core.py --tensors 64 --repeat 3
#   AFTER=HEAD bash benchmarks/before_after.sh BASE_COMMIT ROUNDS bench_tq.py --mib 128
#
# Each round runs the base first, then the current code, so drift on a shared machine hits
# both alike; the spread between a version's own rounds is the run-to-run noise. The current
# code is the working tree, or with AFTER=<rev> a checkout of that commit (so edits made to
# the working tree while the benchmark runs do not change what is measured). Each version
# runs from its own directory with PYTHONPATH set to it, which Ray's actors inherit too. Each
# run's output goes to benchmarks/results/before_after/<bench>-<base|head>-<round>.txt.
# TRIES=<n> runs a version again (up to n times in all) when it exits non-zero: on a loaded
# machine Ray can fail to start within its fixed 30 s, which measures nothing.
set -euo pipefail
base=$1; rounds=$2; bench=$3; shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trees=()
cleanup() { for t in "${trees[@]}"; do git -C "$here" worktree remove --force "$t"; done; }
trap cleanup EXIT
git -C "$here" worktree add --detach "$scratch/base" "$base" >/dev/null
trees+=("$scratch/base")
after=$here
if [[ -n "${AFTER:-}" ]]; then
  git -C "$here" worktree add --detach "$scratch/after" "$AFTER" >/dev/null
  trees+=("$scratch/after")
  after=$scratch/after
fi
echo "base: $(git -C "$scratch/base" rev-parse --short HEAD); after: ${AFTER:-working tree} $(git -C "$after" rev-parse --short HEAD)"
out="$here/benchmarks/results/before_after"
mkdir -p "$out"
run() {  # run DIR LABEL ROUND ARGS...: one benchmark run of the code in DIR
  local dir=$1 label=$2 round=$3; shift 3
  for try in $(seq 1 "${TRIES:-1}"); do
    if (cd "$dir" && PYTHONPATH="$dir" python "benchmarks/$bench" "$@") | tee "$out/${bench%.py}-$label-$round.txt"; then
      return 0
    fi
    echo "== $label round $round: try $try failed"
  done
  return 1
}
for round in $(seq 1 "$rounds"); do
  echo "== round $round: base $base"
  run "$scratch/base" base "$round" "$@"
  echo "== round $round: ${AFTER:-working tree}"
  run "$after" head "$round" "$@"
done
