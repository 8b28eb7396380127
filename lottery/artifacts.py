"""Output files: written atomically, and artifacts (tensors + metadata) loaded with checks that name the file."""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .config import LotteryError, dvc_stage

# errno of a write that failed for want of room (or of a writable disk) -> ArtifactError naming the file
FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}


class ArtifactError(LotteryError, RuntimeError):
    """An artifact is missing, truncated or corrupt, does not match what the stage expects, or cannot be written."""


class _Count:
    """A write-only sink that counts bytes: the size an output needs."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b) -> int:
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


def _full(e: BaseException) -> OSError | None:
    """The OSError of a full (or read-only) disk behind `e`, if any (torch.save wraps it in a RuntimeError)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in FULL:
            return e
        e = e.__cause__ or e.__context__
    return None


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """`write(f)` into a temporary file in `path`'s folder, fsync, then rename: readers never see half a file.

    On a full disk (or quota, or read-only file system) nothing is left behind and ArtifactError names
    the file and the bytes it needs (counted by calling `write` again on a counting sink).
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        err = _full(e)
        if err is None:
            raise
        if err.errno == errno.EROFS:
            raise ArtifactError(f"{path}: {FULL[err.errno]}") from None
        need = _Count()
        write(need)
        raise ArtifactError(f"{path}: {FULL[err.errno]} ({need.n} bytes needed)") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through `atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (a sparse tensor's: its indices and values)."""
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)} {t.layout}".encode())
    for part in (t._indices(), t._values()) if t.is_sparse else (t,):
        h.update(part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _compact(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor that owns exactly its bytes: torch.save writes a view's whole storage (e.g. a full stack)."""
    t = t.detach().cpu()
    if t.is_sparse:
        return t.coalesce()
    t = t.contiguous()
    return t if t.untyped_storage().nbytes() == t.nbytes else t.clone()


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Tensors plus metadata (kind, model, round, seeds, params digest, ...), every tensor's shape and digest."""
    tensors = {k: _compact(v) for k, v in tensors.items()}
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    digests = {k: digest(v) for k, v in tensors.items()}
    atomic_save({"meta": {**meta, "shapes": shapes, "digests": digests}, "tensors": tensors}, path)


def load(path: Path, kind: str, expect: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load an artifact written by `save`, checking its digests, its kind and the metadata in `expect`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; rerun the stage that writes it (`dvc repro`)")
    try:
        with warnings.catch_warnings():  # a ticket's sparse tensors are still validated; only torch's note is quiet
            warnings.filterwarnings("ignore", "Validating sparse tensor invariants", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
        meta, tensors = obj["meta"], obj["tensors"]
        shapes, digests = meta.pop("shapes", None), meta.pop("digests", None)
        if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise TypeError("a value under 'tensors' is not a tensor")
    except Exception as e:
        raise ArtifactError(f"{path}: corrupt or truncated ({type(e).__name__}: {e}); `dvc repro -f` the stage that writes it") from None
    if not isinstance(digests, dict):
        raise ArtifactError(f"{path}: records no tensor digests (written by an older version?); "
                            "`dvc repro -f` the stage that writes it")
    if shapes != {k: list(v.shape) for k, v in tensors.items()}:
        raise ArtifactError(f"{path}: tensors do not match the shapes recorded in its metadata")
    for k, v in tensors.items():
        if digests.get(k) != digest(v):
            raise ArtifactError(f"{path}: tensor '{k}' does not match its recorded digest (corrupt); "
                                "`dvc repro -f` the stage that writes it")
    if meta.get("kind") != kind:
        raise ArtifactError(f"{path}: holds a {meta.get('kind')!r} artifact, expected {kind!r}")
    for key, want in (expect or {}).items():
        if key == "params" and meta.get(key) != want:
            stage = "prepare" if kind == "prepared" else dvc_stage(str(meta.get("round")))
            raise ArtifactError(f"{path}: written with other values of stage '{stage}'s params than params.yaml's "
                                f"(params digest {meta.get(key)!r}, expected {want!r}); `dvc repro` brings it up to date")
        if meta.get(key) != want:
            raise ArtifactError(f"{path}: metadata {key}={meta.get(key)!r} does not match this run's {want!r}")
    return tensors, meta


def check_like(path: Path, tensors: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Same keys and shapes as `reference` (e.g. a mask against its model's weights)."""
    if set(tensors) != set(reference):
        raise ArtifactError(f"{path}: keys {sorted(tensors)} do not match the expected {sorted(reference)}")
    for k, v in tensors.items():
        if v.shape != reference[k].shape:
            raise ArtifactError(f"{path}: '{k}' has shape {tuple(v.shape)}, expected {tuple(reference[k].shape)}")
