"""The training loop: a stack of masked networks trained together on in-memory tensors.

Every network sees its own data order (one order per seed; networks that share a seed
share batches), pruned weights stay exactly zero after every optimizer step, validation runs every
`eval_every` iterations, and the early-stop iteration is the one of minimum validation loss.
The test set is only evaluated on the weights chosen by validation and on the final ones.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, TrainConfig
from .masks import Mask, apply


GRAPH_WARMUP = 3  # eager steps before the CUDA graph capture (optimizer state, cuBLAS handles)


class NumericalError(RuntimeError):
    """The loss or a weight became NaN or infinite."""


@dataclass
class Result:
    early_stop_iteration: list[int]
    test_accuracy: list[float]  # at the early-stop iteration
    final_test_accuracy: list[float]
    min_val_loss: list[float]
    curve: list[dict]  # one row per evaluation: iteration, val_loss[N], val_acc[N]


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Learning rate of iteration `it` (1-based): linear warm-up, then a drop at each of `lr_drops`."""
    warm = min(1.0, it / cfg.warmup) if cfg.warmup else 1.0
    return cfg.lr * warm * cfg.lr_gamma ** sum(it > d for d in cfg.lr_drops)


def _augment_draws(gen: torch.Generator, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flip = torch.rand(b, generator=gen) < 0.5
    dy, dx = torch.randint(0, 9, (2, b), generator=gen)
    return flip, dy, dx


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with padding 4 and horizontal flip of a batch (B, C, H, W), drawn from `gen`."""
    b, c, h, w = x.shape
    flip, dy, dx = (t.to(x.device) for t in _augment_draws(gen, b))
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (4, 4, 4, 4)).permute(0, 2, 3, 1)  # (B, H+8, W+8, C)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return padded[torch.arange(b, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def _digest(model: nn.Module, mask: Mask, cfg: TrainConfig, order_seeds: list[int], n_train: int, extra=()) -> str:
    """Identity of a training run: its starting weights, masks, hyper-parameters and data orders."""
    h = hashlib.sha256(repr((sorted(vars(cfg).items()), list(order_seeds), n_train, extra)).encode())
    for t in [*model.state_dict().values(), *mask.values()]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def keep_freed_memory() -> None:
    """Stop glibc from handing freed blocks back to the kernel between training steps.

    Every step frees the gradients (`zero_grad(set_to_none=True)`) and allocates them again.
    With glibc's adaptive defaults, blocks of a few MB are mmapped or trimmed away, so each
    step page-faulted its new gradients in again: about 1,000 faults a step for 10 stacked
    LeNets, whose steps ran 17-35% faster without them. Keeping the blocks in the heap makes
    a step reuse the last one's memory. No-op where the C library has no mallopt.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks up to 32 MiB come from the heap
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap


def resolve_device(name: str, precision: str = "float32") -> torch.device:
    """cpu, cuda or auto. On CUDA, deterministic kernels are switched on (same bytes per rerun),
    and TF32 tensor cores are used only when `precision` is tf32 (float32 means float32)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' is not allowed here (no CUDA device is visible); use cpu or auto")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)  # max-pool backward has no deterministic CUDA kernel
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    elif precision == "tf32":
        raise ConfigError(f"train.precision: 'tf32' is not allowed on {name} (TF32 is a CUDA tensor-core mode); "
                          "use float32 or bfloat16")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bfloat16: matmuls and convolutions in bfloat16 (weights, optimizer and masks stay float32)."""
    if precision != "bfloat16":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


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


def direct_step(opt: torch.optim.Optimizer):
    """`opt.step` for a fused CPU Adam, minus its per-step Python (about 0.3 ms a step).

    The first call is a real `opt.step()` (it creates the state); later calls run what it
    would: add 1 to every step count, then the same fused kernel on the same state tensors,
    at the group's current lr. So `opt.state_dict()` (resume points) stays valid and the
    result is bit-identical (tested); 7 to 11% faster per step on LeNet stacks of 1 to 10.
    Any other optimizer, or a step where a gradient is missing, goes through `opt.step()`.
    """
    group = opt.param_groups[0]
    if not (type(opt) is torch.optim.Adam and group["fused"] and len(opt.param_groups) == 1
            and not group["amsgrad"] and not group["maximize"] and not group.get("decoupled_weight_decay")):
        return opt.step
    params = group["params"]
    lists = []

    def step() -> None:
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


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000,
             precision: str = "float32") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy of every network on (x, y): two (N,) tensors (in eval mode)."""
    was_training = model.training
    model.eval()
    loss = acc = 0.0
    for s in range(0, len(y), chunk):
        with autocast(x.device, precision):
            out = model(x[None, s : s + chunk]).float()  # (N, b, C)
        yb = y[s : s + chunk]
        loss = loss + F.cross_entropy(out.transpose(1, 2), yb.expand(out.shape[0], -1), reduction="none").sum(1)
        acc = acc + (out.argmax(-1) == yb).sum(1)
    model.train(was_training)
    return (loss / len(y)).double(), (acc / len(y)).double()


def _check_finite(model: nn.Module, loss: torch.Tensor, it: int, label: str) -> None:
    if torch.isfinite(loss).all():
        return
    nets = torch.nonzero(~torch.isfinite(loss)).flatten().tolist()
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p[nets[0]]).all()]
    where = f"first non-finite parameter: {bad[0]}" if bad else "parameters still finite (the loss overflowed)"
    raise NumericalError(f"{label}: non-finite loss at iteration {it} in network(s) {nets}; {where}. No checkpoint written.")


def train(
    model: nn.Module,
    mask: Mask,
    data: dict[str, torch.Tensor],
    cfg: TrainConfig,
    order_seeds: list[int],
    label: str = "train",
    log=print,
    resume_dir: Path | None = None,
    checkpoint_seconds: float = 120.0,
    start: int = 0,
    constant_lr: float | None = None,
    augment: bool = False,
    fast: bool = True,
) -> Result:
    """Train the stack in place and return its results.

    With `resume_dir`, the full loop state is saved there every `checkpoint_seconds` (at an
    evaluation), under a digest of this training's inputs; a later call with the same inputs
    resumes from it bit for bit, and the file is deleted when training completes.
    `start` = k resumes the schedule at iteration k (rewinding to θk): the data orders and
    learning-rate schedule continue where an uninterrupted run would be. `constant_lr`
    replaces the schedule (fine-tuning). `augment` applies CIFAR's crop-and-flip per batch.
    `fast` (the default) takes shortcuts that give the same weights as the plain path
    (`fast=False`: every step eager through `Optimizer.step`, then the mask multiply; tested).
    On CPU, Adam steps call the fused kernel directly (`direct_step`), and after the first
    step Adam's own state holds pruned weights at zero instead of the multiply
    (`stop_pruned_updates`). On CUDA, without `augment` (whose draws come from CPU
    generators), the step is captured once as a CUDA graph after a few eager steps and replayed.
    """
    n_nets = len(order_seeds)
    x_train, y_train = data["x_train"], data["y_train"]
    n_train, bs = len(y_train), cfg.batch_size
    if bs > n_train:
        raise ConfigError(f"train.batch_size: {bs} is not allowed (larger than the {n_train} training examples)")
    device = x_train.device
    uniq = sorted(set(order_seeds))
    gens = [torch.Generator().manual_seed(s) for s in uniq]
    net_order = torch.tensor([uniq.index(s) for s in order_seeds], device=device)
    identity = len(uniq) == n_nets and uniq == list(order_seeds)

    keep_freed_memory()
    model.train()
    params = list(model.parameters())
    opt = make_optimizer(params, cfg, device)
    apply(model, mask)
    # Layers with nothing pruned (round r0, dense training) need no re-masking after a step.
    pruned = [k for k, m in mask.items() if not bool(m.all())]
    weights = [dict(model.named_parameters())[k] for k in pruned]
    keep = [mask[k].to(p.dtype) for k, p in zip(pruned, weights)]

    state = model.state_dict()  # parameters and buffers (BatchNorm statistics), all (N, ...)
    best = {k: v.clone() for k, v in state.items()}
    best_loss = torch.full((n_nets,), float("inf"), dtype=torch.float64)
    best_it = torch.zeros(n_nets, dtype=torch.long)
    curve: list[dict] = []
    perms, pos = None, n_train
    t0 = time.perf_counter()
    running, since = torch.zeros(n_nets, device=device), 0
    scratch = resume_dir / f"{_digest(model, mask, cfg, order_seeds, n_train, (start, constant_lr, augment))}.pt" if resume_dir else None
    first, last_save = start + 1, time.monotonic()

    def epoch() -> torch.Tensor:  # a new permutation for every data order
        return torch.stack([torch.randperm(n_train, generator=g) for g in gens]).to(device)

    for it in range(1, start + 1):  # replay the data orders (and augmentation draws) of iterations 1..k
        if pos + bs > n_train:
            perms, pos = epoch(), 0
        pos += bs
        if augment:
            for g in gens:
                _augment_draws(g, bs)
    scheduled = constant_lr is None and (cfg.warmup > 0 or len(cfg.lr_drops) > 0)
    if constant_lr is not None:
        set_lr(opt, constant_lr)
    if scratch and scratch.is_file():
        try:
            st = torch.load(scratch, map_location=device, weights_only=True)
        except Exception as e:  # a torn scratch file is not worth failing for: start over
            log(f"[{label}] ignoring unreadable resume checkpoint {scratch} ({type(e).__name__})")
        else:
            model.load_state_dict(st["state"])
            best = st["best"]
            opt.load_state_dict(st["opt"])
            for g, gs in zip(gens, st["gens"]):
                g.set_state(gs)
            best_loss, best_it, curve = st["best_loss"], st["best_it"], st["curve"]
            perms, pos, first = st["perms"], st["pos"], st["it"] + 1
            log(f"[{label}] resumed from {scratch} at iteration {st['it']}")

    def step(idx: torch.Tensor) -> None:
        """One optimizer step of every network on the batch of `idx` (orders, B)."""
        nonlocal weights
        if not (identity or augment):  # each network's batch, gathered once
            idx = idx[net_order]
        # index_select copies whole rows: 2.6x faster than x_train[idx] (LeNet, 10 orders)
        xb = torch.index_select(x_train, 0, idx.reshape(-1)).view(*idx.shape, *x_train.shape[1:])
        yb = torch.index_select(y_train, 0, idx.reshape(-1)).view(idx.shape)
        if augment:  # one draw per data order, then each network takes its order's batch
            xb = torch.stack([augment_batch(xb[o], g) for o, g in enumerate(gens)])
            if not identity:
                xb, yb = xb[net_order], yb[net_order]
        with autocast(device, cfg.precision):
            out = model(xb)
        losses = F.cross_entropy(out.float().transpose(1, 2), yb, reduction="none").mean(1)  # (N,)
        losses.sum().backward()
        opt_step()
        with torch.no_grad():
            if weights:
                torch._foreach_mul_(weights, keep)
                # CPU only for now: the CUDA graph path was checked bit for bit on an H100 with the multiply
                if cpu_fast and stop_pruned_updates(opt, weights, keep):
                    weights = []  # from now on Adam's state holds them at zero: no more multiplies
            running.add_(losses.detach())

    use_graph = fast and device.type == "cuda" and not augment
    cpu_fast = fast and device.type == "cpu"
    opt_step = direct_step(opt) if cpu_fast else opt.step
    graph = idx_buf = None
    side = torch.cuda.Stream() if use_graph else None
    for it in range(first, cfg.iterations + 1):
        if pos + bs > n_train:
            perms, pos = epoch(), 0
        idx = perms[:, pos : pos + bs]
        pos += bs
        if scheduled:
            set_lr(opt, lr_at(it, cfg))
        if graph is not None:
            idx_buf.copy_(idx)
            graph.replay()
        elif use_graph and it - first >= GRAPH_WARMUP:  # capture this step, then run it
            idx_buf = idx.clone()
            opt.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients it reuses
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step(idx_buf)
            graph.replay()
        elif use_graph:  # eager warm-up steps on a side stream, as CUDA graph capture requires
            opt.zero_grad(set_to_none=True)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step(idx)
            torch.cuda.current_stream().wait_stream(side)
        else:
            opt.zero_grad(set_to_none=True)
            step(idx)
        since += 1

        if it % cfg.eval_every == 0 or it == cfg.iterations:
            _check_finite(model, running, it, label)
            val_loss, val_acc = evaluate(model, data["x_val"], data["y_val"], precision=cfg.precision)
            val_loss, val_acc = val_loss.cpu(), val_acc.cpu()
            _check_finite(model, val_loss, it, label)
            better = val_loss < best_loss
            if better.any():
                for k, b in best.items():
                    b[better.to(device)] = state[k][better.to(device)]
                best_loss = torch.where(better, val_loss, best_loss)
                best_it = torch.where(better, torch.tensor(it), best_it)
            curve.append({"iteration": it, "val_loss": val_loss.tolist(), "val_acc": val_acc.tolist()})
            if scratch and time.monotonic() - last_save >= checkpoint_seconds and it < cfg.iterations:
                from .artifacts import atomic_save

                atomic_save({"it": it, "state": state, "best": best, "opt": opt.state_dict(),
                             "gens": [g.get_state() for g in gens], "best_loss": best_loss, "best_it": best_it,
                             "curve": curve, "perms": perms, "pos": pos}, scratch)
                last_save = time.monotonic()
        if cfg.log_every and (it % cfg.log_every == 0 or it == cfg.iterations):
            _check_finite(model, running, it, label)
            dt = time.perf_counter() - t0
            rate = (it - start) / dt
            last = curve[-1]["val_acc"] if curve else [float("nan")]
            log(
                f"[{label}] it {it:>6}/{cfg.iterations}  loss {float(running.mean()) / since:.4f}"
                f"  val_acc {100 * sum(last) / len(last):5.2f}%  {rate:6.0f} it/s ({rate * n_nets:.0f} net-it/s)"
                f"  ETA {(cfg.iterations - it) / rate:5.0f}s"
            )
            running.zero_()
            since = 0

    final_loss, final_acc = evaluate(model, data["x_test"], data["y_test"], precision=cfg.precision)
    with torch.no_grad():
        final = {k: v.clone() for k, v in state.items()}
        model.load_state_dict(best)
        _, es_acc = evaluate(model, data["x_test"], data["y_test"], precision=cfg.precision)
        model.load_state_dict(final)
    if scratch:
        scratch.unlink(missing_ok=True)
    return Result(
        early_stop_iteration=best_it.tolist(),
        test_accuracy=es_acc.tolist(),
        final_test_accuracy=final_acc.tolist(),
        min_val_loss=best_loss.tolist(),
        curve=curve,
    )

