"""Data-parallel rounds: one round trained by `train.world_size` processes together (DistributedDataParallel).

`launch(train_cfg, fn, *args)` runs `fn(*args)` once per rank (gloo on CPU, NCCL on CUDA): locally as
`world_size` processes of this machine (torch.multiprocessing, spawned), or with `train.nodes` > 1 through
Ray Train's `TorchTrainer` on the Ray cluster at `train.address`. World size 1 calls `fn` in this process.

Inside `fn`, the library reads the process group through this module only: `rank_world()`, `is_main()`
(rank 0 alone logs and writes artifacts and resume points), `wrap(model)` (DDP: gradients averaged over the
ranks during backward), `all_reduce_(t)` (sums of evaluation) and `sync_buffers(model)` (rank 0's BatchNorm
statistics before an evaluation). `train.batch_size` stays the global batch: every rank draws the same data
orders and takes its rows (`lottery.data.Orders`), so results do not depend on the world size beyond the
order of float sums (BatchNorm normalises each rank's rows, as DDP without SyncBatchNorm does).

A rank that fails stops the others: its project error is raised again here in one line; a rank killed by
a signal is named, and the round's last resume point is kept for the next `dvc repro`.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
import warnings
from functools import partial
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError, LotteryError, TrainConfig
from .runtime import configure_runtime

POLL_SECONDS = 0.2  # how often the launcher looks at its ranks


class RankError(LotteryError, RuntimeError):
    """A rank of a data-parallel round failed or was killed."""


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a data-parallel round."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def wrap(model: nn.Module) -> nn.Module:
    """The module the training step calls: `model` itself, or DistributedDataParallel(model) in a group."""
    if rank_world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # A stacked bias (N, 1, out) has two equally contiguous stride layouts; DDP notes the other one on every step
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    dev = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the ranks, in place (nothing outside a group)."""
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics, updated on each rank's own rows)."""
    if rank_world()[1] > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


def backend(t: TrainConfig, device: torch.device) -> str:
    return ("nccl" if device.type == "cuda" else "gloo") if t.backend == "auto" else t.backend


def check(t: TrainConfig, device: torch.device) -> None:
    """What must hold before a data-parallel round starts, each in one line naming the key."""
    if t.world_size == 1:
        return
    b = backend(t, device)
    if b == "nccl" and device.type != "cuda":
        raise ConfigError(f"train.backend: 'nccl' is not allowed with train.device={device.type} (NCCL needs CUDA); "
                          "use gloo or auto")
    if not dist.is_available() or (b == "nccl" and not dist.is_nccl_available()):
        raise ConfigError(f"train.backend: {b!r} is not available in this torch build")
    per_node = t.world_size // t.nodes
    if device.type == "cuda" and per_node > torch.cuda.device_count():
        raise ConfigError(f"train.world_size: {t.world_size} processes on {t.nodes} node(s) need {per_node} GPUs per "
                          f"node; this machine has {torch.cuda.device_count()}")
    cores = _cores()
    if device.type == "cpu" and t.nodes == 1 and t.world_size > cores:
        raise ConfigError(f"train.world_size: {t.world_size} CPU processes on a machine with {cores} cores "
                          "(at most one process per core)")
    if t.nodes > 1:
        try:
            import ray.train  # noqa: F401
        except ImportError:
            raise ConfigError(f"train.nodes: {t.nodes} needs Ray Train: pip install 'lottery[cluster]'") from None


def launch(t: TrainConfig, device: torch.device, fn: Callable, *args, **kwargs) -> None:
    """Run `fn(*args, **kwargs)` on every rank of a round of `t.world_size` processes (each configured by
    `configure_runtime` first, as the stage was); `fn` itself, in this process, without a group."""
    check(t, device)
    if t.world_size == 1:
        fn(*args, **kwargs)
        return
    fn = partial(fn, *args, **kwargs)
    if t.nodes > 1:
        _launch_ray(t, device, fn)
    else:
        _launch_local(t, device, fn)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, init: str, t: TrainConfig, b: str, threads: int, errors, fn: Callable) -> None:
    """One rank: join the group, run `fn`, leave. A project error goes to the launcher (exit 2)."""
    if rank:  # one voice: rank 0 logs (errors and tracebacks still reach stderr)
        sys.stdout = open(os.devnull, "w")
    torch.set_num_threads(threads)
    try:
        configure_runtime(t.device, t.precision)
        if b == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(b, init_method=init, rank=rank, world_size=world)
        fn()
        dist.destroy_process_group()
    except LotteryError as e:
        errors.put((rank, f"{e}"))
        sys.exit(2)
    except BaseException:  # the launcher prints the traceback of the rank that failed first, not the others'
        errors.put((rank, traceback.format_exc().strip()))
        sys.exit(1)


