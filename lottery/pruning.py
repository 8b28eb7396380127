"""Pruning: the plan of a round, applying it to a Mask (never in place) and checking the result.

Count rule (decided once, tested): a group of weights at rate p that keeps n of them loses
round_half_up(p * n), computed exactly in decimal, so 20% of 235,200 is 47,040.
A group is one layer (layer-wise) or all layers of the pooled kinds together (global).
What is kept is decided by a score (the criterion); the lowest scores are pruned, ties
broken by position (stable sort), so the result is deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import torch

from .config import LotteryError, PruneConfig
from .generic import pattern_rates
from .masks import Mask, is_subset, kept


class PruningError(LotteryError, ValueError):
    """A pruning step cannot meet its plan (a layer would lose every weight) or broke an invariant."""


@dataclass(frozen=True)
class Plan:
    """One round's pruning step: layer-wise rates, and the layers ranked together at `pooled_rate`."""

    rates: dict[str, float]  # every layer pruned alone (layers in `pooled` are skipped)
    pooled: list[str] = field(default_factory=list)
    pooled_rate: float = 0.0

    def groups(self) -> list[tuple[list[str], float]]:
        """(layers, rate) of each group that loses its count together: each layer alone, the pooled layers as one."""
        alone = [([k], r) for k, r in self.rates.items() if k not in self.pooled]
        return alone + ([(list(self.pooled), self.pooled_rate)] if self.pooled else [])


def n_to_prune(rate: float, remaining: int) -> int:
    return int((Decimal(repr(rate)) * remaining).to_integral_value(ROUND_HALF_UP))


def plan(cfg: PruneConfig, kinds: dict[str, str], k: int) -> Plan:
    """Round k's step from the previous round's mask (kinds: layer -> conv, fc or output; round 0 prunes nothing).

    Per-round rates: conv at `conv_rate` (null = `rate`), fc at `rate`, the output layer at
    `output_rate` (null = half of `rate`); the global strategy ranks the layers of
    `global_kinds` together at `rate`; `layer_rates` (glob pattern -> rate) overrides a layer's
    kind rate (`lottery.generic.pattern_rates`). One-shot round k prunes the dense round straight to
    what k iterative steps leave: rate 1 - (1 - r)^k.
    """
    steps = k if cfg.schedule == "oneshot" else min(k, 1)

    def step(r: float) -> float:
        return r if steps == 1 else 1.0 - (1.0 - r) ** steps

    per_kind = {"conv": cfg.rate if cfg.conv_rate is None else cfg.conv_rate, "fc": cfg.rate,
                "output": cfg.rate / 2 if cfg.output_rate is None else cfg.output_rate}
    pooled = [n for n, kind in kinds.items() if kind in cfg.global_kinds] if cfg.strategy == "global" else []
    rates = pattern_rates(kinds, per_kind, cfg.layer_rates)
    return Plan({n: step(rates[n]) for n in kinds if n not in pooled}, pooled, step(cfg.rate))


def planned_kept(cfg: PruneConfig, kinds: dict[str, str], dense: dict[str, int], k: int) -> list[tuple[list[str], int]]:
    """(layers, weights kept) of each group after round k, from the dense counts per layer.

    Iterative: the count rule applied round by round; one-shot: one step from the dense round.
    Raises, naming the group, where a round would remove every weight the group has left.
    """
    pooled = plan(cfg, kinds, 1).pooled
    kept_ = [(layers, sum(dense[n] for n in layers)) for layers, _ in plan(cfg, kinds, 1).groups()]
    for j in (range(1, k + 1) if cfg.schedule == "iterative" else [k]):
        step = []
        for (layers, n), (_, rate) in zip(kept_, plan(cfg, kinds, j).groups()):
            if n_to_prune(rate, n) >= n > 0:
                what = f"layers {', '.join(layers)} together" if layers == pooled else f"layer '{layers[0]}'"
                raise PruningError(f"pruning {what} at rate {rate} would remove all its {n} weights at round {j}")
            step.append((layers, n - n_to_prune(rate, n)))
        kept_ = step
    return kept_


