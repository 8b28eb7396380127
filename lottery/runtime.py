"""The device a stage trains on and the process-wide settings that go with it, applied once at
stage start (`configure_runtime`), never from inside a library function; `one_thread` alone changes
one for a block and restores it."""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager

import torch

from .config import ConfigError


def resolve_device(name: str, precision: str = "float32") -> torch.device:
    """cpu, cuda or auto, checked against this machine and `precision` (tf32 needs CUDA).

    Changes nothing in the process: `configure_runtime` applies the settings a device needs."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' is not allowed here (no CUDA device is visible); use cpu or auto")
    if name != "cuda" and precision == "tf32":
        raise ConfigError(f"train.precision: 'tf32' is not allowed on {name} (TF32 is a CUDA tensor-core mode); "
                          "use float32 or bfloat16")
    return torch.device(name)


@contextmanager
def one_thread():
    """Run the block on one intra-op thread (torch.set_num_threads(1)), then restore the count.

    For many small CPU ops, such as pruning-at-init scoring (SynFlow: 100 batch-1 forward/backward
    passes and selections over LeNet's 266K weights per network): on a CPU shared with other
    processes, each op's threads wait for a descheduled sibling, and one thread is several times
    faster, with identical results (measured: benchmarks/results/pai-cpu/README.md).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def configure_runtime(device: str, precision: str = "float32"):
    """Process-wide settings for training on `device` (train.device), applied once at stage start.

    Always `keep_freed_memory`. On CUDA, deterministic kernels (same bytes per rerun), and TF32
    tensor cores only when `precision` is tf32 (float32 means float32). Returns the device;
    raises ConfigError as `lottery.training.resolve_device` does, before changing anything.
    """
    dev = resolve_device(device, precision)
    keep_freed_memory()
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)  # max-pool backward has no deterministic CUDA kernel
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    return dev
