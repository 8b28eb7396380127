"""Sparse against dense steps, side by side in one run (`train.sparse`, lottery.sparse).

15 stacked LeNet-300-100s (the paper's figure: 5 trials x ticket + 2 controls), batch 60, Adam, the step
engine's step (`lottery.step.Step`, data order and batch gather included; no evaluation). Masks drawn at
random per network at a round's layer-wise densities (fc layers at `density`, the output layer at the
paper's half rate: 0.9^k when the fc layers are at 0.8^k). Each case times `--steps` steps after a
warm-up; the cases run in turn, `--passes` passes over all of them, and each reports its median pass (this
machine's speed drifts within minutes, interleaving exposes every case to the same drift). Prints
milliseconds per step and dense / sparse ratios (train.sparse off / on, and auto); never asserts speed.
With `--dst rigl` (or set) every network is that control: its masks move every `--update-every` steps (the
update, `lottery.dst.Updater`, counted in the step's time; the sparse layers rebuilt by `Step.set_mask`).

    python benchmarks/sparse_step.py [--steps 100] [--passes 3] [--nets 15] [--densities 1 0.135 0.036]
    python benchmarks/sparse_step.py --dst rigl --densities 0.036 --steps 200   (updates every 100 steps)
    OMP_NUM_THREADS=1 python benchmarks/sparse_step.py --cpu-time ...   (a loaded machine: CPU seconds)
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

from lottery import dst, models  # noqa: E402
from lottery.config import DSTConfig, TrainConfig  # noqa: E402
from lottery.data import TensorData  # noqa: E402
from lottery.step import Step  # noqa: E402

BATCH = 60
clock = time.perf_counter  # (--cpu-time: time.process_time, this process's CPU seconds: steadier on a loaded machine)


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


def make_step(nets: int, density: float, sparse: str, data: TensorData, method: str | None = None,
              update_every: int = 100) -> Step:
    model = models.build("lenet-300-100", list(range(nets)))
    orders = data.orders(list(range(nets)), BATCH, False, (0, 1))
    cfg = TrainConfig(batch_size=BATCH, sparse=sparse)

    def losses(idx):
        xb, yb = orders.batch(idx)
        return F.cross_entropy(model(xb).transpose(1, 2), yb, reduction="none").mean(1)

    model.train()
    step = Step(model, masks_at(model, density), cfg, losses, log=lambda *_: None)
    step.next, step.it, step.update_s = orders.next_batch, 0, 0.0
    # (masks keep moving: T_end far away, the drop fraction near dst.fraction)
    step.update = dst.Updater(DSTConfig(update_every=update_every), [method] * nets, list(range(nets)), 10**9) \
        if method else None
    return step


def run(step: Step, n: int) -> float:
    t = clock()
    for _ in range(n):
        step(step.next())
        step.it += 1
        if step.update:
            u = clock()
            step.update(step.it, step)
            step.update_s += clock() - u
    return (clock() - t) / n


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
                t = clock()
                for _ in range(calls):
                    call()
                ms.append((clock() - t) / calls * 1e3)
            print(f"{d_in}x{d_out:<4} {density:>8.3f} {ms[0]:>9.2f} {ms[1]:>10.2f} {ms[0] / ms[1]:>12.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--nets", type=int, default=15)
    ap.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.135, 0.036])
    ap.add_argument("--layers", action="store_true", help="per layer instead: the crossover of train.sparse: auto")
    ap.add_argument("--dst", choices=dst.METHODS, help="every network a rigl or set control (moving masks)")
    ap.add_argument("--update-every", type=int, default=100, help="with --dst: steps between two mask updates")
    ap.add_argument("--cpu-time", action="store_true", help="time this process's CPU seconds, not wall-clock seconds "
                    "(a machine shared with other work; with OMP_NUM_THREADS=1 the two agree on a quiet one)")
    args = ap.parse_args()
    if args.cpu_time:
        global clock
        clock = time.process_time
    if args.layers:
        return layer_rows(args.nets, args.densities)
    gen = torch.Generator().manual_seed(0)
    data = TensorData(x_train=torch.randn(6000, 784, generator=gen), y_train=torch.randint(0, 10, (6000,), generator=gen),
                      x_val=torch.zeros(1, 784), y_val=torch.zeros(1, dtype=torch.long),
                      x_test=torch.zeros(1, 784), y_test=torch.zeros(1, dtype=torch.long))
    cases = {(d, s): make_step(args.nets, d, s, data, args.dst, args.update_every)
             for d in args.densities for s in ("off", "on", "auto")}
    times: dict = {k: [] for k in cases}
    for step in cases.values():
        run(step, 20)  # warm-up: optimizer state, Adam's inf trick, allocator
    for _ in range(args.passes):
        for k, step in cases.items():
            times[k].append(run(step, args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.nets} stacked LeNet-300-100, batch {BATCH}, "
          f"Adam; median of {args.passes} passes of {args.steps} steps{' (CPU time)' if args.cpu_time else ''}"
          + (f"; every network {args.dst}, masks updated every {args.update_every} steps" if args.dst else ""))
    print(f"{'fc density':>10} {'dense ms':>9} {'sparse ms':>10} {'auto ms':>8} {'dense/sparse':>13} {'dense/auto':>11}"
          f" {'net-it/s dense':>15} {'sparse':>7} {'auto':>7}")
    for d in args.densities:
        off, on, auto = (statistics.median(times[(d, s)]) * 1e3 for s in ("off", "on", "auto"))
        rates = (f"{args.nets * 1e3 / ms:>7.0f}" for ms in (off, on, auto))
        print(f"{d:>10.3f} {off:>9.2f} {on:>10.2f} {auto:>8.2f} {off / on:>12.2f}x {off / auto:>10.2f}x"
              f" {next(rates):>15} {next(rates)} {next(rates)}")
        if args.dst:
            spent = [cases[(d, s)].update_s / cases[(d, s)].it * 1e3 for s in ("off", "on", "auto")]
            print(f"{'':>10} of which mask updates, ms per step: dense {spent[0]:.2f}, sparse {spent[1]:.2f}, "
                  f"auto {spent[2]:.2f}")


if __name__ == "__main__":
    main()
