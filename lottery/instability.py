"""Instability analysis (Frankle, Dziugaite, Roy & Carbin 2020, linear mode connectivity).

Two copies of a network trained from the same weights (θ0, or θk when rewinding) and the same
mask with different data orders are compared along the straight line between them:
`line` builds the networks (1 - α)·W_a + α·W_b (every parameter and every floating buffer, so
BatchNorm running statistics are interpolated with the weights; a pruned weight is 0 at both
ends and stays 0), `curve` evaluates the error (%) of every point on the test set and on a
fixed training subset, and `instability(errors)` = max error along the line - mean of the two
endpoint errors, in percentage points. A network is stable when its instability is <= STABLE.

Every point of every pair is one network of a stack (pair-major: network t·P + p is pair t at
α_p), evaluated `stack` networks at a time with one shared input (`training.evaluate`), so
memory is bounded by `stack` networks, whatever the number of pairs and points. An MLP's
first layer, most of its work, runs at the two ends only and the points lerp its outputs
(`MLPLine`): the 30 points of 2 LeNet-300-100 pairs then cost about 5.7x fewer multiply-adds.

BatchNorm (`bn`): "interpolate" (default) takes the interpolated running statistics as they
are; "recompute" resets them at every point and re-estimates them in train mode, without
gradients, as the cumulative average (torch's momentum=None) over `bn_batches` batches of
`batch_size` training examples: the first bn_batches·batch_size examples of the fixed training
subset, so every point, pair and round uses the same batches.
"""
from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable

import torch
from torch import nn

from . import models
from .config import BN_MODES, ConfigError
from .data import TensorData
from .masks import Mask
from .training import evaluate

POINTS = 30  # points on the line, both ends included (the paper's)
STABLE = 2.0  # instability (percentage points) at or below which a network is stable (the paper's)
# Training examples evaluated along the line: the error of a point on 5,000 examples has a standard
# error of at most 0.71 pp (0.42 pp at 10% error), well under the 2 pp threshold, for half the cost
# of a 10,000-example test set; and it is the size of the validation split.
TRAIN_SUBSET = 5000
BN_BATCHES = 20  # batches that re-estimate BatchNorm statistics at each point (bn="recompute")
# Networks evaluated at once: one pair's line; memory grows with the stack (timings of stacks of 7, 30
# and 60: benchmarks/results/2026-11-27-instability.md).
STACK = 30


def _check_pair(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor]) -> int:
    """The number of pairs T, after checking that both states hold the same keys and shapes."""
    if state_a.keys() != state_b.keys():
        diff = sorted(state_a.keys() ^ state_b.keys())
        raise ValueError(f"instability: the two states differ in their keys: {diff[0]} is in only one")
    for k, a in state_a.items():
        if a.shape != state_b[k].shape:
            raise ValueError(f"instability: {k} has shape {tuple(a.shape)} in one state, {tuple(state_b[k].shape)} in the other")
    return len(next(iter(state_a.values())))


