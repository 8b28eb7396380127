"""BatchNorm along the line: instability with interpolated running statistics vs recomputed ones.

Trains, with the library (`training.train`, one stack), three copies of a small BatchNorm ResNet
(`models.ResNet`, the resnet-20 class with widths 8/16/32 and one block per stage, so that it runs in
minutes on a loaded CPU) on Fashion-MNIST, prepared as the `prepare` stage does, from the same θ0:
copy a (data order 1), copy b (order 2) and copy c (order 1 again). Optionally a second stack does the
same from θk (copies trained k iterations from θ0 with order 0, then continued with `start=k`). Then
`instability.curve` evaluates the lines a-b and a-c in both modes (`bn="interpolate"` and
`bn="recompute"`) and prints both curves, each instability (test and training subset) and the
endpoint errors. a-c would give exactly 0 in both modes if a and c were identical; it prints max |a - c|
first: on CPU the copies at stack positions 0 and 2 drift apart from a one-ulp difference within 10
iterations (lr 0.1 amplifies it), so a-c measures that drift (see the results file).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/instability_bn.py [--iterations 400] [--rewind 0]

Asserts nothing; prints its results (benchmarks/results/2026-11-27-instability-bn.txt).
"""
from __future__ import annotations

import argparse
import time

import torch

from lottery import config, data, instability, masks, models, training

PLAN = [(8, 1), (16, 1), (32, 1)]
SHAPE = (1, 28, 28)


def build(n: int, seeds: list[int] | None = None) -> models.ResNet:
    net = models.ResNet(n, PLAN, shape=SHAPE)
    for i, s in enumerate(seeds or [0] * n):
        net.init_(i, s)
    return net


def fashion_mnist(root: str, test: int) -> data.TensorData:
    """Fashion-MNIST normalised as a round reads it, the first `test` test images only."""
    cfg = config.from_dict({"data": {"dataset": "fashion-mnist", "root": root}, "prune": {"rounds": 0}})
    raw = data.prepare(cfg)
    out = {}
    for split in ("train", "val", "test"):
        out[f"x_{split}"] = (raw[f"x_{split}"].float() - raw["mean"]) / raw["std"]
        out[f"y_{split}"] = raw[f"y_{split}"]
    out["x_test"], out["y_test"] = out["x_test"][:test], out["y_test"][:test]
    return data.TensorData(**out)


def train_copies(state0: dict, d: data.TensorData, cfg: config.TrainConfig, orders: list[int], start: int) -> dict:
    """Copies of state0 (one network) trained from iteration `start` with the given data orders."""
    net = build(len(orders))
    net.load_state_dict({k: v.expand(len(orders), *v.shape[1:]).clone() for k, v in state0.items()})
    mask = masks.ones(net, models.prunable(net))
    res = training.train(net, mask, d, cfg, orders, label=f"from {start}", log=lambda s: None, start=start)
    print(f"  trained {orders} from iteration {start}: test accuracy at the end {[round(100 * a, 2) for a in res.final_test_accuracy]}")
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def report(label: str, state: dict, d: data.TensorData, subset: torch.Tensor, points: int, batch: int) -> None:
    a, b, c = ({k: v[[i]] for k, v in state.items()} for i in range(3))
    diff = max(float((a[k].double() - c[k].double()).abs().max()) for k in a)
    print(f"{label}: max |a - c| over all parameters and buffers (same data order) = {diff:.3g}")
    for pair, (x, y) in (("a-b (different orders)", (a, b)), ("a-c (same order)", (a, c))):
        for bn in config.BN_MODES:
            t0 = time.perf_counter()
            r = instability.curve(lambda n: build(n), x, y, d, subset, points=points, bn=bn, batch_size=batch,
                                  bn_batches=instability.BN_BATCHES, stack=4, examples=500)
            te, tr = r["test_error"][0], r["train_error"][0]
            print(f"{label} {pair} bn={bn}: test instability {r['test_instability'][0]:.2f} pp, train "
                  f"{r['train_instability'][0]:.2f} pp; endpoints test {te[0]:.2f}% / {te[-1]:.2f}%, train "
                  f"{tr[0]:.2f}% / {tr[-1]:.2f}% ({time.perf_counter() - t0:.0f}s)")
            print("    test error along the line: " + " ".join(f"{e:.1f}" for e in te))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--rewind", type=int, default=0, help="also from θk, k = this many iterations (0 = skip)")
    ap.add_argument("--points", type=int, default=11)
    ap.add_argument("--test", type=int, default=5000, help="test examples evaluated along the line")
    ap.add_argument("--subset", type=int, default=2560, help="training subset (bn=recompute's batches come from it)")
    args = ap.parse_args()
    torch.manual_seed(0)
    d = fashion_mnist(args.root, args.test)
    cfg = config.TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=128, iterations=args.iterations,
                             eval_every=args.iterations, log_every=0)
    subset = instability.train_subset(len(d.train), args.subset, seed=0)
    print(f"ResNet {PLAN} with BatchNorm on Fashion-MNIST; SGD lr 0.1 momentum 0.9, batch 128, {args.iterations} "
          f"iterations; {args.points} points; {args.test} test examples, {args.subset} training examples; "
          f"recompute: {instability.BN_BATCHES} batches of 128; torch threads {torch.get_num_threads()}")
    theta0 = {k: v.clone() for k, v in build(1, [7]).state_dict().items()}
    t0 = time.perf_counter()
    report("θ0", train_copies(theta0, d, cfg, [1, 2, 1], 0), d, subset, args.points, cfg.batch_size)
    if args.rewind:
        head = config.TrainConfig(**{**cfg.__dict__, "iterations": args.rewind})
        thetak = {k: v[[0]] for k, v in train_copies(theta0, d, head, [0], 0).items()}
        report(f"θ{args.rewind}", train_copies(thetak, d, cfg, [1, 2, 1], args.rewind), d, subset, args.points,
               cfg.batch_size)
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
