"""The training loop: a stack of masked networks trained together on the data of a round (`lottery.data.TensorData`).

Every network sees its own data order (one order per seed; networks that share a seed
share batches), pruned weights stay exactly zero after every optimizer step, validation runs every
`eval_every` iterations, and the early-stop iteration is the one of minimum validation loss.
The test set is only evaluated on the weights chosen by validation and on the final ones.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed, resume
from .artifacts import atomic_save
from .config import ConfigError, LotteryError, TrainConfig
from .data import Orders, Split, TensorData
from .masks import Mask
from .step import Step, set_lr

PROGRESS_SECONDS = 30.0  # the longest silence between two progress lines of a round (train.log_every > 0)


class NumericalError(LotteryError, RuntimeError):
    """The loss or a weight became NaN or infinite."""


@dataclass
class Result:
    early_stop_iteration: list[int]
    test_accuracy: list[float]  # at the early-stop iteration
    final_test_accuracy: list[float]
    min_val_loss: list[float]
    curve: list[dict]  # one row per evaluation: iteration, val_loss[N], val_acc[N]

    @staticmethod
    def concat(parts: list[Result]) -> Result:
        """The result of one stack from those of its consecutive groups of networks (same schedule)."""
        def join(rows: tuple[dict, ...]) -> dict:
            return {"iteration": rows[0]["iteration"], **{k: [v for r in rows for v in r[k]] for k in ("val_loss", "val_acc")}}

        lists = {f: [v for r in parts for v in getattr(r, f)] for f in
                 ("early_stop_iteration", "test_accuracy", "final_test_accuracy", "min_val_loss")}
        return Result(**lists, curve=[join(rows) for rows in zip(*(r.curve for r in parts))])


class Clock:
    """Wall seconds per part of a round, summed over its blocks (`with clock("validation"): ...`), and the round's
    time line: `time 24.1s: start-up 2.6s 11%, steps 15.0s 62%, ...`. Timings differ from run to run: they go to
    the round's log only, never into a file that is compared or hashed."""

    PARTS = ("start-up", "steps", "validation", "test", "instability", "saving")

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds

    @contextmanager
    def __call__(self, part: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - t)

    def line(self, total: float) -> str:
        """Each part's seconds and share of `total`, in PARTS order, and `other` for the rest of it."""
        parts = {p: self.seconds[p] for p in self.PARTS if p in self.seconds}
        parts["other"] = max(0.0, total - sum(parts.values()))
        return f"time {total:.1f}s: " + ", ".join(f"{p} {s:.1f}s {100 * s / total:.0f}%" for p, s in parts.items())


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Learning rate of iteration `it` (1-based): linear warm-up, then a drop at each of `lr_drops`."""
    warm = min(1.0, it / cfg.warmup) if cfg.warmup else 1.0
    return cfg.lr * warm * cfg.lr_gamma ** sum(it > d for d in cfg.lr_drops)


def digest(model: nn.Module, mask: Mask, cfg: TrainConfig, order_seeds: list[int], n_train: int, extra=()) -> str:
    """Identity of a training run: its starting weights, masks, hyper-parameters and data orders."""
    h = hashlib.sha256(repr((sorted(vars(cfg).items()), list(order_seeds), n_train, extra)).encode())
    for t in [*model.state_dict().values(), *mask.values()]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def autocast(device: torch.device, precision: str):
    """bfloat16: matmuls and convolutions in bfloat16 (weights, optimizer and masks stay float32)."""
    if precision != "bfloat16":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, chunk: int = 1000, precision: str = "float32",
             shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy of every network on `split`, `chunk` examples at a time: two (N,) tensors (in eval
    mode). With `shard` (r, W), rank r of a data-parallel round evaluates every W-th chunk and the sums are
    added over the ranks (with rank 0's BatchNorm statistics), so every rank gets the same result."""
    was_training = model.training
    model.eval()
    loss = acc = 0.0
    if shard[1] > 1:  # (a rank may get no chunk: the sums start as tensors)
        distributed.sync_buffers(model)
        p = next(model.parameters())
        loss, acc = torch.zeros(p.shape[0], device=p.device), torch.zeros(p.shape[0], device=p.device)
    for xb, yb in split.chunks(chunk, shard):
        with autocast(xb.device, precision):
            out = model(xb[None]).float()  # (N, b, C)
        loss = loss + F.cross_entropy(out.transpose(1, 2), yb.expand(out.shape[0], -1), reduction="none").sum(1)
        acc = acc + (out.contiguous().argmax(-1) == yb).sum(1)  # (argmax along contiguous rows: 5x faster here)
    if shard[1] > 1:
        distributed.all_reduce_(loss), distributed.all_reduce_(acc)
    model.train(was_training)
    return (loss / len(split)).double(), (acc / len(split)).double()


