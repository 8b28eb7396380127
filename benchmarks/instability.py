"""The cost of instability analysis: one round with and without `instability.enabled`, the same stack otherwise.

Runs `rounds.run_round` (start-up excluded: data loaded once per run, as a stage does) for round r1 of the
default experiment (LeNet-300-100, 2 trials, ticket + reinit + random; + 2 copies with instability), the
two cases in alternation over `--passes` passes; prints each case's median, the ratio (the median of the
per-pass ratios, each pass against its own run without), the share of the round the interpolation
(30 points, test set + 5,000 training examples) takes, and every pass. Asserts nothing.

    python benchmarks/instability.py [--data data/prepared.pt] [--iterations 3000] [--passes 2]

Without a prepared file it uses random data of Fashion-MNIST's shape (55,000 training, 10,000 test images).
"""
from __future__ import annotations

import argparse
import re
import statistics
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lottery import artifacts, config, rounds
from lottery.data import prepared_params, save_prepared
from lottery.runtime import configure_runtime


def _data(path: Path | None, tmp: Path) -> Path:
    if path and path.exists():
        return path
    g = torch.Generator().manual_seed(0)
    d = {"x_train": torch.randn(55000, 1, 28, 28, generator=g), "y_train": torch.randint(0, 10, (55000,), generator=g),
         "x_val": torch.randn(5000, 1, 28, 28, generator=g), "y_val": torch.randint(0, 10, (5000,), generator=g),
         "x_test": torch.randn(10000, 1, 28, 28, generator=g), "y_test": torch.randint(0, 10, (10000,), generator=g),
         "mean": torch.zeros(1), "std": torch.ones(1)}
    save_prepared(d, tmp / "prepared.pt", prepared_params(config.from_dict({"prune": {"rounds": 15, "chain": config.chain(15)}})))
    return tmp / "prepared.pt"


def one_round(cfg: config.Config, runs: Path, data: Path) -> tuple[float, float]:
    """(seconds of round r1, seconds of its interpolation) from an r0 that is θ0 itself (as trained weights)."""
    shutil.rmtree(runs, ignore_errors=True)
    rounds.init(cfg, runs / "init")
    for kind in ("model", "mask"):
        tensors, meta = artifacts.load(runs / "init" / f"{kind}.pt", "weights" if kind == "model" else "mask")
        artifacts.save(runs / "r0" / f"{kind}.pt", tensors, {**meta, "round": "r0", "params": config.artifact_params(cfg, "r0")})
    lines: list[str] = []
    t0 = time.perf_counter()
    rounds.run_round(cfg, "r1", "r0", runs, data, log=lines.append)
    total = time.perf_counter() - t0
    curve = [float(m.group(1)) for line in lines if (m := re.search(r"points in ([\d.]+)s", line))]
    return total, curve[0] if curve else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/prepared.pt"))
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    configure_runtime("cpu", "float32")
    with tempfile.TemporaryDirectory() as tmp:
        data = _data(args.data, Path(tmp))
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for i in range(args.passes):
            for on in (False, True):
                cfg = config.from_dict({"train": {"iterations": args.iterations, "log_every": 0},
                                        "prune": {"rounds": 15, "chain": config.chain(15)}, "instability": {"enabled": on}})
                runs[on].append(one_round(cfg, Path(tmp) / "runs", data))
                print(f"  pass {i + 1}/{args.passes} instability {'on ' if on else 'off'}: {runs[on][-1][0]:.1f}s"
                      + (f" (line {runs[on][-1][1]:.1f}s)" if on else ""), flush=True)
    off, on = [r[0] for r in runs[False]], [r[0] for r in runs[True]]
    line = [r[1] for r in runs[True]]
    print(f"instability cost, round r1 of the default experiment ({args.iterations} iterations, 2 trials, "
          f"{'data ' + str(args.data) if args.data.exists() else 'random data'}; median of {args.passes} interleaved passes):")
    print(f"  without: {statistics.median(off):7.1f}s  (6 networks)")
    print(f"  with:    {statistics.median(on):7.1f}s  (8 networks + the 30-point line: {statistics.median(line):.1f}s, "
          f"{statistics.median(100 * c / t for c, t in zip(line, on)):.1f}% of the round)")
    print(f"  ratio:   {statistics.median(t / o for t, o in zip(on, off)):.2f}x  (target <= 1.4x; line < 10% of the round)")
    print("  per pass (without / with / line, s): "
          + ", ".join(f"{o:.1f} / {t:.1f} / {c:.1f}" for o, t, c in zip(off, on, line)))


if __name__ == "__main__":
    main()