def _mix(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor], pairs: torch.Tensor,
         alphas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Network j = lerp(a[pairs[j]], b[pairs[j]], alphas[j]); integer buffers are a's.

    torch.lerp gives a exactly at α = 0, b exactly at α = 1, and a exactly everywhere when a == b
    (it adds α·(b - a), or subtracts (1 - α)·(b - a) from b); (1 - α)·a + α·b would not.
    """
    out = {}
    for k, a in state_a.items():
        if not a.is_floating_point():
            out[k] = a[pairs.to(a.device)]
            continue
        w = alphas.to(a.device, a.dtype).view(-1, *[1] * (a.ndim - 1))
        out[k] = torch.lerp(a[pairs.to(a.device)], state_b[k][pairs.to(a.device)], w)
    return out


def line(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor], alphas,
         mask: Mask | None = None) -> dict[str, torch.Tensor]:
    """The stacked state of the networks on the line between T pairs: T·P networks, pair-major.

    `state_a` and `state_b` are stacked states of T networks each (pair t = (a[t], b[t])), P = len(alphas).
    With `mask` (T networks), both ends must hold zeros where it prunes, so every point does too.
    """
    t = _check_pair(state_a, state_b)
    for k, m in (mask or {}).items():
        for side, state in (("a", state_a), ("b", state_b)):
            if (state[k][~m.to(state[k].device)] != 0).any():
                raise ValueError(f"instability: {k} of state {side} has non-zero pruned weights")
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    p = len(alphas)
    return _mix(state_a, state_b, torch.arange(t).repeat_interleave(p), alphas.repeat(t))


def instability(errors) -> torch.Tensor:
    """max error along the line - mean of the two endpoint errors, over the last dimension (points)."""
    e = torch.as_tensor(errors, dtype=torch.float64)
    return e.max(-1).values - (e[..., 0] + e[..., -1]) / 2


def train_subset(n_train: int, size: int = TRAIN_SUBSET, seed: int = 0) -> torch.Tensor:
    """`size` training-example indices drawn by `seed` alone: the same subset in every round."""
    if not 0 < size <= n_train:
        raise ConfigError(f"instability.train_subset: {size} is not allowed (must be 1 to the {n_train} training examples)")
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:size]


def percent_error(acc: torch.Tensor, n: int) -> torch.Tensor:
    """Accuracies over n examples (from `evaluate`) -> error in percent, from the exact count."""
    wrong = n - (acc.double().cpu() * n).round()
    return wrong * 100.0 / n


@torch.no_grad()
def recompute_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them over `batches` (inputs (B, ...)):
    train-mode forwards, cumulative average (momentum 1/(k+1) at batch k, torch's momentum=None)."""
    # the built-in stacked BatchNorm, and torch's own in your network's stack (lottery.generic)
    bns = [m for m in model.modules() if isinstance(m, (models.StackedBatchNorm2d, nn.modules.batchnorm._BatchNorm))]
    if not bns:
        return
    was_training, momenta = model.training, [m.momentum for m in bns]
    model.train()  # (a model with dropout would drop here too; none in the registry has BatchNorm and dropout)
    for m in bns:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    try:
        for k, x in enumerate(batches):
            for m in bns:
                m.momentum = 1.0 / (k + 1)
            model(x[None])
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)