def _check_finite(model: nn.Module, loss: torch.Tensor, it: int, label: str) -> None:
    if torch.isfinite(loss).all():
        return
    nets = torch.nonzero(~torch.isfinite(loss)).flatten().tolist()
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p[nets[0]]).all()]
    where = f"first non-finite parameter: {bad[0]}" if bad else "parameters still finite (the loss overflowed)"
    raise NumericalError(f"{label}: non-finite loss at iteration {it} in network(s) {nets}; {where}. No checkpoint written.")


class EarlyStop:
    """Per network, the weights, validation loss and iteration of the minimum validation loss; the curve."""

    def __init__(self, state: dict[str, torch.Tensor], n_nets: int):
        self.best = {k: v.clone() for k, v in state.items()}
        self.loss = torch.full((n_nets,), float("inf"), dtype=torch.float64)
        self.it = torch.zeros(n_nets, dtype=torch.long)
        self.curve: list[dict] = []

    def update(self, it: int, state: dict[str, torch.Tensor], val_loss: torch.Tensor, val_acc: torch.Tensor) -> None:
        better = val_loss < self.loss
        if better.any():
            for k, b in self.best.items():
                b[better.to(b.device)] = state[k][better.to(b.device)]
            self.loss = torch.where(better, val_loss, self.loss)
            self.it = torch.where(better, torch.tensor(it), self.it)
        self.curve.append({"iteration": it, "val_loss": val_loss.tolist(), "val_acc": val_acc.tolist()})


def _save_resume(path: Path, it: int, state, step: Step, orders: Orders, stop: EarlyStop, watch=None) -> None:
    atomic_save({"it": it, "state": state, "best": stop.best, "opt": step.opt.state_dict(), **orders.state_dict(),
                 "best_loss": stop.loss, "best_it": stop.it, "curve": stop.curve, "mask": step.mask,
                 **({"watch": watch.state_dict()} if watch else {})}, path)


def _load_resume(path: Path, model: nn.Module, step: Step, orders: Orders, stop: EarlyStop, label: str, log,
                 device: torch.device, watch=None) -> int | None:
    """Restore the loop state saved at `path`; returns the iteration it was saved at (None: unreadable)."""
    try:
        st = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a torn scratch file is not worth failing for: start over
        log(f"[{label}] ignoring unreadable resume checkpoint {path} ({type(e).__name__})")
        return None
    if "mask" in st and any(not torch.equal(m, step.mask[k]) for k, m in st["mask"].items()):  # (a mask that moved
        # during training: dynamic sparse training, lottery.dst)
        step.set_mask(list(range(len(stop.loss))), st["mask"], {k: torch.zeros_like(m) for k, m in st["mask"].items()})
    model.load_state_dict(st["state"])
    stop.best = st["best"]
    step.opt.load_state_dict(st["opt"])
    orders.load_state_dict(st)
    stop.loss, stop.it, stop.curve = st["best_loss"], st["best_it"], st["curve"]
    if watch:
        watch.load_state_dict(st["watch"])
    step.load()  # (sparse layers: their kept values from the loaded weights)
    log(f"[{label}] resumed from {path} at iteration {st['it']}")
    return st["it"]


