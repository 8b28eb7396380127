"""Checkpoint and mask files: written atomically, loaded with checks that name the file."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch


class ArtifactError(RuntimeError):
    """An artifact is missing, truncated, corrupt or does not match what the stage expects."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Tensors plus metadata (kind, model, round, seeds, params digest, ...) and every tensor's shape."""
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    atomic_save({"meta": {**meta, "shapes": shapes},
                 "tensors": {k: v.detach().cpu().contiguous() for k, v in tensors.items()}}, path)


def load(path: Path, kind: str, expect: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load an artifact written by `save`, checking its kind and the metadata in `expect`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; rerun the stage that writes it (`dvc repro`)")
    try:
        with warnings.catch_warnings():  # a ticket's sparse tensors are still validated; only torch's note is quiet
            warnings.filterwarnings("ignore", "Validating sparse tensor invariants", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
        meta, tensors = obj["meta"], obj["tensors"]
    except Exception as e:
        raise ArtifactError(f"{path}: corrupt or truncated ({type(e).__name__}: {e}); `dvc repro -f` the stage that writes it") from None
    shapes = meta.pop("shapes", None)
    if shapes is not None and shapes != {k: list(v.shape) for k, v in tensors.items()}:
        raise ArtifactError(f"{path}: tensors do not match the shapes recorded in its metadata")
    if meta.get("kind") != kind:
        raise ArtifactError(f"{path}: holds a {meta.get('kind')!r} artifact, expected {kind!r}")
    for key, want in (expect or {}).items():
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