class MLPLine(nn.Module):
    """The points of a chunk of an MLP's line, its first layer evaluated at the two ends only.

    The first layer is linear in its weights, W(α)x + b(α) = lerp(W_a x + b_a, W_b x + b_b, α): the
    points share the first-layer outputs of their pairs' ends (`ends`: the a's, then the b's) and
    each point runs only the layers after it (LeNet-300-100: the first layer is 88% of the
    multiply-adds). Exact at α = 0 and 1 and where a == b (torch.lerp); elsewhere equal to
    evaluating the interpolated network (`nets`, which holds the chunk's state) up to float rounding.

    The points' first-layer outputs (30 networks x 1,000 examples x 300: 36 MB, over glibc's largest
    heap block, so a fresh one would be mmapped and page-faulted in for every batch) go to one buffer
    kept across batches, written run by run of points of one pair (broadcast, no gathered copies).
    """

    def __init__(self, nets: models.MLP, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                 pairs: torch.Tensor, alphas: torch.Tensor):
        super().__init__()
        device = state_a["layers.0.weight"].device
        used, counts = torch.unique_consecutive(pairs, return_counts=True)  # pairs: non-decreasing (pair-major)
        used = used.to(device)
        w = torch.cat([state_a["layers.0.weight"][used], state_b["layers.0.weight"][used]])
        self.ends = models.StackedLinear(len(w), w.shape[2], w.shape[1]).to(device)
        self.ends.load_state_dict({"weight": w, "bias": torch.cat([state_a["layers.0.bias"][used],
                                                                   state_b["layers.0.bias"][used]])})
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        self.runs = [(u, len(used) + u, slice(lo, hi)) for u, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
        self.nets, self.buf = nets, torch.empty(0)
        self.w = alphas.to(device, w.dtype).view(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the shared input (1, B, ...) of `evaluate`
        h = self.ends(x.flatten(2))  # (2 x pairs, B, out), a transposed view of (2 x pairs, out, B)
        n, b, d = len(self.w), h.shape[1], h.shape[2]
        if self.buf.shape != (n, b, d):
            self.buf = h.new_empty(n, d, b).transpose(1, 2)  # the layout the next layer reads without a copy
        for a, z, points in self.runs:
            torch.lerp(h[a], h[z], self.w[points], out=self.buf[points])
        return models._fc_forward(self.nets.layers[1:], self.buf.relu_())


def curve(model: str | Callable[[int], nn.Module], state_a: dict[str, torch.Tensor],
          state_b: dict[str, torch.Tensor], data: TensorData, subset: torch.Tensor,
          points: int = POINTS, bn: str = "interpolate", bn_batches: int = BN_BATCHES, batch_size: int = 128,
          stack: int = STACK, examples: int = 1000) -> dict:
    """Error (%) at `points` evenly spaced α in [0, 1] between T pairs, on the test set and on the
    training examples `subset` (see `train_subset`), and each pair's instability on both.

    `model` is a registry name (the stack is built with models.build) or a builder n -> stack of n.
    Returns alphas, test_error and train_error (T lists of `points`), test_instability and
    train_instability (T each), in percentage points. Memory: `stack` networks' states plus their
    activations on `examples` inputs at a time; the default suits LeNet-300-100 (30 networks: 32 MB of
    weights, 36 MB per activation), a conv network wants a few networks or fewer examples per stack.
    """
    if bn not in BN_MODES:
        raise ConfigError(f"instability.bn: {bn!r} is not allowed; use one of {', '.join(BN_MODES)}")
    if points < 2:
        raise ConfigError(f"instability.points: {points} is not allowed (at least the two endpoints)")
    t = _check_pair(state_a, state_b)
    alphas = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    splits = {"test": data.test, "train": data.train.subset(subset)}
    if bn == "recompute" and bn_batches * batch_size > len(subset):
        raise ConfigError(f"instability.bn_batches: {bn_batches} batches of {batch_size} is more than the "
                          f"{len(subset)} examples of the training subset")
    device = next(iter(state_a.values())).device
    errors = {s: torch.empty(t * points, dtype=torch.float64) for s in splits}
    nets = None
    for start in range(0, t * points, stack):
        idx = torch.arange(start, min(start + stack, t * points))
        pairs, at = idx // points, alphas[idx % points]
        if nets is None or models.n_networks(nets) != len(idx):
            built = models.build(model, [0] * len(idx)) if isinstance(model, str) else model(len(idx))
            nets = models.to_device(built, device)
        nets.load_state_dict(_mix(state_a, state_b, pairs, at))
        if bn == "recompute":
            recompute_bn(nets, (x for x, _ in islice(splits["train"].chunks(batch_size), bn_batches)))
        run = MLPLine(nets, state_a, state_b, pairs, at) if isinstance(nets, models.MLP) else nets
        for s, split in splits.items():
            errors[s][idx] = percent_error(evaluate(run, split, chunk=examples)[1], len(split))
    out: dict = {"alphas": alphas.tolist(), "bn": bn}
    for s, e in errors.items():
        e = e.view(t, points)
        out[f"{s}_error"] = e.tolist()
        out[f"{s}_instability"] = instability(e).tolist()
    return out


# ---------------------------------------------------------------- the rewind-point study across experiments

def study_rows(exps: list[str], round_name: str, read: Callable[[str, str], str]) -> list[dict]:
    """One row per experiment, sorted by k: its rewind iteration k, and for the dense round r0 and `round_name`
    the ticket's weights remaining, mean test instability (min, max over trials) and mean test accuracy.
    `read(exp, path)` returns the text of a file of that experiment (params.yaml, runs/<round>/metrics.json)."""
    import json

    import yaml

    from .revisions import RevisionError, parse

    rows = []
    for exp in exps:
        params = parse(read(exp, "params.yaml"), "params.yaml", exp, yaml.safe_load, dict)
        rewind = params.get("rewind") if isinstance(params.get("rewind"), dict) else {}
        row = {"exp": exp, "k": rewind.get("iteration", 0) if rewind.get("to") == "iteration" else 0}
        for label, name in (("dense", "r0"), ("ticket", round_name)):
            path = f"runs/{name}/metrics.json"
            m = parse(read(exp, path), path, exp, json.loads, dict)
            if "instability" not in m:
                raise ConfigError(f"{path} of '{exp}' has no instability: run it with -S instability.enabled=true")
            try:
                inst = [t["test_instability"] for t in m["instability"]["trials"]]
                nets = [n for n in m["networks"] if n["variant"] == "ticket"]
                row[label] = {"round": name, "weights_remaining": nets[0]["weights_remaining"],
                              "instability": sum(inst) / len(inst), "min": min(inst), "max": max(inst),
                              "test_accuracy": sum(n["test_accuracy"] for n in nets) / len(nets)}
            except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError) as e:
                raise RevisionError(f"{path} of '{exp}' is malformed ({type(e).__name__}: {e})") from None
        rows.append(row)
    return sorted(rows, key=lambda r: (r["k"], r["exp"]))


def study_figure(rows: list[dict], path) -> None:
    """The paper's two plots: instability vs k (dense and sparse ticket), and the ticket's test accuracy vs k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=110)
    for label in ("dense", "ticket"):
        s = [r[label] for r in rows]
        y = [v["instability"] for v in s]
        a.errorbar(ks, y, yerr=[[v - x["min"] for v, x in zip(y, s)], [x["max"] - v for v, x in zip(y, s)]],
                   marker="o", ms=3, capsize=2, label=f"{s[0]['round']} ({s[0]['weights_remaining']:.1f}% remaining)")
        b.plot(ks, [v["test_accuracy"] for v in s], marker="o", ms=3, label=f"{s[0]['round']}")
    a.axhline(STABLE, color="gray", ls="--", label="stable at or below")
    a.set_ylabel("instability (test error, pp)")
    b.set_ylabel("test accuracy of the ticket (%)")
    for ax in (a, b):
        ax.set_xscale("symlog", linthresh=max(1, min([k for k in ks if k] or [1])))
        ax.set_xlabel("rewind iteration k")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """python -m lottery.instability EXP... [--round rK] [--out FILE]: the rewind-point study (docs/instability.md)."""
    import argparse

    ap = argparse.ArgumentParser(description="Instability vs the rewind iteration k across experiments "
                                 "(each run with -S instability.enabled=true and its own rewind.iteration)")
    ap.add_argument("exps", nargs="+", help="DVC experiment names or git revisions")
    ap.add_argument("--round", default="r0", help="the sparse round to compare with the dense r0, e.g. r9")
    ap.add_argument("--out", default="instability_vs_k.png")
    args = ap.parse_args(argv)
    from .cli import output
    from .revisions import Revision, check_round

    out = output(args.out, "--out")
    check_round(args.round, args.exps[0])
    revs: dict[str, Revision] = {}

    def read(exp: str, path: str) -> str:
        if exp not in revs:
            revs[exp] = Revision(exp)
        return revs[exp].read(path, "did that experiment run it?").decode()

    rows = study_rows(args.exps, args.round, read)
    print(f"{'experiment':<24} {'k':>6} {'r0 instab.':>10} {args.round + ' instab.':>11} {args.round + ' acc %':>10}")
    for r in rows:
        print(f"{r['exp']:<24} {r['k']:>6} {r['dense']['instability']:>10.2f} {r['ticket']['instability']:>11.2f} "
              f"{r['ticket']['test_accuracy']:>10.2f}")
    study_figure(rows, out)
    print(f"-> {out}")


if __name__ == "__main__":
    from .cli import run

    run(main)
