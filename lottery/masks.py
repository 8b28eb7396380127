"""A Mask maps each prunable weight's name to a bool tensor (True = kept), stacked over networks."""
from __future__ import annotations

import torch
from torch import nn

Mask = dict[str, torch.Tensor]


def ones(model: nn.Module, names: list[str]) -> Mask:
    params = dict(model.named_parameters())
    return {k: torch.ones_like(params[k], dtype=torch.bool) for k in names}


@torch.no_grad()
def apply(model: nn.Module, mask: Mask) -> None:
    """Zero every pruned weight in place."""
    params = dict(model.named_parameters())
    for k, m in mask.items():
        params[k].mul_(m)


def kept(mask: Mask) -> dict[str, torch.Tensor]:
    """Weights kept per layer and network: name -> (N,) int64."""
    return {k: m.flatten(1).sum(1) for k, m in mask.items()}


def percent_remaining(mask: Mask) -> torch.Tensor:
    """Percent of prunable weights kept, per network: (N,) float64."""
    total = sum(m[0].numel() for m in mask.values())
    return sum(kept(mask).values()).double() * 100.0 / total


def is_subset(new: Mask, old: Mask) -> bool:
    """Every weight kept in `new` was kept in `old` (masks only shrink)."""
    return all(not (new[k] & ~old[k]).any() for k in new)


def distance(a: Mask, b: Mask, among: Mask) -> torch.Tensor:
    """Normalised Hamming distance per network: the fraction of the positions `among` keeps (the weights a pruning
    step chooses from; every position for a dense mask) where masks `a` and `b` differ, (N,) float64."""
    differ = sum((a[k] != b[k]).flatten(1).sum(1) for k in a)
    return differ.double() / sum(kept(among).values()).double()
