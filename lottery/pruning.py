"""Pruning: each function takes the current Mask and returns a new one (never in place).

Count rule (decided once, tested): a layer at rate p that keeps n weights loses
round_half_up(p * n) of them, computed exactly in decimal, so 20% of 235,200 is 47,040.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import torch

from .masks import Mask


def n_to_prune(rate: float, remaining: int) -> int:
    return int((Decimal(repr(rate)) * remaining).to_integral_value(ROUND_HALF_UP))


def layer_rates(names: list[str], output: str, rate: float, output_rate: float) -> dict[str, float]:
    """The paper's layer-wise rates: hidden layers at `rate`, the output layer at its own rate."""
    return {k: (output_rate if k == output else rate) for k in names}


@torch.no_grad()
def magnitude(weights: dict[str, torch.Tensor], mask: Mask, rates: dict[str, float]) -> Mask:
    """Per network and layer, prune the smallest-|w| `rate` of the weights still kept.

    Ties are broken by position (stable sort), so the result is deterministic.
    """
    new = {}
    for k, m in mask.items():
        out = m.clone()
        for i in range(m.shape[0]):
            keep = m[i].flatten()
            remaining = int(keep.sum())
            k_new = n_to_prune(rates[k], remaining)
            if k_new >= remaining and remaining > 0:
                raise ValueError(f"pruning layer '{k}' at rate {rates[k]} would remove all its {remaining} weights")
            scores = weights[k][i].abs().flatten().double().masked_fill(~keep, -1.0)
            order = torch.argsort(scores, stable=True)
            drop = order[: m[i].numel() - remaining + k_new]  # every pruned weight first, then the smallest kept
            flat = torch.ones_like(keep)
            flat[drop] = False
            out[i] = flat.view_as(m[i])
        new[k] = out
    return new


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
