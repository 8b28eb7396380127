"""The step engine: one optimizer step of a stack of masked networks, as fast as the device allows.

`step = Step(model, mask, cfg, losses)` builds the optimizer; `step(idx, lr)` sets the learning
rate, computes `losses(idx)` (one loss per network), back-propagates, steps the optimizer and
keeps pruned weights at exactly zero (`Step.hold_pruned`, the one place that does).
With `fast` (the default) it takes shortcuts that give the same weights as the plain path
(every step eager through `Optimizer.step`, then the mask multiply; tested):
  - CPU, Adam: the fused kernel is called directly (`direct_step`), and after the first step
    Adam's own state holds pruned weights at zero instead of the multiply (`stop_pruned_updates`);
  - CUDA, with `graph`: the step is captured once as a CUDA graph after a few eager steps and
    replayed (not with augmentation, whose draws come from CPU generators).
With `train.sparse` (CPU), masked linear layers run sparse (`lottery.sparse`, built here from the mask, rebuilt
by `set_mask` when it moves):
the optimizer steps only their kept values, and `sync` writes those back into the model's dense weights,
which the caller does before reading the model's state; inside `sparse_forward` (the step's losses, and the
training loop's evaluations) the model runs those layers sparse. Same results up to floating-point summation order.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from . import sparse
from .config import TrainConfig
from .masks import Mask, apply

GRAPH_WARMUP = 3  # eager steps before the CUDA graph capture (optimizer state, cuBLAS handles)
# the argument names of torch.ops.aten._fused_adam_ that `direct_step` calls it with
FUSED_ADAM_ARGS = ("self", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps", "lr", "beta1",
                   "beta2", "weight_decay", "eps", "amsgrad", "maximize", "grad_scale", "found_inf")
FUSED_ADAM_NOTE = "note: torch._fused_adam_ has an unexpected signature; using Optimizer.step (slower, same results)"


def make_optimizer(params, cfg: TrainConfig, device: torch.device = torch.device("cpu")) -> torch.optim.Optimizer:
    # Element-wise optimizers on stacked tensors equal one optimizer per network. The fused
    # kernels are about 2x faster than foreach on 2 CPU cores (LeNet, 6 networks). On CUDA
    # the learning rate and Adam's step count live on the device, so that a captured CUDA
    # graph of the step sees the schedule (set_lr).
    lr = torch.tensor(cfg.lr, device=device) if device.type == "cuda" else cfg.lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, fused=True,
                                capturable=device.type == "cuda")
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def fused_adam_matches() -> bool:
    """Whether this torch's private `_fused_adam_` takes the arguments `direct_step` passes."""
    op = getattr(torch.ops.aten, "_fused_adam_", None)
    if op is None:
        return False
    names = [tuple(a.name for a in getattr(op, o)._schema.arguments) for o in op.overloads()]
    return tuple(FUSED_ADAM_ARGS) in names


def direct_step(opt: torch.optim.Optimizer, log=print):
    """`opt.step` for a fused CPU Adam, minus its per-step Python (about 0.3 ms a step).

    The first call is a real `opt.step()` (it creates the state); later calls run what it
    would: add 1 to every step count, then the same fused kernel on the same state tensors,
    at the group's current lr. So `opt.state_dict()` (resume points) stays valid and the
    result is bit-identical (tested); 7 to 11% faster per step on LeNet stacks of 1 to 10.
    Any other optimizer, or a step where a gradient is missing, goes through `opt.step()`;
    so does everything if the private kernel's signature is not the expected one (one note).
    """
    group = opt.param_groups[0]
    if not (type(opt) is torch.optim.Adam and group["fused"] and len(opt.param_groups) == 1
            and not group["amsgrad"] and not group["maximize"] and not group.get("decoupled_weight_decay")):
        return opt.step
    if not fused_adam_matches():
        log(FUSED_ADAM_NOTE)
        return opt.step
    params = group["params"]
    lists = []

    def step() -> None:
        group = opt.param_groups[0]  # (a new dict after opt.load_state_dict: a resume point)
        grads = [p.grad for p in params]
        if not lists or any(g is None for g in grads):
            opt.step()
            states = [opt.state[p] for p in params]
            lists[:] = [[s[k] for s in states] for k in ("exp_avg", "exp_avg_sq", "step")] if all(states) else []
            return
        exp_avgs, exp_avg_sqs, steps = lists
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                           beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False, grad_scale=None, found_inf=None)

    return step