def _launch_local(t: TrainConfig, device: torch.device, fn: Callable) -> None:
    ctx = torch.multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    init, b = f"tcp://127.0.0.1:{_free_port()}", backend(t, device)
    procs = [ctx.Process(target=_rank_main, args=(r, t.world_size, init, t, b, max(1, _cores() // t.world_size), errors, fn),
                         name=f"rank{r}") for r in range(t.world_size)]
    for p in procs:
        p.start()
    try:
        while any(p.exitcode is None for p in procs):
            failed = [p for p in procs if p.exitcode not in (None, 0)]
            if failed:
                break
            time.sleep(POLL_SECONDS)
        failed = [(r, p) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
    finally:
        for p in procs:  # the others wait on the failed rank forever: stop them
            if p.exitcode is None:
                p.terminate()
        for p in procs:
            p.join(10)
            if p.exitcode is None:
                p.kill()
                p.join()
    if not failed:
        return
    said = {}
    while not errors.empty():
        r, msg = errors.get()
        said.setdefault(r, msg)
    # the cause first: a rank killed by a signal, then a project error; the others fail on the broken group
    r, p = min(failed, key=lambda rp: (rp[1].exitcode >= 0, rp[1].exitcode != 2))
    if p.exitcode == 2 and r in said:
        raise RankError(said[r])
    if p.exitcode == 1 and r in said:
        print(f"[rank {r}] {said[r]}", file=sys.stderr)
        raise RankError(f"rank {r} of train.world_size={t.world_size} failed: {said[r].splitlines()[-1]}")
    how = (f"was killed by {signal.Signals(-p.exitcode).name}" if p.exitcode < 0 else f"exited with {p.exitcode}")
    raise RankError(f"rank {r} of train.world_size={t.world_size} (pid {p.pid}) {how}; the other ranks were stopped "
                    "and the round's last resume point is kept: `dvc repro` resumes from it")


def _ray_rank_main(config: dict) -> None:
    """One rank under Ray Train (which has joined the group): in the driver's folder, as `_rank_main` runs."""
    import ray.train

    t = config["t"]
    os.chdir(config["cwd"])
    if ray.train.get_context().get_world_rank():
        sys.stdout = open(os.devnull, "w")
    torch.set_num_threads(max(1, _cores() // max(1, t.world_size // t.nodes)))
    configure_runtime(t.device, t.precision)
    config["fn"]()


def _launch_ray(t: TrainConfig, device: torch.device, fn: Callable) -> None:
    """The ranks as Ray Train workers spread over `t.nodes` nodes of the cluster at `t.address`. Every node reads
    the round's inputs and rank 0 writes its outputs by the driver's paths: the workspace must be on a filesystem
    all nodes share (as for torchrun across nodes)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .ray_connect import ClusterError, connect

    try:  # (rank 0's log lines reach the stage's output)
        connect(t.address, log_to_driver=True)
    except ClusterError as e:
        raise ConfigError(f"train.address: {e}") from None
    try:
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
        if len(nodes) < t.nodes:
            raise ConfigError(f"train.nodes: {t.nodes} nodes asked, the Ray cluster at {t.address!r} has "
                              f"{len(nodes)} alive with a CPU")
        scratch = os.path.abspath(os.path.join(".dvc", "tmp", "ray-train"))
        trainer = TorchTrainer(
            _ray_rank_main, train_loop_config={"fn": fn, "t": t, "cwd": os.getcwd()},
            torch_config=TorchConfig(backend=backend(t, device)),
            scaling_config=ScalingConfig(num_workers=t.world_size, use_gpu=device.type == "cuda",
                                         resources_per_worker={"CPU": 1}, placement_strategy="SPREAD"),
            run_config=RunConfig(storage_path=scratch, failure_config=FailureConfig(max_failures=0)))
        try:
            trainer.fit()
        except Exception as e:  # Ray Train wraps a rank's error: keep its last line
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise RankError(f"a rank of train.world_size={t.world_size} on {t.nodes} nodes failed: "
                            f"{str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__}; "
                            "`dvc repro` resumes from the round's last resume point") from None
    finally:
        ray.shutdown()
