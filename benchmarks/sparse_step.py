"""Sparse against dense steps, side by side in one run (`train.sparse`, lottery.sparse).

15 stacked LeNet-300-100s (the paper's figure: 5 trials x ticket + 2 controls), batch 60, Adam, the step
engine's step (`lottery.step.Step`, data order and batch gather included; no evaluation). Masks drawn at
random per network at a round's layer-wise densities (fc layers at `density`, the output layer at the
paper's half rate: 0.9^k when the fc layers are at 0.8^k). Each case times `--steps` steps after a
warm-up; the cases run in turn, `--passes` passes over all of them, and each reports its median pass (this
machine's speed drifts within minutes, interleaving exposes every case to the same drift). Prints
milliseconds per step and dense / sparse ratios (train.sparse off / on, and auto); never asserts speed.

    python benchmarks/sparse_step.py [--steps 100] [--passes 3] [--nets 15] [--densities 1 0.135 0.036]
    python benchmarks/sparse_step.py --layers --densities 0.5 0.3 0.2 0.1 0.036   (one layer at a time)
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lottery import models  # noqa: E402
from lottery.config import TrainConfig  # noqa: E402
from lottery.data import TensorData  # noqa: E402
from lottery.step import Step  # noqa: E402

BATCH = 60


def masks_at(model, density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random layer-wise masks: fc layers at `density`, the output layer at the paper's half rate."""
    gen = torch.Generator().manual_seed(seed)
    names = models.prunable(model)
    rounds = math.log(density) / math.log(0.8) if density < 1 else 0.0
    out = {}
    for name in names:
        d = 0.9 ** rounds if name == names[-1] else density
        w = model.get_parameter(name)
        out[name] = torch.rand(w.shape, generator=gen) < d
    return out


def make_step(nets: int, density: float, sparse: str, data: TensorData) -> Step:
    model = models.build("lenet-300-100", list(range(nets)))
    orders = data.orders(list(range(nets)), BATCH, False, (0, 1))
    cfg = TrainConfig(batch_size=BATCH, sparse=sparse)

    def losses(idx):
        xb, yb = orders.batch(idx)
        return F.cross_entropy(model(xb).transpose(1, 2), yb, reduction="none").mean(1)

    model.train()
    step = Step(model, masks_at(model, density), cfg, losses, log=lambda *_: None)
    step.next = orders.next_batch
    return step


def run(step: Step, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step(step.next())
    return (time.perf_counter() - t) / n


def layer_rows(nets: int, densities: list[float], calls: int = 30) -> None:
    """One layer's forward and backward, dense against sparse, per LeNet shape and density (the crossover of
    `train.sparse: auto`, lottery.sparse.AUTO_DENSITY and AUTO_MIN_WEIGHTS)."""
    from lottery.sparse import SparseLinear

    print(f"{'layer':>8} {'density':>8} {'dense ms':>9} {'sparse ms':>10} {'dense/sparse':>13}")
    for d_in, d_out in [(784, 300), (300, 100), (100, 10)]:
        for density in densities:
            layer = models.StackedLinear(nets, d_in, d_out)
            keep = torch.rand(layer.weight.shape) < density
            with torch.no_grad():
                layer.weight.normal_().mul_(keep)
            x = torch.randn(nets, BATCH, d_in, requires_grad=d_in != 784)  # (no input gradient for the first)
            sparse = SparseLinear(layer, keep)
            ms = []
            for f in (layer, sparse):
                def call(f=f):
                    f(x).sum().backward()
                for _ in range(3):
                    call()
                t = time.perf_counter()
                for _ in range(calls):
                    call()
                ms.append((time.perf_counter() - t) / calls * 1e3)
            print(f"{d_in}x{d_out:<4} {density:>8.3f} {ms[0]:>9.2f} {ms[1]:>10.2f} {ms[0] / ms[1]:>12.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--nets", type=int, default=15)
    ap.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.135, 0.036])
    ap.add_argument("--layers", action="store_true", help="per layer instead: the crossover of train.sparse: auto")
    args = ap.parse_args()
    if args.layers:
        return layer_rows(args.nets, args.densities)
    gen = torch.Generator().manual_seed(0)
    data = TensorData(x_train=torch.randn(6000, 784, generator=gen), y_train=torch.randint(0, 10, (6000,), generator=gen),
                      x_val=torch.zeros(1, 784), y_val=torch.zeros(1, dtype=torch.long),
                      x_test=torch.zeros(1, 784), y_test=torch.zeros(1, dtype=torch.long))
    cases = {(d, s): make_step(args.nets, d, s, data) for d in args.densities for s in ("off", "on", "auto")}
    times: dict = {k: [] for k in cases}
    for step in cases.values():
        run(step, 20)  # warm-up: optimizer state, Adam's inf trick, allocator
    for _ in range(args.passes):
        for k, step in cases.items():
            times[k].append(run(step, args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.nets} stacked LeNet-300-100, batch {BATCH}, "
          f"Adam; median of {args.passes} passes of {args.steps} steps")
    print(f"{'fc density':>10} {'dense ms':>9} {'sparse ms':>10} {'auto ms':>8} {'dense/sparse':>13} {'dense/auto':>11}")
    for d in args.densities:
        off, on, auto = (statistics.median(times[(d, s)]) * 1e3 for s in ("off", "on", "auto"))
        print(f"{d:>10.3f} {off:>9.2f} {on:>10.2f} {auto:>8.2f} {off / on:>12.2f}x {off / auto:>10.2f}x")


if __name__ == "__main__":
    main()
