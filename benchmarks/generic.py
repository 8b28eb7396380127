"""Your own network through the generic path (lottery.generic) against the built-in stacked models.

  lenet builtin N   lottery.models.build("lenet-300-100", seeds): the hand-stacked W @ x^T layers
  lenet generic N   the same architecture as a plain nn.Sequential, stacked by lottery.generic
                    (a plain MLP: its hand-stacked fast path)
  lenet vmap N      the same through vmap(functional_call) (the path of any other module)
  resnet18 N        torchvision resnet18(num_classes=10) through the generic path, CIFAR-shaped random data
                    (vmap; "loop": vectorize=False, one network after the other)

Every case is the round stage's train step: lottery.training.train (Adam 1.2e-3, masks, batch 60
for LeNet, 64 for ResNet-18), evaluation only at the end on 100 examples. LeNet runs `--iterations`
(default 1,000) per case; ResNet-18 a few iterations, extrapolated. The LeNet cases run in turn,
`--passes` times, each reporting its best pass (this machine's speed drifts; interleaving exposes
every case to the same drift). Prints seconds per 1,000 iterations and ratios, never asserts speed.

    python benchmarks/generic.py [--quick | --smoke] [--iterations N] [--passes P] [--resnet-iterations K] [--no-resnet]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
import sys

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lottery

from lottery import generic, masks, models  # noqa: E402
from lottery.config import TrainConfig  # noqa: E402
from lottery.training import train  # noqa: E402


def lenet(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, num_classes))


def resnet18(num_classes: int = 10) -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


def random_data(shape: tuple[int, ...], n_train: int, n_eval: int = 100) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    data = {}
    for split, n in [("train", n_train), ("val", n_eval), ("test", n_eval)]:
        data[f"x_{split}"] = torch.randn(n, *shape, generator=gen)
        data[f"y_{split}"] = torch.randint(0, 10, (n,), generator=gen)
    return data


def seconds_per_1k(model: nn.Module, names: list[str], data: dict, iterations: int, batch: int) -> float:
    """Wall time of lottery.training.train for `iterations` steps, per 1,000 iterations (one warm-up step first)."""
    seeds = list(range(models.n_networks(model)))
    mask = masks.ones(model, names)
    warm = TrainConfig(iterations=1, eval_every=10**9, log_every=0, batch_size=batch)
    train(model, mask, data, warm, order_seeds=seeds, log=lambda *a: None)
    cfg = TrainConfig(iterations=iterations, eval_every=10**9, log_every=0, batch_size=batch)
    t = time.perf_counter()
    train(model, mask, data, cfg, order_seeds=seeds, log=lambda *a: None)
    return (time.perf_counter() - t) * 1000 / iterations


def lenet_case(kind: str, n: int) -> tuple[nn.Module, list[str]]:
    seeds = list(range(n))
    if kind == "builtin":
        model = models.build("lenet-300-100", seeds)
        return model, models.prunable(model)
    model = generic.build(lenet, seeds, 10, (1, 28, 28))
    model.fast = kind == "generic"
    return model, generic.prunable(model)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="200 LeNet iterations, 1 pass, 2 ResNet-18 iterations")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--resnet-iterations", type=int, default=3)
    ap.add_argument("--no-resnet", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    ap.add_argument("--smoke", action="store_true", help="2 iterations a case, ResNet-18 on batches of 4, N = 1, 2 (tests)")
    args = ap.parse_args()
    if args.quick:
        args.iterations, args.passes, args.resnet_iterations = 200, 1, 2
    if args.smoke:
        args.iterations, args.passes, args.resnet_iterations = 2, 1, 1
    nets, batch = ((1, 2), 4) if args.smoke else ((1, 6), 64)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; seconds per 1,000 iterations")

    data = random_data((1, 28, 28), 10_000, 8 if args.smoke else 100)
    cases = [(kind, n) for n in (1, 6) for kind in ("builtin", "generic", "vmap")]
    best = {c: float("inf") for c in cases}
    for _ in range(args.passes):
        for c in cases:
            model, names = lenet_case(*c)
            t = seconds_per_1k(model, names, data, args.iterations, 60)
            best[c] = min(best[c], t)
            print(f"  lenet {c[0]:>7} N={c[1]}: {t:.2f} s / 1k it", flush=True)
    print("\n| case | N | s / 1k it | / builtin |\n|---|---|---|---|")
    for kind, n in cases:
        ratio = f"{best[kind, n] / best['builtin', n]:.2f}x" if kind != "builtin" else ""
        print(f"| lenet-300-100 {kind} | {n} | {best[kind, n]:.2f} | {ratio} |")

    if args.no_resnet:
        return
    data = random_data((3, 32, 32), 640, 8)  # evaluation is not the step: 8 images
    print(f"\n| torchvision resnet18, batch {batch} | N | s / 1k it | / N=1 (per network) |\n|---|---|---|---|")
    rows = {}
    for n, vectorize in [(nets[0], True), (nets[1], True), (nets[1], False)]:
        model = generic.build(resnet18, list(range(n)), 10, (3, 32, 32), vectorize=vectorize)
        generic.check(model, data["x_train"][:batch], data["y_train"], 10)
        t = rows[n, vectorize] = seconds_per_1k(model, generic.prunable(model), data, args.resnet_iterations, batch)
        base = rows[nets[0], True]
        print(f"| resnet18 generic{'' if vectorize else ' loop'} | {n} | {t:.0f} | {t / base:.2f}x ({t / base / n:.2f}x) |",
              flush=True)


if __name__ == "__main__":
    main()