def stop_pruned_updates(opt: torch.optim.Optimizer, weights: list[torch.Tensor], keep: list[torch.Tensor]) -> bool:
    """Make Adam itself leave pruned weights at exactly zero: no mask multiply after each step.

    Adam moves a weight by lr * m_hat / (sqrt(v_hat) + eps). With v = +inf where `keep` is 0,
    that move is exactly zero for any finite m, and L2 or decoupled weight decay scale a zero
    weight to zero, so a weight that the mask has zeroed stays zero (a non-finite m would need
    a non-finite gradient, which stops training anyway). Weights that survive are untouched:
    the result is bit-identical to multiplying by the mask after every step (tested). This
    replaces a pass over every pruned layer per step (10 LeNets: steps 17% faster, median of 6 A/B repeats).
    Needs Adam's state, so call it after a step; returns False, doing nothing, for any other
    optimizer or before the state exists.
    """
    if not isinstance(opt, torch.optim.Adam):
        return False
    states = [opt.state.get(p) for p in weights]
    if not all(s and "exp_avg_sq" in s for s in states):
        return False
    for s, k in zip(states, keep):  # (amsgrad's running maximum of v then becomes inf too)
        s["exp_avg_sq"].masked_fill_(k == 0, float("inf"))
    return True


class Step:
    """`step(idx, lr=None)`: one optimizer step of every network on the batch of `idx`.

    `opt` is the optimizer (its state dict makes resume points); `running` sums each network's
    training loss over the steps since the caller last zeroed it.
    """

    def __init__(self, model: nn.Module, mask: Mask, cfg: TrainConfig, losses: Callable[[torch.Tensor], torch.Tensor],
                 fast: bool = True, graph: bool = True, log=print):
        device = next(model.parameters()).device
        apply(model, mask)
        self.mask, self.params = mask, dict(model.named_parameters())  # the training mask: changed by set_mask only
        # Layers that run sparse (`train.sparse`): the optimizer steps their kept values instead of the weight.
        self.sparse = sparse.plan(model, mask, cfg, device)
        kept = {id(model.get_parameter(k)): s.vals for k, s in self.sparse.items()}
        self.opt = make_optimizer([kept.get(id(p), p) for p in model.parameters()], cfg, device)
        self._track_pruned()
        self.losses = losses
        self.running = torch.zeros(next(iter(mask.values())).shape[0], device=device)  # masks are (N, ...)
        self.cpu_fast, self.log = fast and device.type == "cpu", log
        self.opt_step = direct_step(self.opt, log) if self.cpu_fast else self.opt.step
        self.use_graph = fast and graph and device.type == "cuda"
        self.graph = self.idx_buf = None
        self.side = torch.cuda.Stream() if self.use_graph else None
        self.eager = 0  # eager steps so far (the graph is captured after GRAPH_WARMUP of them)

    def sync(self) -> None:
        """Write the kept values of the sparse layers into the model's dense weights: call it before reading the
        model's state (evaluation, early-stop copies, resume points). A no-op without sparse layers."""
        for s in self.sparse.values():
            s.sync()

    def load(self) -> None:
        """Take the sparse layers' kept values from the model's weights again (after loading a resume point)."""
        for s in self.sparse.values():
            s.load()

    def _track_pruned(self) -> None:
        """The layers `hold_pruned` masks and their keep factors, from the mask (layers with nothing pruned, as in
        round r0, need no re-masking after a step; nor do sparse layers, which hold only their kept values)."""
        pruned = [k for k, m in self.mask.items() if not bool(m.all()) and k not in self.sparse]
        self.weights = [self.params[k] for k in pruned]
        self.keep = [self.mask[k].to(self.params[k].dtype) for k in pruned]

    def grad(self, name: str) -> torch.Tensor:
        """The dense gradient of masked weight `name` in the last step, pruned positions included (dynamic sparse
        training grows where it is largest): its `.grad`, or for a sparse layer one dense product made on request."""
        s = self.sparse.get(name)
        return self.params[name].grad if s is None else s.dense_grad()

    @torch.no_grad()
    def set_mask(self, rows: list[int], new: Mask, grown: Mask | None = None) -> None:
        """Change the training mask of the networks `rows` of the stack: the one way a mask changes after the
        Step is built (dynamic sparse training, lottery.dst; a resume point restoring its mask).

        new[k]: the new mask of layer k for those rows, (len(rows), ...); grown[k]: the positions that start afresh
        (default: new & ~old; a position dropped and grown back in the same update is grown too). Newly pruned
        weights become zero, grown ones exactly zero, and the optimizer state of grown positions is reset (Adam's
        moments, SGD's momentum: 0); everything derived from the mask is rebuilt: the layers `hold_pruned` masks,
        Adam's +inf at pruned positions (fast CPU path), the CUDA graph (captured again at the next step), and a
        sparse layer's CSR structure (`_rebuild`). The layers that run sparse stay those chosen when the Step was
        built (rigl and set conserve each layer's count, so `auto`'s choice by density is unchanged).
        """
        self.sync()  # (sparse layers: the dense weights hold the current values, masked below, read by `_rebuild`)
        idx = torch.as_tensor(rows, dtype=torch.long, device=next(iter(self.mask.values())).device)
        for k, m in new.items():
            full = self.mask[k]
            g = m & ~full[idx] if grown is None else grown[k]
            full[idx] = m
            fresh = torch.zeros_like(full)
            fresh[idx] = g
            self.params[k].masked_fill_(~full | fresh, 0)
            if k in self.sparse:
                self._rebuild(k, fresh)
                continue
            state = self.opt.state.get(self.params[k], {})
            for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
                if isinstance(state.get(name), torch.Tensor):
                    state[name].masked_fill_(fresh, 0)
        if self.sparse and self.opt_step != self.opt.step:  # (direct_step holds the replaced values and their state)
            self.opt_step = direct_step(self.opt, self.log)
        self._track_pruned()
        self.hold_pruned()  # (pruned weights are zero already: on the fast CPU path, +inf where Adam's state exists)
        self.graph = None

    def _rebuild(self, name: str, fresh: torch.Tensor) -> None:
        """A sparse layer under its changed mask (`self.mask[name]`, applied to the dense weight): a new CSR structure
        whose kept values replace the old ones in the optimizer, their state carried from the old kept positions to
        the new ones (`SparseLinear.take`), zero where a weight is newly kept or `fresh`."""
        old = self.sparse[name]
        new = self.sparse[name] = sparse.SparseLinear(old.module, self.mask[name])
        for group in self.opt.param_groups:
            group["params"] = [new.vals if p is old.vals else p for p in group["params"]]
        restart = fresh.reshape(-1)[new.flat]
        state = self.opt.state.pop(old.vals, None)
        if state:  # (none before the first step)
            self.opt.state[new.vals] = {s: new.take(old, v).masked_fill_(restart, 0)
                                        if torch.is_tensor(v) and v.shape == old.vals.shape else v for s, v in state.items()}

    def hold_pruned(self) -> None:
        """Keep pruned weights at exactly zero after an optimizer step, per optimizer:

        every optimizer (SGD's momentum and weight decay would revive them) gets the mask multiply
        after every step; Adam on the fast CPU path gets it once, then Adam's state holds them at
        zero instead (`stop_pruned_updates`; CPU only for now: the CUDA graph path was checked bit
        for bit on an H100 with the multiply).
        """
        if self.weights:
            torch._foreach_mul_(self.weights, self.keep)
            if self.cpu_fast and stop_pruned_updates(self.opt, self.weights, self.keep):
                self.weights = []  # from now on Adam's state holds them at zero: no more multiplies

    @contextmanager
    def sparse_forward(self):
        """Inside the block, the sparse layers run their sparse forward, on the kept values (a step's losses, and
        evaluation during training: lottery.training); outside it, the dense forward on the dense weights."""
        for s in self.sparse.values():
            s.module.sparse = s
        try:
            yield
        finally:
            for s in self.sparse.values():
                s.module.sparse = None

    def _step(self, idx: torch.Tensor) -> None:
        with self.sparse_forward():
            losses = self.losses(idx)  # (N,)
        losses.sum().backward()
        self.opt_step()
        with torch.no_grad():
            self.hold_pruned()
            self.running.add_(losses.detach())

    def __call__(self, idx: torch.Tensor, lr: float | None = None) -> None:
        if lr is not None:
            set_lr(self.opt, lr)
        if self.graph is not None:
            self.idx_buf.copy_(idx)
            self.graph.replay()
        elif self.use_graph and self.eager >= GRAPH_WARMUP:  # capture this step, then run it
            self.idx_buf = idx.clone()
            self.opt.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients it reuses
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step(self.idx_buf)
            self.graph.replay()
        elif self.use_graph:  # eager warm-up steps on a side stream, as CUDA graph capture requires
            self.opt.zero_grad(set_to_none=True)
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self._step(idx)
            torch.cuda.current_stream().wait_stream(self.side)
            self.eager += 1
        else:
            self.opt.zero_grad(set_to_none=True)
            self._step(idx)

