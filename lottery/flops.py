"""Compute accounting: what each network of a round costs to train, and what a ticket cost to reach its sparsity.

Counting (RigL's convention: Evci et al. 2020, "Rigging the Lottery", and DESIGN.md section 7):
  forward multiply-adds per example of one network = the sum over its linear and convolutional layers of
      (weights kept by its mask) x (output positions: 1 for a fully-connected layer on one vector, H'·W' for a
      2-d convolution's output map, the positions of the extra dimensions for a Linear on a sequence);
      a layer without a mask (not prunable, `prune.ignore`) counts every weight. Biases, BatchNorm, pooling,
      activations, residual additions, the loss, evaluation and the scoring of pruning at init (SNIP, GraSP,
      SynFlow: a few batches) are not counted: they do not scale with the kept weights.
  training FLOPs of one iteration = 3 x forward multiply-adds x batch size: the forward, and a backward of
      about twice the forward (the gradient of the inputs and that of the kept weights).
  A multiply-add counts as one operation here. RigL's tables count a multiply and an add as two FLOPs, so
  their absolute numbers are twice ours for the same network; ratios between variants are the same.

The output positions are measured, not written per model: forward hooks on every linear and convolutional
layer of one network, run on one example of the data's shape (`positions`).

What a network cost to reach (`cumulative`): its own training, plus every training its mask and its start
weights needed, each counted once. A round records, besides each network's own `iterations` and `train_flops`, where its two inputs come
from (`sources`): `mask`, the round whose trained ticket the ticket mask was pruned from (`init` when it scores
the rewind point: `prune.at: init`; none for the dense round r0), and `start`, the weights the networks are
rewound to (`init`: θ0, or θk with `rewind.to: iteration`; the previous round's trained ticket with
`rewind.to: lr | finetune`), and which of the two each variant needs:
  ticket (and `copy`, `invert`): the mask and the start: the ticket of round k under iterative pruning costs
      the trainings of r0 .. rk of its chain (each round's ticket training is the search of the next);
      one-shot: r0 and rk; `prune.at: init`: rk alone (no search training);
  reinit: the mask only (a fresh init): the search up to r(k-1), plus its own training;
  random: the start only (its per-layer counts are the plan's, which need no training), plus its own;
      with `prune.strategy: global` the counts of the layers ranked together come from the search: the mask too.
  rigl, set: neither (a fresh init at the plan's counts), only their own training, whose `train_flops` for rigl
      adds, on each of its mask updates, the dense weight gradient: (dense - kept) forward multiply-adds x batch
      (RigL's (3·f_S·ΔT + 2·f_S + f_D) / (ΔT + 1)); with `prune.strategy: global`, the mask too.
  `init` is θk's training when rounds rewind to iteration k (k iterations of the dense network, counted once
  in any total that needs θk; zero for θ0).
"""
from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn

from . import generic
from .models import StackedConv2d, StackedLinear

BACKWARD = 3  # forward + backward ≈ 3 x the forward (RigL)
LINEAR, CONV = (StackedLinear, nn.Linear), (StackedConv2d, nn.modules.conv._ConvNd)


