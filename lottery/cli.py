"""Shared entry point of the stage scripts: clear one-line errors and a non-zero exit, and the
process-wide runtime settings of the stages that train."""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable


def run(main: Callable[[], None]) -> None:
    from .artifacts import ArtifactError
    from .config import ConfigError
    from .data import DataError
    from .pruning import PruningError
    from .training import NumericalError

    try:
        main()
    except (ConfigError, ArtifactError, DataError, NumericalError, PruningError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


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
    import torch

    from .training import resolve_device

    dev = resolve_device(device, precision)
    keep_freed_memory()
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)  # max-pool backward has no deterministic CUDA kernel
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    return dev
