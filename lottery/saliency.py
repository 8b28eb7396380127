"""Pruning at initialization: SNIP, GraSP and SynFlow scores of the rewind point, before any training.

Scores follow pruning.py's convention: name -> (N, ...) float64, *higher is kept*. Positions
already pruned in the mask score -inf (they are never kept again). Every score is computed on a
float64 copy of the stack with the mask applied, so the model itself is never touched; since the
networks of a stack are independent, one backward of the SUM of the per-network losses gives each
network its own gradient (and its own Hessian-vector product).

- SNIP (Lee et al. 2019): |g ⊙ w|, g the gradient of the loss averaged over the given batches.
- GraSP (Wang et al. 2020): the paper scores S = −w ⊙ (H g) and removes the HIGHEST S (its code keeps
  `score <= threshold`). We return w ⊙ (H g) = −S, so that, like every criterion here, the lowest
  scores go: the same weights GraSP removes. Signed, not |.|. H g by double backward. As in the
  authors' code (alecwangcq/GraSP, pruner/GraSP.py; also Synaptic-Flow's), the loss of both g and H g
  is taken on the logits divided by a temperature T = 200 (`GRASP_TEMPERATURE`): at init it flattens
  the softmax, which changes H g, hence the ranking, not only its scale.
- SynFlow (Tanaka et al. 2020): data-free, R = sum of the network's output on an all-ones input
  with every parameter replaced by |θ|; score |θ ⊙ ∂R/∂θ|; iterated with the exponential schedule
  (density at step j of J is final_density ** (j / J)), pruning inside the loop.

Modes: SNIP and GraSP score in train mode (batch statistics, as both papers do on a batch; dropout
draws from torch's global RNG forked and seeded with 0, so scores are deterministic). SynFlow scores
in eval mode with BatchNorm's running statistics set to mean 0, variance 1 (identity-like, as at
init; the paper's code takes |.| of them, the same thing at init), BatchNorm weights and biases as |.|.
Only the weights named in `names` (models.prunable: conv and linear) are scored; biases and BatchNorm
never are.

Counts: `target` gives the kept counts IMP's round K reaches (pruning.planned_kept), `prune_to` reaches such counts exactly from any scores, with
pruning.prune's choice (lowest first, ties by position; tested equal) in O(n) instead of a sort:
SynFlow prunes 100 times per round.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import masks, pruning
from .config import PruneConfig
from .masks import Mask
from .pruning import PruningError

GRASP_TEMPERATURE = 200.0  # the authors' code divides the logits by T = 200 for both g and H g


@dataclass
class Target:
    """Weights to keep, per network: `layers` name -> (N,) int64 for each layer pruned on its own,
    and `pooled_total` (N,) int64 kept over the `pooled` layers ranked together (global strategy)."""
    layers: dict[str, torch.Tensor]
    pooled: list[str] = field(default_factory=list)
    pooled_total: torch.Tensor | None = None


# ---------------------------------------------------------------- counts


def target(cfg: PruneConfig, kinds: dict[str, str], dense: dict[str, int], k: int, n: int) -> Target:
    """The counts round k of IMP keeps (pruning.planned_kept, the one home of the count rule), for n networks.

    A group of one layer is that layer's own count (a pooled group of one layer is the same count)."""
    layers, pooled, total = {}, [], None
    for group, kept in pruning.planned_kept(cfg, kinds, dense, k):
        if len(group) == 1 and group != pruning.plan(cfg, kinds, 1).pooled:
            layers[group[0]] = torch.full((n,), kept, dtype=torch.int64)
        else:
            pooled, total = list(group), torch.full((n,), kept, dtype=torch.int64)
    return Target(layers, pooled, total)


