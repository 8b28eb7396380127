"""Early-bird search (You et al., ICLR 2020): find the next round's mask before the round's training ends.

A round's ticket training is also the search of the next round (which prunes the ticket's trained weights).
`Search` watches it: at every evaluation it computes, per trial, the mask the next round would take from the
ticket's current weights, and its normalised Hamming distance (`masks.distance`) to the previous evaluation's
mask. Once the largest of the last `window` distances is below `epsilon` (`drawn`), that trial's search ends: its
weights of that evaluation (the early-bird iteration) are kept, and the next round prunes them instead of the
final ones. The ticket itself trains on to train.iterations as usual (it is the round's reported ticket), so
the search costs no extra training: it is the first early-bird iterations of that training, and what it saves
is the rest of them (an early-bird search alone would stop there). A trial whose mask never stabilises keeps
its final weights.
"""
from __future__ import annotations

from typing import Callable

import torch

from .masks import Mask, distance


def drawn(distances: list[float], epsilon: float, window: int) -> bool:
    """The stopping rule: at least `window` distances, the largest of the last `window` below `epsilon`."""
    return len(distances) >= window and max(distances[-window:]) < epsilon


class Search:
    """The early-bird search of the ticket rows `rows` of a stack (one per trial), called at every evaluation.

    `next_mask(weights, trials)`: the mask the next round takes from `weights` (name -> (len(trials), ...), the
    prunable weights of those trials), the rounds' own pruning step. `among`: the round's ticket mask.
    After training, `finish(state)` gives trials that never stabilised their final weights; then `weights` holds,
    per trial, the weights the next round prunes, `iteration` the early-bird iteration (None: never stabilised)
    and `curve` the (iteration, distance) pairs."""

    def __init__(self, rows: slice, among: Mask, next_mask: Callable[[dict, list[int]], Mask], epsilon: float,
                 window: int):
        self.rows, self.among, self.next_mask, self.epsilon, self.window = rows, among, next_mask, epsilon, window
        self.trials = rows.stop - rows.start
        self.key = ("early_bird", epsilon, window)  # part of the resume digest of a training it watches
        self.prev: Mask = {}  # the last evaluation's mask, all trials
        self.curve: list[list[tuple[int, float]]] = [[] for _ in range(self.trials)]
        self.iteration: list[int | None] = [None] * self.trials
        self.weights: dict[str, torch.Tensor] = {k: torch.zeros(m.shape, dtype=torch.float32) for k, m in among.items()}

    @torch.no_grad()
    def __call__(self, it: int, state: dict[str, torch.Tensor]) -> None:
        active = [t for t in range(self.trials) if self.iteration[t] is None]  # stopped trials cost nothing more
        if not active:
            return
        idx = torch.tensor(active)
        w = {k: state[k][self.rows][idx.to(state[k].device)].detach().cpu() for k in self.among}
        mask = self.next_mask(w, active)
        if self.prev:
            d = distance({k: m[idx] for k, m in self.prev.items()}, mask, {k: m[idx] for k, m in self.among.items()})
            for j, t in enumerate(active):
                self.curve[t].append((it, float(d[j])))
                if drawn([x for _, x in self.curve[t]], self.epsilon, self.window):
                    self.iteration[t] = it
                    for k in w:
                        self.weights[k][t] = w[k][j]
        else:
            self.prev = {k: torch.zeros(m.shape, dtype=torch.bool) for k, m in self.among.items()}
        for k in mask:
            self.prev[k][idx] = mask[k]

    def finish(self, state: dict[str, torch.Tensor]) -> None:
        """Trials that never stabilised: the next round prunes their final weights."""
        for t in range(self.trials):
            if self.iteration[t] is None:
                for k in self.weights:
                    self.weights[k][t] = state[k][self.rows][t].detach().cpu()

    def state_dict(self) -> dict:
        return {"prev": self.prev, "curve": [[list(p) for p in c] for c in self.curve], "iteration": self.iteration,
                "weights": self.weights}

    def load_state_dict(self, st: dict) -> None:
        self.prev = {k: v.cpu() for k, v in st["prev"].items()}
        self.weights = {k: v.cpu() for k, v in st["weights"].items()}
        self.iteration = list(st["iteration"])
        self.curve = [[(int(i), float(x)) for i, x in c] for c in st["curve"]]