def train(model: nn.Module, mask: Mask, data: TensorData, cfg: TrainConfig, order_seeds: list[int],
          label: str = "train", log=print, resume_dir: Path | None = None, checkpoint_seconds: float = 120.0,
          start: int = 0, constant_lr: float | None = None, augment: bool = False, fast: bool = True,
          watch=None, update=None, clock: Clock | None = None) -> Result:
    """Train the stack in place and return its results.

    With `resume_dir`, the full loop state is saved there every `checkpoint_seconds` (at an
    evaluation), under a digest of this training's inputs; a later call with the same inputs
    resumes from it bit for bit, and the file is deleted when training completes.
    `start` = k resumes the schedule at iteration k (rewinding to θk): the data orders and
    learning-rate schedule continue where an uninterrupted run would be. `constant_lr`
    replaces the schedule (fine-tuning). `augment` applies CIFAR's crop-and-flip per batch.
    `fast` (the default) takes the step engine's shortcuts, which give the same weights as the
    plain path (`fast=False`; see lottery.step).
    `watch(it, state)` is called after every evaluation with the stack's weights (it must not change them; its
    `state_dict()` / `load_state_dict()` travel with the resume point): the early-bird search, `lottery.early_bird`.
    `update(it, step)`, when given, runs after the optimizer
    step of every iteration, the gradients still in place (`step.grad`): it may change masks through `step.set_mask`
    (dynamic sparse training: `lottery.dst.Updater`); `mask` is then the final mask when training returns.
    `clock` (`Clock`) adds the seconds of this training's parts: start-up (until the first iteration), steps,
    validation, test and saving (resume points).
    """
    entered, clock = time.perf_counter(), clock or Clock()
    n_train, bs, device = len(data.train), cfg.batch_size, data.device
    if bs > n_train:
        raise ConfigError(f"train.batch_size: {bs} is not allowed (larger than the {n_train} training examples)")
    shard = distributed.rank_world()  # (rank, world size): this process's rows of every batch
    orders = data.orders(order_seeds, bs, augment, shard)
    net = model  # DistributedDataParallel(model) in a data-parallel round: gradients averaged over the ranks

    def losses(idx: torch.Tensor) -> torch.Tensor:  # (N,): every network on its rows of the batch of `idx`
        xb, yb = orders.batch(idx)
        with autocast(device, cfg.precision):
            out = net(xb)
        return F.cross_entropy(out.float().transpose(1, 2), yb, reduction="none").mean(1)

    model.train()
    step = Step(model, mask, cfg, losses, fast=fast, graph=orders.graphable and shard[1] == 1, log=log)  # masks it
    net = distributed.wrap(model)
    main = shard[0] == 0  # rank 0 alone writes the resume point, which restores every rank
    state = model.state_dict()  # parameters and buffers (BatchNorm statistics), all (N, ...)
    stop = EarlyStop(state, len(order_seeds))
    extra = (start, constant_lr, augment) + ((watch.key,) if watch else ()) + ((update.key(),) if update is not None else ())
    scratch = resume.point(resume_dir, label, digest(model, mask, cfg, order_seeds, n_train, extra)) if resume_dir else None
    last_save, since = time.monotonic(), 0
    # a progress line every log_every iterations, and at least every 10% of the round and every 30 s
    every, last_line = min(cfg.log_every, -(-cfg.iterations // 10)), time.monotonic()
    for _ in range(start):  # replay the data orders (and augmentation draws) of iterations 1..k
        orders.skip()
    scheduled = constant_lr is None and (cfg.warmup > 0 or len(cfg.lr_drops) > 0)
    if constant_lr is not None:
        set_lr(step.opt, constant_lr)
    resumed = (_load_resume(scratch, model, step, orders, stop, label, log, device, watch)
               if scratch and scratch.is_file() else None)
    first = start + 1 if resumed is None else resumed + 1
    clock.add("start-up", time.perf_counter() - entered)
    t0 = time.perf_counter()  # the progress line's rate: the iterations this process ran, from here

    for it in range(first, cfg.iterations + 1):
        t = time.perf_counter()
        step(orders.next_batch(), lr_at(it, cfg) if scheduled else None)
        if update is not None:
            update(it, step)
        clock.add("steps", time.perf_counter() - t)
        since += 1
        if it % cfg.eval_every == 0 or it == cfg.iterations:
            with clock("validation"):
                _validate(model, step, data.val, cfg.precision, shard, stop, state, it, label, watch)
            if main and scratch and time.monotonic() - last_save >= checkpoint_seconds and it < cfg.iterations:
                with clock("saving"):
                    _save_resume(scratch, it, state, step, orders, stop, watch)
                last_save = time.monotonic()
        if every and (it % every == 0 or it == cfg.iterations or time.monotonic() - last_line >= PROGRESS_SECONDS):
            step.sync()  # (so that a non-finite loss names the first non-finite weight)
            _check_finite(model, step.running, it, label)
            _progress(log, label, it, cfg.iterations, (it - first + 1) / (time.perf_counter() - t0), step, stop, since)
            since, last_line = 0, time.monotonic()

    with clock("test"):
        step.sync()
        result = _test(model, step, stop, state, data.test, cfg.precision, shard)
    if scratch and main:
        scratch.unlink(missing_ok=True)
    return result


def _validate(model: nn.Module, step: Step, val: Split, precision: str, shard, stop: EarlyStop, state: dict, it: int,
              label: str, watch) -> None:
    """The evaluation of iteration `it`: validation loss and accuracy of every network, the early-stop copy, `watch`."""
    step.sync()  # (sparse layers: the model's weights hold the current values from here)
    _check_finite(model, step.running, it, label)
    with step.sparse_forward():  # (sparse layers: evaluated sparse, on the kept values)
        val_loss, val_acc = evaluate(model, val, precision=precision, shard=shard)
    val_loss, val_acc = val_loss.cpu(), val_acc.cpu()
    _check_finite(model, val_loss, it, label)
    stop.update(it, state, val_loss, val_acc)
    if watch:
        watch(it, state)


def _progress(log, label: str, it: int, iterations: int, rate: float, step: Step, stop: EarlyStop, since: int) -> None:
    """One progress line (the mean training loss of the `since` steps since the last one, which it resets)."""
    last = stop.curve[-1]["val_acc"] if stop.curve else [float("nan")]
    log(f"[{label}] it {it:>6}/{iterations}  loss {float(step.running.mean()) / since:.4f}"
        f"  val_acc {100 * sum(last) / len(last):5.2f}%  {rate:6.0f} it/s"
        f" ({rate * len(step.running):.0f} net-it/s)  ETA {(iterations - it) / rate:5.0f}s")
    step.running.zero_()


def _test(model: nn.Module, step: Step, stop: EarlyStop, state: dict, test: Split, precision: str, shard) -> Result:
    """The results of a finished training: test accuracy of the final weights and of each network's early-stop
    weights (the model keeps its final weights; the step's sparse layers run sparse)."""
    with step.sparse_forward():
        _, final_acc = evaluate(model, test, precision=precision, shard=shard)
    with torch.no_grad():
        final = {k: v.clone() for k, v in state.items()}
        model.load_state_dict(stop.best)
        step.load()  # (sparse layers: the early-stop weights' kept values)
        with step.sparse_forward():
            _, es_acc = evaluate(model, test, precision=precision, shard=shard)
        model.load_state_dict(final)
        step.load()
    return Result(early_stop_iteration=stop.it.tolist(), test_accuracy=es_acc.tolist(),
                  final_test_accuracy=final_acc.tolist(), min_val_loss=stop.loss.tolist(), curve=stop.curve)
