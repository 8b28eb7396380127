"""The scaled paper protocol side by side with facebookresearch/open_lth (issue 21's target: ours >= 10x faster).

The protocol: LeNet-300-100 on Fashion-MNIST, Adam 1.2e-3, batch 60, `--iterations` per training (default
3,000), `--trials` trials (default 2) of the dense network, then `--rounds` pruning rounds (default 3), each
training the ticket and two controls (random re-initialisation, random mask with the same layer sparsity):
trials x (1 + 3 x rounds) trainings on each side (20 by default).

- ours: `dvc exp run -S trials=2 -S prune.rounds=3 -S train.iterations=N` (the rest: conf/config.yaml's
  defaults) in a fresh copy of this checkout's project files (the tests' `make_repo`: git init + commit).
- open_lth, per trial (its "replicate") R: `open_lth.py lottery --levels=3`, then `lottery_branch
  randomly_reinitialize --levels=1-3` and `lottery_branch randomly_prune --levels=1-3 --seed=R`, one process
  after another (open_lth trains one network per process at a time), CUDA hidden so both sides run on CPU;
  through SHIM below (two attributes patched for today's torch and numpy; open_lth's files are not edited).

What is timed: the wall time of the same trainings, data preparation excluded on both sides. Ours: the whole
`dvc exp run` (check, init, the dense round, every pruning round, summarize), after an untimed
`dvc repro prepare` committed in the copy (Fashion-MNIST -> data/prepared.pt). open_lth: its 3 x trials
processes, after an untimed copy of Fashion-MNIST in MNIST's raw format (the four idx files, uncompressed) to
`$HOME/open_lth_datasets/mnist/MNIST/raw/`, where `torchvision.datasets.MNIST(download=True)` finds them and
downloads nothing; each open_lth training still parses those files itself (its own data loading, timed).
open_lth hard-codes its folders under `~` (platforms/local.py), so its processes run with HOME set to a temporary
folder: nothing is written under the real home. Each pass starts both sides from empty result folders (no
cache, no run-cache, no finished open_lth run to skip). With `--passes` > 1 the two sides alternate (ours first
in passes 1, 3, ..., open_lth first in passes 2, 4, ...) and the table prints every pass and the medians. Both sides run with
the caller's OMP_NUM_THREADS (unset: torch's default); on a shared machine use OMP_NUM_THREADS=1.

It also counts the trainings each side really wrote (rows of our metrics/rounds.csv; open_lth's `logger`
files) and prints the final test accuracies (after the last iteration, mean over trials) next to each other
as a sanity check; the settings that differ between the two are printed under the table. Asserts nothing; not
part of `make test` or `make bench` (open_lth is not a dependency). Needs torchvision (open_lth imports it)
and the Fashion-MNIST idx files (Debian's dataset-fashion-mnist, or data/raw/fashion-mnist/).

    git clone https://github.com/facebookresearch/open_lth /path/to/open_lth   # commit 2ce732f here
    OMP_NUM_THREADS=1 python benchmarks/open_lth.py --open-lth /path/to/open_lth [--passes 1] [--iterations 3000]
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from conftest import env_for, make_repo, ran  # noqa: E402  the tests' fresh-copy repository
from lottery.raw import IDX_FILES, locate  # noqa: E402  torch-free

CONTROLS = ("reinit", "random")  # conf/config.yaml's default `controls`, both sides
BRANCHES = {"randomly_reinitialize": "reinit", "randomly_prune": "random"}
# open_lth (last commit 2020) under today's torch and numpy, without editing its checkout: its
# DistributedDataParallel wrapper class (unused on one CPU process) cannot be defined over today's torch DDP (MRO
# error at import), and numpy 2 removed np.product (its learning-rate schedule calls it). Run as `python -c SHIM`.
SHIM = ("import runpy, sys, numpy, torch; numpy.product = numpy.prod; "
        "torch.nn.parallel.DistributedDataParallel = type('DistributedDataParallel', (torch.nn.Module,), {}); "
        "sys.argv[0] = 'open_lth.py'; runpy.run_path('open_lth.py', run_name='__main__')")

# What differs between the two sides (printed under the table).
MISMATCHES = """\
settings that differ (the same on both: LeNet-300-100 784-300-100-10 ReLU, Fashion-MNIST, Adam lr 1.2e-3, batch 60,
no weight decay, the iterations per training, the trainings themselves, CPU, the caller's OMP_NUM_THREADS):
  pruning     ours: layer-wise, 20% of each hidden layer's remaining weights per round, output layer 10%.
              open_lth has no layer-wise strategy: sparse_global 20% of the hidden layers' remaining weights
              ranked together, output layer not pruned (its LeNet default, pruning_layers_to_ignore=fc.weight).
              Both train dense-with-mask, so the density does not change open_lth's cost; ours runs
              train.sparse auto (sparse below its crossover; these rounds, 80-51% dense, run dense).
  init        ours: Glorot normal weights, zero biases (the paper). open_lth: kaiming_normal weights (its LeNet
              default; it has no Glorot), biases nn.Linear's default uniform.
  data split  ours: 55,000 training images, 5,000 held out for validation. open_lth: all 60,000, no validation.
  evaluation  ours: validation on 5,000 images every 100 iterations (30 per training) with the early-stop copy,
              the test set (10,000) at the end. open_lth: the test set at the start of every epoch (1,000 iterations
              at batch 60: 4 evaluations per 3,000-iteration training) and a checkpoint every epoch.
  input       ours: in-memory tensors, batches by index. open_lth: per-sample PIL image -> ToTensor -> Normalize
              (MNIST's mean/std) in a DataLoader with 0 workers (its local platform's default).
  execution   ours: the networks of a round stacked and trained together in one stage process (the trials' dense
              networks, then trials x (ticket, reinit, random)). open_lth: one network at a time, 3 processes per trial.
  seeds       ours: data orders and the reinit control's weights seeded per trial. open_lth: data_order_seed unset
              (a fresh random order per run), and its reinit branch draws unseeded weights.
  random mask open_lth: randomly_prune --strategy layerwise --seed=<replicate> (each layer's mask shuffled).
  open_lth    run through a 2-line shim for today's torch/numpy (SHIM in this file: a stub for its unused DDP base
              class, numpy.product = numpy.prod); its code is unchanged.
  extra work  ours' timed `dvc exp run` also runs check, init (theta0), summarize (CSV, figures, report) and DVC's
              bookkeeping; open_lth's processes also save a checkpoint every epoch.
  accuracy    printed: the test accuracy after the last iteration on both sides (ours: final_test_accuracy, not
              the early-stop copy's test_accuracy)."""


def fashion_as_mnist(home: Path) -> None:
    """Fashion-MNIST's idx files, uncompressed, where open_lth's mnist dataset (torchvision MNIST) reads them."""
    raw = home / "open_lth_datasets" / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for role, src in locate("fashion-mnist", ROOT / "data" / "raw").items():
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as f, open(raw / IDX_FILES[role], "wb") as out:
            shutil.copyfileobj(f, out)


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {p.returncode} in {cwd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def ours(tmp: Path, a) -> tuple[float, int, dict, list[str]]:
    """(seconds of the `dvc exp run`, trainings written, {(round, variant): mean final test accuracy}, the stages
    it ran besides `check`)."""
    import csv

    repo = make_repo(tmp / "ours", env_for(tmp / "ours"), {})
    repo.dvc("repro", "prepare")  # untimed: Fashion-MNIST -> data/prepared.pt, committed so the run skips it
    repo.commit("data prepared")
    t = time.perf_counter()
    out = repo.dvc("exp", "run", "-S", f"trials={a.trials}", "-S", f"prune.rounds={a.rounds}",
             "-S", f"train.iterations={a.iterations}", "-S", f"controls=[{','.join(CONTROLS)}]")
    seconds = time.perf_counter() - t
    with open(repo.path / "metrics" / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    acc: dict = {}
    for r in rows:  # round 0's networks: variant "ticket" in rounds.csv
        variant = "dense" if int(r["index"]) == 0 else r["variant"]
        acc.setdefault((int(r["index"]), variant), []).append(float(r["final_test_accuracy"]))
    return seconds, len(rows), {k: statistics.mean(v) for k, v in acc.items()}, ran(out.stdout)


def open_lth(tmp: Path, a) -> tuple[float, int, dict]:
    """(seconds of its processes, trainings written, {(level, variant): mean final test accuracy})."""
    home = tmp / "open_lth_home"
    fashion_as_mnist(home)  # untimed
    env = {**os.environ, "HOME": str(home), "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    common = ["--default_hparams=mnist_lenet_300_100", "--dataset_name=mnist", "--batch_size=60",
              "--optimizer_name=adam", "--lr=0.0012", f"--training_steps={a.iterations}it",
              "--pruning_fraction=0.2", "--quiet"]
    levels = f"--levels=1-{a.rounds}" if a.rounds > 1 else "--levels=1"
    py = [sys.executable, "-c", SHIM]
    t = time.perf_counter()
    for r in range(1, a.trials + 1):
        run([*py, "lottery", *common, f"--replicate={r}", f"--levels={a.rounds}"], a.open_lth, env)
        run([*py, "lottery_branch", "randomly_reinitialize", *common, f"--replicate={r}", levels], a.open_lth, env)
        run([*py, "lottery_branch", "randomly_prune", *common, f"--replicate={r}", levels, f"--seed={r}"],
            a.open_lth, env)
    seconds = time.perf_counter() - t
    loggers = sorted((home / "open_lth_data").glob("lottery_*/replicate_*/level_*/*/logger"))
    acc: dict = {}
    for p in loggers:
        level, exp = int(p.parent.parent.name.split("_")[1]), p.parent.name
        variant = "ticket" if level > 0 else "dense"
        if exp != "main":
            variant = next(v for b, v in BRANCHES.items() if exp.startswith(f"lottery_branch_{b}_"))
        last = max((line.split(",") for line in p.read_text().split() if line.startswith("test_accuracy,")),
                   key=lambda x: int(x[1]))
        acc.setdefault((level, variant), []).append(100 * float(last[2]))
    return seconds, len(loggers), {k: statistics.mean(v) for k, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--open-lth", type=Path, required=True, help="a checkout of facebookresearch/open_lth")
    ap.add_argument("--iterations", type=int, default=3000, help="iterations per training (default 3000)")
    ap.add_argument("--trials", type=int, default=2, help="trials (open_lth: replicates), default 2")
    ap.add_argument("--rounds", type=int, default=3, help="pruning rounds (open_lth: levels), default 3")
    ap.add_argument("--passes", type=int, default=1, help="interleaved passes of both sides (default 1)")
    a = ap.parse_args()
    a.open_lth = a.open_lth.resolve()
    if not (a.open_lth / "open_lth.py").is_file():
        ap.error(f"--open-lth {a.open_lth}: no open_lth.py there")
    for key in ("iterations", "trials", "rounds", "passes"):
        if getattr(a, key) < 1:
            ap.error(f"--{key} {getattr(a, key)}: must be at least 1")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=a.open_lth, capture_output=True,
                                text=True).stdout.strip() or "?"
    except OSError:
        commit = "?"
    threads = os.environ.get("OMP_NUM_THREADS", "unset (torch's default)")
    print(f"scaled paper protocol: LeNet-300-100, Fashion-MNIST, {a.trials} trials x (dense + {a.rounds} rounds x "
          f"ticket + {' + '.join(CONTROLS)}), {a.iterations} iterations each; open_lth {commit} at {a.open_lth}; "
          f"OMP_NUM_THREADS {threads}; {a.passes} pass(es)", flush=True)

    results: dict[str, list] = {"ours": [], "open_lth": []}
    sides = {"ours": ours, "open_lth": open_lth}
    for p in range(a.passes):
        for name in (["ours", "open_lth"] if p % 2 == 0 else ["open_lth", "ours"]):
            with tempfile.TemporaryDirectory(prefix=f"bench-openlth-{name}-") as tmp:
                r = sides[name](Path(tmp), a)
            results[name].append(r)
            stages = f"; stages run: {' '.join(r[3])}" if name == "ours" else ""
            print(f"  pass {p + 1}: {name:8s} {r[0]:8.1f} s  ({r[1]} trainings{stages})", flush=True)

    expected = a.trials * (1 + a.rounds * (1 + len(CONTROLS)))
    print(f"\nside     seconds (median of {a.passes})  trainings  x iterations  net-it/s")
    med = {}
    for name, rs in results.items():
        med[name] = statistics.median(r[0] for r in rs)
        n = rs[-1][1]
        print(f"{name:8s} {med[name]:24.1f}  {n:9d}  x {a.iterations:10d}  {n * a.iterations / med[name]:8.0f}")
    ratios = [o[0] / w[0] for o, w in zip(results["open_lth"], results["ours"])]
    print(f"ratio open_lth / ours: {med['open_lth'] / med['ours']:.2f}x (medians)"
          + (f"; per pass {', '.join(f'{x:.2f}x' for x in ratios)}" if a.passes > 1 else "")
          + f"; trainings expected on each side: {expected}")

    acc_ours, acc_lth = results["ours"][-1][2], results["open_lth"][-1][2]
    print("\nfinal test accuracy (%, after the last iteration, mean over trials; last pass)")
    print("round  variant   ours  open_lth")
    for key in sorted(set(acc_ours) | set(acc_lth)):
        o, t = acc_ours.get(key), acc_lth.get(key)
        fmt = lambda x: f"{x:6.2f}" if x is not None else "     -"  # noqa: E731
        print(f"r{key[0]:<4d} {key[1]:8s} {fmt(o)}  {fmt(t)}")
    print("\n" + MISMATCHES)


if __name__ == "__main__":
    main()
