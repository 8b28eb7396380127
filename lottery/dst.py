"""Dynamic sparse training: the `rigl` and `set` controls, networks whose mask moves during training at a fixed count.

A `rigl` or `set` network of round k starts from a fresh init (seeded like `reinit`) with random positions at the
ticket's per-layer kept counts (`dst.distribution: match`), or the same total count spread over the layers by
`erk` or `uniform` (`layer_counts`), and trains for the same iterations as the ticket, in the same stack. Every
`dst.update_every` iterations up to `dst.stop_at` of training (`Updater`), in every layer and network:
  rigl (Evci et al. 2020, Algorithm 1): drop the n = floor(f·kept) kept weights of smallest magnitude, f = α/2 ·
      (1 + cos(π·t / T_end)) (α = dst.fraction, T_end = stop_at · iterations); grow the n positions of largest
      *dense* gradient magnitude among those not kept after the drop (a weight just dropped may come back);
  set (Mocanu et al. 2018): drop the n = floor(α·kept) kept weights of smallest magnitude (ζ = α, no decay);
      grow n positions drawn uniformly among those not kept after the drop (a generator seeded by the network's
      mask seed and the iteration).
Grown weights start at exactly zero with their optimizer state reset (`lottery.step.Step.set_mask`); the counts
per layer are conserved exactly. Ties: the lower flat index is dropped first and grown first.
The dense gradient is the one the step has just computed (`Step.grad`): pruned weights are zeros of a dense
tensor, so autograd gives their gradient too (x^T·g_out), and Adam's +inf trick changes the state, not the
gradient; a layer that runs sparse (`train.sparse`) computes it from its backward's factors at an update only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import DSTConfig
from .masks import Mask
from .pruning import random_like

METHODS = ("rigl", "set")


def erk_counts(shapes: dict[str, tuple[int, ...]], total: int) -> dict[str, int]:
    """Kept weights per layer summing to `total`: Erdős–Rényi-Kernel densities, proportional to
    sum(shape) / prod(shape) ((n_out + n_in + k_h + k_w) / (n_out·n_in·k_h·k_w)), as in RigL's code
    (sparse_utils.get_sparsities): the layer of the largest density is made dense while the scale would push it
    above 1, then the rest is shared; counts rounded by largest remainder."""
    size = {k: math.prod(s) for k, s in shapes.items()}
    dense: set[str] = set()
    while True:
        rest = [k for k in shapes if k not in dense]
        raw = {k: sum(shapes[k]) / size[k] for k in rest}
        eps = (total - sum(size[k] for k in dense)) / sum(raw[k] * size[k] for k in rest)
        top = max(raw.values())
        if eps * top <= 1:
            break
        dense |= {k for k in rest if raw[k] == top}
    return _rounded({**{k: float(size[k]) for k in dense}, **{k: eps * raw[k] * size[k] for k in rest}}, total, size)


def uniform_counts(shapes: dict[str, tuple[int, ...]], total: int) -> dict[str, int]:
    """Kept weights per layer summing to `total` at one density in every layer (the output layer included)."""
    size = {k: math.prod(s) for k, s in shapes.items()}
    return _rounded({k: total * n / sum(size.values()) for k, n in size.items()}, total, size)


def _rounded(ideal: dict[str, float], total: int, size: dict[str, int]) -> dict[str, int]:
    """Integer counts of the real `ideal` ones, summing to `total`: floors, then one more for the largest remainders."""
    out = {k: min(int(v), size[k]) for k, v in ideal.items()}
    for k in sorted(ideal, key=lambda k: out[k] - ideal[k]):  # largest remainder first (stable: layer order)
        if sum(out.values()) >= total:
            break
        if out[k] < size[k]:
            out[k] += 1
    return out


def layer_counts(ticket: Mask, distribution: str) -> dict[str, list[int]]:
    """Kept weights per layer and trial of a dst network: the ticket's (match), or its total redistributed."""
    if distribution == "match":
        return {k: m.flatten(1).sum(1).tolist() for k, m in ticket.items()}
    shapes = {k: tuple(m.shape[1:]) for k, m in ticket.items()}
    rule = erk_counts if distribution == "erk" else uniform_counts
    totals = sum(m.flatten(1).sum(1) for m in ticket.values()).tolist()
    per_trial = [rule(shapes, int(n)) for n in totals]
    return {k: [c[k] for c in per_trial] for k in ticket}


