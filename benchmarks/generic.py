"""Your own network through the generic path (lottery.generic) against the built-in stacked models.

  lenet builtin N   lottery.models.build("lenet-300-100", seeds): the hand-stacked W @ x^T layers
  lenet generic N   the same architecture as a plain nn.Sequential, stacked by lottery.generic
                    (a plain MLP: its hand-stacked fast path)
  lenet vmap N      the same through vmap(functional_call) (the path of any other module)
  resnet18 N        torchvision resnet18(num_classes=10) through the generic path, CIFAR-shaped random data
                    (vmap; "loop": vectorize=False, one network after the other)

Every case is the round stage's train step: lottery.training.train (Adam 1.2e-3, masks, batch 60
for LeNet, 64 for ResNet-18), evaluation only at the end on 100 examples. Each model is built
and warmed up (one step) once; then the cases of a table are timed in turn, `--passes` (LeNet,
default 5) or `--resnet-passes` (default 3) times, since this machine's speed drifts and
interleaving exposes every case to the same drift: LeNet `--iterations` (default 1,000) a time,
ResNet-18 `--resnet-iterations` (default 3) a time, extrapolated to 1,000. A table gives each
case's median over the passes and its ratio to the baseline row (built-in LeNet, ResNet-18 N=1)
as the median of the per-pass ratios (each pass against its own baseline run), then every pass.
Prints seconds per 1,000 iterations and ratios, never asserts speed.

    python benchmarks/generic.py [--quick | --smoke] [--iterations N] [--passes P]
           [--resnet-iterations K] [--resnet-passes Q] [--no-resnet] [--threads T]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
import sys

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lottery

from lottery import generic, masks, models  # noqa: E402
from lottery.config import TrainConfig  # noqa: E402
from lottery.data import TensorData  # noqa: E402
from lottery.training import train  # noqa: E402


def lenet(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, num_classes))


def resnet18(num_classes: int = 10) -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


def random_data(shape: tuple[int, ...], n_train: int, n_eval: int = 100) -> TensorData:
    gen = torch.Generator().manual_seed(0)
    data = {}
    for split, n in [("train", n_train), ("val", n_eval), ("test", n_eval)]:
        data[f"x_{split}"] = torch.randn(n, *shape, generator=gen)
        data[f"y_{split}"] = torch.randint(0, 10, (n,), generator=gen)
    return TensorData(**data)


def timer(model: nn.Module, names: list[str], data: TensorData, batch: int):
    """A function timing lottery.training.train on `model` for n steps, in seconds per 1,000 iterations
    (after one warm-up step, here)."""
    seeds = list(range(models.n_networks(model)))
    mask = masks.ones(model, names)
    quiet = lambda *a: None  # noqa: E731
    train(model, mask, data, TrainConfig(iterations=1, eval_every=10**9, log_every=0, batch_size=batch), seeds, log=quiet)

    def seconds_per_1k(iterations: int) -> float:
        cfg = TrainConfig(iterations=iterations, eval_every=10**9, log_every=0, batch_size=batch)
        t = time.perf_counter()
        train(model, mask, data, cfg, order_seeds=seeds, log=quiet)
        return (time.perf_counter() - t) * 1000 / iterations
    return seconds_per_1k


def interleaved(timers: dict, iterations: int, passes: int, label) -> dict[object, list[float]]:
    """Each case's seconds per 1,000 iterations in every pass, the cases timed in turn within a pass."""
    times: dict[object, list[float]] = {c: [] for c in timers}
    for i in range(passes):
        for c, t in timers.items():
            times[c].append(t(iterations))
            print(f"  pass {i + 1}/{passes} {label(c)}: {times[c][-1]:.2f} s / 1k it", flush=True)
    return times


def median_ratio(times: list[float], base: list[float]) -> float:
    """The median over passes of each pass's time against the same pass's baseline time."""
    return statistics.median(t / b for t, b in zip(times, base))


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
    ap.add_argument("--passes", type=int, default=5, help="interleaved passes over the LeNet cases")
    ap.add_argument("--resnet-passes", type=int, default=3, help="interleaved passes over the ResNet-18 cases")
    ap.add_argument("--resnet-iterations", type=int, default=3)
    ap.add_argument("--no-resnet", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    ap.add_argument("--smoke", action="store_true", help="2 iterations a case, ResNet-18 on batches of 4, N = 1, 2 (tests)")
    args = ap.parse_args()
    if args.quick:
        args.iterations, args.passes, args.resnet_passes, args.resnet_iterations = 200, 1, 1, 2
    if args.smoke:
        args.iterations, args.passes, args.resnet_passes, args.resnet_iterations = 2, 1, 1, 1
    nets, batch = ((1, 2), 4) if args.smoke else ((1, 6), 64)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; seconds per 1,000 iterations")

    data = random_data((1, 28, 28), 10_000, 8 if args.smoke else 100)
    cases = [(kind, n) for n in (1, 6) for kind in ("builtin", "generic", "vmap")]
    timers = {c: timer(*lenet_case(*c), data, 60) for c in cases}
    times = interleaved(timers, args.iterations, args.passes, lambda c: f"lenet {c[0]:>7} N={c[1]}")
    print(f"\nLeNet-300-100, batch 60, {args.iterations} iterations x {args.passes} interleaved passes per case "
          "(target: generic within 1.5x of built-in)")
    print("| case | N | s / 1k it (median) | / builtin (median of paired ratios) | per pass |\n|---|---|---|---|---|")
    for kind, n in cases:
        t, base = times[kind, n], times["builtin", n]
        ratio = f"{median_ratio(t, base):.2f}x" if kind != "builtin" else ""
        per_pass = " ".join(f"{x:.2f}" for x in t)
        print(f"| lenet-300-100 {kind} | {n} | {statistics.median(t):.2f} | {ratio} | {per_pass} |")

    if args.no_resnet:
        return
    data = random_data((3, 32, 32), 640, 8)  # evaluation is not the step: 8 images
    timers = {}
    for n, vectorize in [(nets[0], True), (nets[1], True), (nets[1], False)]:
        model = generic.build(resnet18, list(range(n)), 10, (3, 32, 32), vectorize=vectorize)
        generic.check(model, data.train.x[:batch], data.train.y, 10)
        timers[n, vectorize] = timer(model, generic.prunable(model), data, batch)
    times = interleaved(timers, args.resnet_iterations, args.resnet_passes,
                        lambda c: f"resnet18 N={c[0]}{'' if c[1] else ' loop'}")
    print(f"\ntorchvision resnet18(num_classes=10), CIFAR-shaped random data, batch {batch}: {args.resnet_iterations} "
          f"iterations x {args.resnet_passes} interleaved passes per case, EXTRAPOLATED to 1,000 iterations")
    print(f"| torchvision resnet18, batch {batch} | N | s / 1k it (median) | / N=1 (median of paired ratios; per network) "
          "| per pass |\n|---|---|---|---|---|")
    base = times[nets[0], True]
    for (n, vectorize), t in times.items():
        r = median_ratio(t, base)
        per_pass = " ".join(f"{x:.0f}" for x in t)
        print(f"| resnet18 generic{'' if vectorize else ' loop'} | {n} | {statistics.median(t):.0f} | {r:.2f}x ({r / n:.2f}x) "
              f"| {per_pass} |", flush=True)

if __name__ == "__main__":
    main()
