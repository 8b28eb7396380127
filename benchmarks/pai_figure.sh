#!/usr/bin/env bash
# The "Pruning at initialization" figure (docs/pruning-at-init.md, benchmarks/results/pai-cpu/): IMP vs SNIP vs GraSP vs SynFlow vs random pruning at init,
# each with its controls (reinit, random = shuffle, invert), as DVC experiments of a fresh copy of this
# project, overlaid by `python -m lottery.compare --plot`.
#
#   benchmarks/pai_figure.sh OUT_DIR [-S key=value ...]     e.g. -S train.iterations=1000 -S prune.rounds=8
#   CONTROLS='[invert]' benchmarks/pai_figure.sh ...        fewer controls (default [reinit,random,invert])
#
# Needs dvc and the project's Python on PATH (`source .venv/bin/activate`); OUT_DIR/pai.png is the figure,
# OUT_DIR/repo the experiment repository (`dvc exp show` there lists every run).
set -euo pipefail
out=$(realpath -m "$1"); shift
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/repo"
(cd "$src" && git ls-files -z | xargs -0 cp --parents -t "$out/repo")
cd "$out/repo"
export PYTHONPATH=$PWD DVC_NO_ANALYTICS=1
git init -q -b main && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm template
python -m lottery.params >/dev/null
git add params.yaml && git -c user.name=bench -c user.email=bench@localhost commit -qm params --allow-empty
with_invert="controls=${CONTROLS:-[reinit,random,invert]}"
run() { local name=$1; shift; echo "== $name"; /usr/bin/time -f "$name: %e s" dvc exp run -n "$name" "$@" | grep -E "scored by|\] (ticket|reinit|random|invert):|^\[r[0-9]+\] trained"; }
run imp     -S "$with_invert" "$@"
run snip    -S prune.at=init -S prune.criterion=snip    -S "$with_invert" "$@"
run grasp   -S prune.at=init -S prune.criterion=grasp   -S "$with_invert" "$@"
run synflow -S prune.at=init -S prune.criterion=synflow -S "$with_invert" "$@"
# random pruning: its `random` control is the same experiment again and `invert` is undefined: reinit only
run random  -S prune.at=init -S prune.criterion=random  -S "$(echo "$with_invert" | sed 's/,\?invert//; s/,\?random//; s/\[,/[/')" "$@"
python -m lottery.compare --plot "$out/pai.png" imp snip grasp synflow random
dvc exp show --no-pager --csv > "$out/experiments.csv"