def _keep_top(score: torch.Tensor, keep: torch.Tensor, n_keep: torch.Tensor, what: str) -> torch.Tensor:
    """(N, n) bool: per row the `n_keep[i]` highest scores among `keep`, by pruning.prune's rule (the lowest
    go first, ties by position: the earlier goes first), found by a selection over the kept entries
    instead of a sort of all of them."""
    have = keep.sum(1)
    bad = torch.nonzero((n_keep <= 0) | (n_keep > have)).flatten().tolist()
    if bad:
        raise PruningError(f"{what}: cannot keep {int(n_keep[bad[0]])} of its {int(have[bad[0]])} weights")
    n_drop = have - n_keep
    t = torch.full((len(score),), float("-inf"), dtype=score.dtype)
    if bool((have == have[0]).all() & (n_drop == n_drop[0]).all()):  # the usual case: one batched selection
        if int(n_drop[0]) > 0:
            lowest = torch.topk(score[keep].view(len(score), -1), int(n_drop[0]), dim=1, largest=False, sorted=False)
            t = lowest.values.amax(1)  # the k-th lowest (topk of a few: faster than kthvalue here)
    else:
        for i, d in enumerate(n_drop.tolist()):
            if d > 0:
                t[i] = torch.kthvalue(score[i][keep[i]], d).values
    out = keep & (score > t[:, None])
    extra = n_keep - out.sum(1)  # ties at the threshold: keep the last ones by position
    for i in torch.nonzero(extra).flatten().tolist():
        out[i, torch.nonzero(keep[i] & (score[i] == t[i])).flatten()[-int(extra[i]) :]] = True
    return out


@torch.no_grad()
def prune_to(score: dict[str, torch.Tensor], mask: Mask, target: Target) -> Mask:
    """Drop the lowest scores of `mask` until each network keeps exactly `target`'s counts.

    The same choice as pruning.prune at the rates that give these counts (tested), faster."""
    new = dict(mask)
    for k, c in target.layers.items():
        new[k] = _keep_top(score[k].flatten(1), mask[k].flatten(1), c, f"layer '{k}'").view_as(mask[k])
    if target.pooled:
        flat = _keep_top(torch.cat([score[k].flatten(1) for k in target.pooled], 1),
                         torch.cat([mask[k].flatten(1) for k in target.pooled], 1), target.pooled_total,
                         f"layers {', '.join(target.pooled)} together")
        for k, part in zip(target.pooled, flat.split([mask[k][0].numel() for k in target.pooled], 1)):
            new[k] = part.reshape(mask[k].shape)
    return new


def invert(score: dict[str, torch.Tensor], mask: Mask, counts: dict[str, torch.Tensor]) -> Mask:
    """The `invert` control: keep the LOWEST-scoring weights of `mask`, `counts` (name -> (N,)) per layer."""
    flipped = {k: torch.where(mask[k], -s, float("-inf")) for k, s in score.items()}
    return prune_to(flipped, mask, Target(dict(counts)))


# ---------------------------------------------------------------- SNIP and GraSP


def _masked_copy(model: nn.Module, mask: Mask, names: list[str], batches) -> tuple[nn.Module, list[torch.Tensor]]:
    """A float64 train-mode copy of the stack with the mask applied, and its weights named in `names`."""
    if not batches:
        raise PruningError("prune.score_batches: no batch to score on (at least 1)")
    net = copy.deepcopy(model).double().train()
    masks.apply(net, mask)
    net.zero_grad(set_to_none=True)
    params = dict(net.named_parameters())
    return net, [params[k] for k in names]


def _loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Sum over networks of each network's mean cross-entropy on its batch, of the logits / `temperature`."""
    out = net(x.double()) / temperature  # (N, B, C)
    return F.cross_entropy(out.transpose(1, 2), y.expand(out.shape[0], -1), reduction="none").mean(1).sum()


def _gradient(net: nn.Module, weights: list[torch.Tensor], batches, temperature: float = 1.0) -> list[torch.Tensor]:
    total = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        for t, g in zip(total, torch.autograd.grad(_loss(net, x, y, temperature), weights)):
            t.add_(g)
    return [t / len(batches) for t in total]


