"""The cluster path on this machine: a 4-experiment tiny sweep on 1 vs 2 Ray worker nodes, and one experiment
through `lottery.cluster` against a local `dvc exp run` of the same experiment (the per-experiment overhead of
clone + restore + push + record).

Each case gets a fresh copy of the tests' tiny repository (mnist1d, `tests/conftest.py`), a fresh folder DVC
remote and bare git remote (nothing to restore), and its own Ray test cluster: a head node with no CPU (the
driver's) and 1 or 2 worker nodes with one CPU each, shut down after. Wall-clock times of the driver
process; the one experiment runs `--passes` times (default 3), cluster and local interleaved, and the
overhead printed is the median of the per-pass differences (the machine is shared: compare within one run).
Asserts nothing.

Every experiment runs on `--threads` intra-op threads (default 1, so that two one-CPU nodes are two
cores' worth of work; with torch's default, one experiment already uses every core of this machine).

    python benchmarks/cluster.py [--passes 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY, add_remotes, env_for, make_repo  # noqa: E402  the tests' tiny repository

TINY_EXP = ["trials=1", "prune.rounds=1"]
SWEEP = [*TINY_EXP, "prune.rate=0.3,0.5", "seed=0,1"]
ONE = [*TINY_EXP, "prune.rate=0.3", "seed=0"]


def _repo(tmp: Path, name: str):
    repo = make_repo(tmp / name, env_for(tmp / name), TINY)
    add_remotes(repo, tmp / f"{name}-remotes")
    return repo


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("-S", o)]


def on_cluster(tmp: Path, name: str, workers: int, overrides: list[str]) -> tuple[float, str]:
    """(driver wall seconds, its output) of one `lottery.cluster` run on a fresh cluster with `workers` nodes."""
    from ray.cluster_utils import Cluster

    repo = _repo(tmp, name)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(workers):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        t0 = time.perf_counter()
        out = repo.run(sys.executable, "-m", "lottery.cluster", "--address", c.address, "--name", name,
                       *_sets(overrides)).stdout
        return time.perf_counter() - t0, out
    finally:
        c.shutdown()


def local(tmp: Path, overrides: list[str]) -> float:
    repo = make_repo(tmp, env_for(tmp), TINY)
    t0 = time.perf_counter()
    repo.dvc("exp", "run", "-n", "local", *_sets(overrides))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3, help="interleaved cluster/local passes of the one experiment")
    ap.add_argument("--threads", default="1", help="OMP_NUM_THREADS of every experiment, cluster and local (the "
                    "driver forwards it to the tasks; default 1: one thread per one-CPU node)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = args.threads  # env_for() copies it into every repo's environment
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as d:
        tmp = Path(d)
        one_node, _ = on_cluster(tmp, "one", 1, SWEEP)
        two_nodes, _ = on_cluster(tmp, "two", 2, SWEEP)
        passes = []
        for i in range(args.passes):  # interleaved, so that a change of the machine's load hits both sides
            single, out = on_cluster(tmp, f"single{i}", 1, ONE)
            passes.append((single, local(tmp / f"local{i}", ONE), re.search(r"; ([\d.]+) s \((.*)\)", out)))
    print(f"lottery.cluster on this machine ({os.cpu_count()}"
          f" cores, shared); tiny experiments: mnist1d MLP, {' '.join(TINY_EXP)}, 200 iterations, "
          f"OMP_NUM_THREADS={args.threads}; fresh remotes")
    print(f"sweep of 4 ({' '.join(SWEEP[2:])}): 1 worker node {one_node:6.1f} s, 2 worker nodes {two_nodes:6.1f} s: "
          f"ratio {one_node / two_nodes:.2f}x")
    for i, (single, alone, phases) in enumerate(passes):
        print(f"one experiment ({' '.join(ONE)}), pass {i + 1}: lottery.cluster {single:5.1f} s (driver wall), "
              f"local dvc exp run {alone:5.1f} s: overhead {single - alone:+5.1f} s"
              + (f"; the task's own time {phases[1]} s ({phases[2]})" if phases else ""))
    overhead = statistics.median(single - alone for single, alone, _ in passes)
    print(f"per-experiment overhead of the cluster path: median {overhead:+.1f} s over {len(passes)} pass(es)")


if __name__ == "__main__":
    main()
