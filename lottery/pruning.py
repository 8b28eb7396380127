"""Pruning: each function takes the current Mask and returns a new one (never in place).

Count rule (decided once, tested): a group of weights at rate p that keeps n of them loses
round_half_up(p * n), computed exactly in decimal, so 20% of 235,200 is 47,040.
A group is one layer (layer-wise) or all layers of the pooled kinds together (global).
What is kept is decided by a score (the criterion); the lowest scores are pruned, ties
broken by position (stable sort), so the result is deterministic.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import torch

from .masks import Mask


def n_to_prune(rate: float, remaining: int) -> int:
    return int((Decimal(repr(rate)) * remaining).to_integral_value(ROUND_HALF_UP))


def layer_rates(names: list[str], output: str, rate: float, output_rate: float) -> dict[str, float]:
    """The paper's LeNet rates: hidden layers at `rate`, the output layer at its own rate."""
    return {k: (output_rate if k == output else rate) for k in names}


def kind_rates(kinds: dict[str, str], rates: dict[str, float]) -> dict[str, float]:
    """Per-layer rates from per-kind rates ({'conv': .1, 'fc': .2, 'output': .1})."""
    return {k: rates[kind] for k, kind in kinds.items()}


def oneshot_rate(rate: float, rounds: int) -> float:
    """The single-step rate that leaves what `rounds` iterative steps at `rate` would leave."""
    return 1.0 - (1.0 - rate) ** rounds


def scores(criterion: str, trained: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
           gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Higher is kept: |w| (magnitude), |w| - |w_start| (magnitude_increase), or uniform noise (random)."""
    if criterion == "magnitude":
        return {k: w.abs().double() for k, w in trained.items()}
    if criterion == "magnitude_increase":
        return {k: (w.abs() - start[k].abs()).double() for k, w in trained.items()}
    if criterion == "random":
        return {k: torch.rand(w.shape, generator=gen, dtype=torch.float64) for k, w in trained.items()}
    raise ValueError(f"prune.criterion: {criterion!r} is not allowed (magnitude, magnitude_increase, random)")


def _drop_lowest(score: torch.Tensor, keep: torch.Tensor, rate: float, what: str) -> torch.Tensor:
    """Flat bool mask: `keep` minus the lowest-scoring n_to_prune(rate, kept) of the kept entries."""
    remaining = int(keep.sum())
    k_new = n_to_prune(rate, remaining)
    if k_new >= remaining and remaining > 0:
        raise ValueError(f"pruning {what} at rate {rate} would remove all its {remaining} weights")
    order = torch.argsort(score.masked_fill(~keep, float("-inf")), stable=True)
    out = torch.ones_like(keep)
    out[order[: keep.numel() - remaining + k_new]] = False  # every pruned weight first, then the lowest kept
    return out


@torch.no_grad()
def prune(score: dict[str, torch.Tensor], mask: Mask, rates: dict[str, float],
          pooled: list[str] = (), pooled_rate: float = 0.0) -> Mask:
    """Layer-wise at `rates` for every layer not in `pooled`; one global ranking at `pooled_rate` over `pooled`."""
    new = {k: m.clone() for k, m in mask.items()}
    for k, m in mask.items():
        if k in pooled:
            continue
        for i in range(m.shape[0]):
            new[k][i] = _drop_lowest(score[k][i].flatten(), m[i].flatten(), rates[k], f"layer '{k}'").view_as(m[i])
    if pooled:
        for i in range(next(iter(mask.values())).shape[0]):
            flat = _drop_lowest(torch.cat([score[k][i].flatten() for k in pooled]),
                                torch.cat([mask[k][i].flatten() for k in pooled]), pooled_rate,
                                f"layers {', '.join(pooled)} together")
            start = 0
            for k in pooled:
                n = mask[k][i].numel()
                new[k][i] = flat[start : start + n].view_as(mask[k][i])
                start += n
    return new


def magnitude(weights: dict[str, torch.Tensor], mask: Mask, rates: dict[str, float]) -> Mask:
    """Layer-wise magnitude pruning: per network and layer, drop the smallest |w| still kept."""
    return prune(scores("magnitude", weights, weights), mask, rates)


@torch.no_grad()
def random_like(mask: Mask, gen: torch.Generator) -> Mask:
    """A random mask with exactly the same number of kept weights per layer and network."""
    new = {}
    for k, m in mask.items():
        out = torch.zeros_like(m)
        for i in range(m.shape[0]):
            n_keep = int(m[i].sum())
            flat = torch.zeros(m[i].numel(), dtype=torch.bool)
            flat[torch.randperm(m[i].numel(), generator=gen)[:n_keep]] = True
            out[i] = flat.view_as(m[i])
        new[k] = out
    return new