def _score(names: list[str], mask: Mask, values) -> dict[str, torch.Tensor]:
    return {k: torch.where(mask[k], v.detach(), float("-inf")) for k, v in zip(names, values)}


def snip(model: nn.Module, mask: Mask, names: list[str], batches) -> dict[str, torch.Tensor]:
    """|g ⊙ w| with g averaged over `batches` [(x (N|1, B, ...), y (N|1, B))], train mode."""
    net, weights = _masked_copy(model, mask, names, batches)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        grads = _gradient(net, weights, batches)
    return _score(names, mask, [(g * w).abs() for g, w in zip(grads, weights)])


def grasp(model: nn.Module, mask: Mask, names: list[str], batches) -> dict[str, torch.Tensor]:
    """w ⊙ (H g) = −(GraSP's score): g the mean gradient over `batches`, restricted to kept weights, and H the
    mean Hessian, both of the loss at temperature GRASP_TEMPERATURE; train mode."""
    net, weights = _masked_copy(model, mask, names, batches)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = [gi * mask[k] for gi, k in zip(_gradient(net, weights, batches, GRASP_TEMPERATURE), names)]
        hg = [torch.zeros_like(w) for w in weights]
        for x, y in batches:  # H g by double backward, batch by batch (the mean Hessian times g)
            grads = torch.autograd.grad(_loss(net, x, y, GRASP_TEMPERATURE), weights, create_graph=True)
            z = sum((a * b).sum() for a, b in zip(grads, g))
            for h, d in zip(hg, torch.autograd.grad(z, weights)):
                h.add_(d)
    return _score(names, mask, [w * h / len(batches) for w, h in zip(weights, hg)])


# ---------------------------------------------------------------- SynFlow


