"""A round's training at train.world_size 1 and 2 on this CPU, side by side in one run (`make bench`).

The round stage's path (`lottery.distributed.launch` -> `lottery.training.train`): a stack of networks, the
default round's evaluation cadence, synthetic data in memory of the dataset's shape. World size 2 runs two
processes (gloo), each with half the cores and half of every batch; its wall time includes starting the
processes and joining the group. The cases run in turn, `--passes` times, each reporting its best pass.
Prints ratios, never asserts speed.

    python benchmarks/data_parallel.py [--scale S] [--passes P]
"""
from __future__ import annotations

import argparse
import time

import torch

from lottery import distributed, masks, models
from lottery.config import TrainConfig
from lottery.data import TensorData
from lottery.training import train

CASES = {  # name -> (model, example shape, networks, batch, iterations at --scale 1)
    "lenet-300-100 x6": ("lenet-300-100", (1, 28, 28), 6, 60, 600),  # the default round's stack: memory-bound
    "conv-2 x1": ("conv-2", (3, 32, 32), 1, 60, 20),  # compute-bound: about 0.5 s an iteration here
}


def job(model_name: str, shape: tuple, n: int, batch: int, iterations: int, world: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12_000, *shape, generator=g), torch.randint(0, 10, (12_000,), generator=g)
    data = TensorData(x[:10_000], y[:10_000], x[10_000:11_000], y[10_000:11_000], x[11_000:], y[11_000:])
    model = models.build(model_name, list(range(n)))
    cfg = TrainConfig(iterations=iterations, eval_every=100, batch_size=batch, world_size=world, log_every=0)
    train(model, masks.ones(model, models.prunable(model)), data, cfg, order_seeds=list(range(n)), label="bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every case's iterations")
    ap.add_argument("--passes", type=int, default=2)
    args = ap.parse_args()
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.passes):
        for name, (model, shape, n, batch, iterations) in CASES.items():
            iterations = max(1, round(iterations * args.scale))
            for world in (1, 2):
                t = TrainConfig(world_size=world, batch_size=batch)
                t0 = time.perf_counter()
                distributed.launch(t, torch.device("cpu"), job, model, shape, n, batch, iterations, world)
                dt = time.perf_counter() - t0
                best[name, world] = min(best.get((name, world), dt), dt)
    print(f"\n## Data-parallel round on this CPU (best of {args.passes} passes)\n")
    print("| case | iterations | world_size 1 | world_size 2 | 2 vs 1 |\n|---|---|---|---|---|")
    for name, (*_, iterations) in CASES.items():
        one, two = best[name, 1], best[name, 2]
        print(f"| {name} | {max(1, round(iterations * args.scale))} | {one:.1f} s | {two:.1f} s | {one / two:.2f}x |")


if __name__ == "__main__":
    main()