def scores(criterion: str, trained: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
           seeds: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Higher is kept: |w| (magnitude), |w| - |w_start| (magnitude_increase), or uniform noise (random:
    network i's layers drawn in order by its own generator, seeded by seeds[i])."""
    if criterion == "magnitude":
        return {k: w.abs().double() for k, w in trained.items()}
    if criterion == "magnitude_increase":
        return {k: (w.abs() - start[k].abs()).double() for k, w in trained.items()}
    if criterion == "random":
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return {k: torch.stack([torch.rand(w.shape[1:], generator=g, dtype=torch.float64) for g in gens])
                for k, w in trained.items()}
    raise PruningError(f"prune.criterion: {criterion!r} is not allowed (magnitude, magnitude_increase, random)")


def _drop_lowest(score: torch.Tensor, keep: torch.Tensor, rate: float, what: str) -> torch.Tensor:
    """Flat bool mask: `keep` minus the lowest-scoring n_to_prune(rate, kept) of the kept entries."""
    remaining = int(keep.sum())
    k_new = n_to_prune(rate, remaining)
    if k_new >= remaining and remaining > 0:
        raise PruningError(f"pruning {what} at rate {rate} would remove all its {remaining} weights")
    order = torch.argsort(score.masked_fill(~keep, float("-inf")), stable=True)
    out = torch.ones_like(keep)
    out[order[: keep.numel() - remaining + k_new]] = False  # every pruned weight first, then the lowest kept
    return out


@torch.no_grad()
def prune(score: dict[str, torch.Tensor], mask: Mask, plan: Plan) -> Mask:
    """The new mask: per network, each group of the plan loses its lowest-scoring kept weights."""
    new = {k: m.clone() for k, m in mask.items()}
    for layers, rate in plan.groups():
        what = f"layer '{layers[0]}'" if layers != plan.pooled else f"layers {', '.join(layers)} together"
        for i in range(mask[layers[0]].shape[0]):
            flat = _drop_lowest(torch.cat([score[k][i].flatten() for k in layers]),
                                torch.cat([mask[k][i].flatten() for k in layers]), rate, what)
            start = 0
            for k in layers:
                n = mask[k][i].numel()
                new[k][i] = flat[start : start + n].view_as(mask[k][i])
                start += n
    return new


def check(plan: Plan, new: Mask, old: Mask) -> None:
    """Invariants of a pruning step: masks only shrink, and each group lost exactly its planned count."""
    if not is_subset(new, old):
        raise PruningError("pruning revived a weight: the new mask is not a subset of the previous one")
    before, after = kept(old), kept(new)
    for layers, rate in plan.groups():
        b, a = sum(before[k] for k in layers), sum(after[k] for k in layers)
        for i in range(len(b)):
            planned = int(b[i]) - n_to_prune(rate, int(b[i]))
            if int(a[i]) != planned:
                what = "global pruning" if layers == plan.pooled else f"layer '{layers[0]}'"
                raise PruningError(f"{what} kept {int(a[i])} weights, planned {planned}")


@torch.no_grad()
def random_like(mask: Mask, seeds: list[int]) -> Mask:
    """A random mask with exactly the same number of kept weights per layer and network: network i's
    layers drawn in order by its own generator, seeded by seeds[i] (so the draw does not depend on the stack)."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    new = {}
    for k, m in mask.items():
        out = torch.zeros_like(m)
        for i, gen in enumerate(gens):
            flat = torch.zeros(m[i].numel(), dtype=torch.bool)
            flat[torch.randperm(m[i].numel(), generator=gen)[:int(m[i].sum())]] = True
            out[i] = flat.view_as(m[i])
        new[k] = out
    return new