@torch.no_grad()
def positions(model: nn.Module, example_shape: tuple[int, ...]) -> dict[str, int]:
    """Weight name -> how often each of its weights is used per example (its output positions), for every linear
    and convolutional layer of `model` (a stack of lottery.models or a GenericStack), measured by forward hooks on
    one example of `example_shape` (zeros) in eval mode; the model is left as it was."""
    one = isinstance(model, generic.GenericStack)  # run as network 0 alone; a built-in stack runs every network
    stacked = dict(model.named_parameters())
    found: dict[str, int] = {}

    def hook(name: str):
        def count(module: nn.Module, inp, out: torch.Tensor) -> None:
            w = stacked[name]  # (N, out, ...) in both layouts
            if isinstance(module, nn.modules.conv._ConvTransposeNd):  # each weight at each *input* position
                per = inp[0].numel() // module.in_channels
            else:  # StackedLinear (N, 1, out), StackedConv2d (1, N*C, H', W'), nn.Linear (1, ..., out), nn.Conv* (1, C, ...)
                per = out.numel() // (w.shape[1] * (1 if one else w.shape[0]))
            found[name] = found.get(name, 0) + per  # a layer called twice counts twice
        return count

    layers = {f"{m}.weight" if m else "weight": mod for m, mod in model.named_modules()
              if isinstance(mod, LINEAR + CONV) and getattr(mod, "weight", None) is not None}
    handles = [mod.register_forward_hook(hook(name)) for name, mod in layers.items()]
    p = next(model.parameters())
    x = torch.zeros(1, *example_shape, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        if one:  # network 0 on views of the stacked tensors (eval mode: no buffer changes)
            model._one({k: v[0] for k, v in stacked.items()}, {k: v[0] for k, v in model.named_buffers()}, x)
        else:
            model(x[None])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


def _networks(model: nn.Module) -> int:
    return next(model.parameters()).shape[0]


def forward_macs(model: nn.Module, mask: dict[str, torch.Tensor], where: dict[str, int]) -> list[int]:
    """Forward multiply-adds per example of each network of the stack: per linear and convolutional layer, the
    weights `mask` keeps (every weight of a layer it does not name: {} counts the dense network) times the layer's
    output positions `where` (`positions(model, example_shape)`)."""
    n, params = _networks(model), dict(model.named_parameters())
    total = [0] * n
    for name, per in where.items():
        w = params[name]
        kept = mask[name].flatten(1).sum(1).tolist() if name in mask else [w[0].numel()] * n
        total = [t + int(k) * per for t, k in zip(total, kept)]
    return total


def train_flops(macs: int, batch_size: int, iterations: int) -> int:
    """Training FLOPs of `iterations` iterations of one network: 3 x forward multiply-adds x batch size each."""
    return BACKWARD * macs * batch_size * iterations


def sources(k: int, prev: str, at: str, rewind_to: str, pooled: bool, variants: list[str]) -> dict:
    """Where round k's ticket mask and start weights come from, and which of them each variant needs (see the
    module's docstring): {"mask": round | "init" | None, "start": round | "init", "needs": {variant: [...]}}.
    `prev`: the round it prunes ("init" for r0); `pooled`: layers ranked together (`prune.strategy: global`)."""
    mask = None if k == 0 else (prev if at == "trained" else "init")
    start = prev if rewind_to in ("lr", "finetune") else "init"
    def need(v: str) -> list[str]:
        if v in ("rigl", "set"):  # a fresh init at the ticket's counts: the plan's, or the search's when pooled
            return ["mask"] if pooled else []
        return ["mask"] if v == "reinit" else ["mask", "start"] if pooled or v != "random" else ["start"]

    needs = {v: need(v) for v in variants}
    return {"mask": mask, "start": start, "needs": needs}


def cumulative(df: pd.DataFrame, costs: dict[str, dict]) -> pd.DataFrame:
    """Per row of the tidy table (round, variant, trial, iterations, train_flops): `cumulative_iterations` and
    `cumulative_flops`, the trainings it took to reach that network (itself included), each counted once.

    `costs`: round -> its metrics.json `cost` record ({"sources": ..., "init": {"iterations", "train_flops"}}).
    A round without a record (written before compute accounting) gives NaN."""
    own = {(r.round, r.variant, r.trial): (r.iterations, r.train_flops) for r in df.itertuples()}

    def trainings(name: str, variant: str, trial: int) -> set:
        src = costs[name]["sources"]
        out = {(name, variant, trial)}
        for what in src["needs"][variant]:
            origin = src[what]
            if origin == "init":
                out.add(("init", "", trial))
            elif origin is not None:
                out |= trainings(origin, "ticket", trial)
        return out

    iters, flops = [], []
    for r in df.itertuples():
        try:
            init = costs[r.round]["init"]  # θk's training (zero for θ0)
            parts = [(init["iterations"], init["train_flops"]) if d[0] == "init" else own[d]
                     for d in trainings(r.round, r.variant, r.trial)]
            total = (sum(int(p[0]) for p in parts), sum(int(p[1]) for p in parts))
        except (KeyError, TypeError, ValueError):  # a round without a record; NaN from an older metrics.json
            total = (math.nan, math.nan)
        iters.append(total[0])
        flops.append(total[1])
    return pd.DataFrame({"cumulative_iterations": iters, "cumulative_flops": flops}, index=df.index)