def initial_mask(ticket: Mask, distribution: str, seeds: list[int]) -> Mask:
    """Random positions at `layer_counts` per layer, trial t drawn by a generator seeded by seeds[t]."""
    counts = layer_counts(ticket, distribution)
    template = {k: torch.stack([torch.arange(m[0].numel()).view(m.shape[1:]) < n for n in counts[k]])
                for k, m in ticket.items()}
    return random_like(template, seeds)


def drop_fraction(method: str, it: int, cfg: DSTConfig, iterations: int) -> float:
    """The fraction of kept weights an update at iteration `it` replaces: α·cosine decay (rigl), α (set)."""
    if method == "set":
        return cfg.fraction
    return cfg.fraction / 2 * (1 + math.cos(math.pi * it / (cfg.stop_at * iterations)))


def due(it: int, cfg: DSTConfig, iterations: int) -> bool:
    """Whether the masks are updated after the optimizer step of iteration `it` (1-based)."""
    return it % cfg.update_every == 0 and it <= cfg.stop_at * iterations


def update_layer(w: torch.Tensor, keep: torch.Tensor, fraction: float, grow_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One network's layer: (new mask, grown positions). Drops the floor(fraction·kept) kept weights of smallest
    |w| and grows as many positions of highest `grow_score` among those not kept after the drop."""
    flat = keep.flatten()
    if bool(flat.all()):  # a dense layer (erk can make one): nothing to move
        return keep.clone(), torch.zeros_like(keep)
    n = int(fraction * int(flat.sum()))
    drop = smallest(w.detach().abs().flatten().masked_fill(~flat, float("inf")), n)
    after = flat.clone()
    after[drop] = False
    grow = smallest(-grow_score.flatten().masked_fill(after, float("-inf")), n)
    grown = torch.zeros_like(flat)
    grown[grow] = True
    return (after | grown).view_as(keep), grown.view_as(keep)


def smallest(score: torch.Tensor, n: int) -> torch.Tensor:
    """The positions of the n smallest entries of a flat tensor, ties taken by lower position: the set of a stable
    sort's first n, in linear time (a k-th value, then the entries below it and the first of those equal to it)."""
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=score.device)
    t = score.kthvalue(n).values
    below = torch.nonzero(score < t).flatten()
    return torch.cat([below, torch.nonzero(score == t).flatten()[: n - len(below)]])


@dataclass
class Updater:
    """The drop/grow hook of `lottery.training.train`: `updater(it, step)` after the optimizer step of iteration
    `it` updates the masks of the rows whose method is rigl or set (None: the ticket and other controls, untouched).
    `seeds[i]`: row i's mask seed (SET's draws); `iterations`: the length of training."""

    cfg: DSTConfig
    methods: list[str | None]
    seeds: list[int | None]
    iterations: int

    def rows(self, rows: slice) -> Updater | None:
        """The hook of a group of the stack's rows (None when none of them is a dst network)."""
        sub = Updater(self.cfg, self.methods[rows], self.seeds[rows], self.iterations)
        return sub if any(sub.methods) else None

    def key(self) -> tuple:
        """What a resume point of a training with this hook must match."""
        return (repr(self.cfg), self.methods, self.seeds)

    def __call__(self, it: int, step) -> None:
        if not due(it, self.cfg, self.iterations):
            return
        rows = [i for i, m in enumerate(self.methods) if m]
        step.sync()  # (layers that run sparse: their current values into the dense weights read here)
        grads = {k: step.grad(k) for k in step.mask} if "rigl" in self.methods else {}
        new: Mask = {k: torch.empty_like(m[rows]) for k, m in step.mask.items()}
        grown: Mask = {k: torch.empty_like(m) for k, m in new.items()}
        for j, i in enumerate(rows):
            method = self.methods[i]
            f = drop_fraction(method, it, self.cfg, self.iterations)
            gen = torch.Generator().manual_seed(self.seeds[i] * 2**24 + it) if method == "set" else None
            for k, m in step.mask.items():
                score = grads[k][i].abs() if method == "rigl" else torch.rand(m[i].shape, generator=gen).to(m.device)
                new[k][j], grown[k][j] = update_layer(step.params[k][i], m[i], f, score)
        step.set_mask(rows, new, grown)