def _linearized(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy with every parameter |θ| and BatchNorm statistics identity-like."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.zero_()
            elif name.endswith("running_var"):
                b.fill_(1.0)
    return net


def _flow(net: nn.Module, weights: dict[str, torch.Tensor], mask: Mask, input_shape, fill: float = 1.0) -> torch.Tensor:
    """R per network, (N,): the output's sum on an all-ones input (or all-`fill`), with the masked |θ| loaded."""
    params = dict(net.named_parameters())
    with torch.no_grad():
        for k, w in weights.items():
            params[k].copy_(w * mask[k])
    net.zero_grad(set_to_none=True)
    return net(torch.full((1, 1, *input_shape), fill, dtype=torch.float64)).flatten(1).sum(1)


def synflow_scores(net: nn.Module, mask: Mask, names: list[str], input_shape,
                   weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One SynFlow scoring, |θ ⊙ ∂R/∂θ|, of a `_linearized` copy (or of any model: it is linearized first).

    `weights`: the |θ| to score (name -> (N, ...)); the copy's own otherwise. Raises a one-line
    error for a layer that the all-ones input does not reach or whose score is not finite.
    """
    if weights is None:
        net = _linearized(net)
        weights = {k: p.detach().clone() for k, p in net.named_parameters() if k in names}
    return {k: torch.where(mask[k], s, float("-inf")) for k, s in _synflow(net, weights, mask, input_shape).items()}


def _synflow(net: nn.Module, weights: dict[str, torch.Tensor], mask: Mask, input_shape) -> dict[str, torch.Tensor]:
    """SynFlow scores of `weights` (0 where pruned) on the linearized `net`."""
    _flow(net, weights, mask, input_shape).sum().backward()
    params, out = dict(net.named_parameters()), {}
    for k in weights:
        p = params[k]
        if p.grad is None:
            raise PruningError(f"synflow: layer '{k}' gets no gradient from the all-ones input; it cannot be scored")
        out[k] = p.grad.mul_(p).abs_()
        if not torch.isfinite(out[k].sum()):  # scores are >= 0: an inf or nan anywhere shows in the sum
            raise PruningError(f"synflow: layer '{k}' has non-finite scores (the product of |θ| overflows float64)")
    return out


def _step_target(start: Target, final: Target, frac: float) -> Target:
    """Counts at fraction `frac` of the exponential schedule: start * (final / start) ** frac, rounded."""
    def at(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        c = torch.round(a.double() * (b.double() / a.double()) ** frac).long()
        return torch.maximum(torch.minimum(c, a), b)

    layers = {k: at(start.layers[k], c) for k, c in final.layers.items()}
    if not final.pooled:
        return Target(layers)
    return Target(layers, final.pooled, at(start.pooled_total, final.pooled_total))


def synflow(model: nn.Module, mask: Mask, names: list[str], input_shape, target: Target,
            iterations: int = 100) -> Mask:
    """Iterative SynFlow from `mask` down to exactly `target`'s counts in `iterations` steps.

    Step j of J keeps `start * (target / start) ** (j / J)` (the paper's exponential schedule),
    rescoring the survivors each step. The model is not modified (a linearized float64 copy is scored).
    Raises if no flow is left at the end (layer collapse: the output no longer depends on the input;
    R only decreases as weights go, so no step before had collapsed either). A residual branch may
    empty: the identity still carries the flow.
    """
    if iterations < 1:
        raise PruningError(f"prune.synflow_iterations: {iterations} is not allowed (an integer >= 1)")
    net = _linearized(model)
    params = dict(net.named_parameters())
    abs_w = {k: params[k].detach().clone() for k in names}
    kept = masks.kept(mask)
    start = Target({k: kept[k] for k in target.layers}, target.pooled,
                   sum(kept[k] for k in target.pooled) if target.pooled else None)
    for j in range(1, iterations + 1):
        score = _synflow(net, abs_w, mask, input_shape)
        mask = prune_to(score, mask, _step_target(start, target, j / iterations))
    with torch.no_grad():  # biases (|b| of θk) alone give R > 0: compare with a zero input
        flow = _flow(net, abs_w, mask, input_shape) - _flow(net, abs_w, mask, input_shape, 0.0)
    dead = torch.nonzero(flow <= 0).flatten().tolist()
    if dead:
        empty = [k for k, n in masks.kept(mask).items() if int(n[dead[0]]) == 0]
        raise PruningError(f"synflow: after {iterations} steps network {dead[0]} has no path from input to output "
                         f"(layer collapse{'; empty: ' + ', '.join(empty) if empty else ''}); "
                         "raise prune.synflow_iterations or use prune.strategy: layerwise")
    return mask


# ---------------------------------------------------------------- one round of pruning at initialization


def prune_at_init(cfg: PruneConfig, model: nn.Module, mask: Mask, kinds: dict[str, str], k: int, batches,
                  input_shape, seeds: list[int], want_scores: bool = False) -> tuple[Mask, dict | None]:
    """Round k under `prune.at: init`: `mask` (dense) pruned straight to IMP's round-k counts by the criterion
    scoring `model` (the rewind point); and, if `want_scores`, the scores the `invert` control ranks by
    (SynFlow: its one-shot scores of the dense mask, since the ticket comes from 100 rescorings)."""
    names = list(kinds)
    goal = target(cfg, kinds, {n: m[0].numel() for n, m in mask.items()}, k, len(next(iter(mask.values()))))
    if cfg.criterion == "synflow":
        ticket = synflow(model, mask, names, input_shape, goal, cfg.synflow_iterations)
        return ticket, (synflow_scores(model, mask, names, input_shape) if want_scores else None)
    if cfg.criterion in ("snip", "grasp"):
        score = (snip if cfg.criterion == "snip" else grasp)(model, mask, names, batches)
    else:  # magnitude or random, of the rewind point
        params = dict(model.named_parameters())
        score = pruning.scores(cfg.criterion, {n: params[n].detach() for n in names}, {}, seeds)
    return prune_to(score, mask, goal), score
