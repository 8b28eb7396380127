"""Dataset registry. Everything is held in memory as tensors (no per-sample Dataset work).

`prepare(cfg)` reads the raw dataset, carves the validation split out of the training
set by seed and returns a dict of tensors that `stages/prepare.py` saves once;
`load_prepared(path)` gives the normalised float tensors back to the training loop.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .config import Config, ConfigError

# (folder under data.root, system folder, torchvision class, IDX file stem prefix)
IDX_DATASETS = {
    "fashion-mnist": ("fashion-mnist", "/usr/share/datasets/fashion-mnist", "FashionMNIST"),
    "mnist": ("mnist", "/usr/share/datasets/mnist", "MNIST"),
}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "mnist1d": (40,), "cifar10": (3, 32, 32)}
CIFAR_DIR = "cifar-10-batches-py"  # CIFAR-10's python format: data_batch_1..5, test_batch (pickles)


class DataError(RuntimeError):
    """A raw or prepared data file is missing, truncated or malformed."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    start, count = 4 + 4 * ndim, int(np.prod(dims))
    if len(raw) != start + count:
        raise DataError(f"{path}: expected {count} values for shape {dims}, found {len(raw) - start}")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims).copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_folder(name: str, root: Path) -> Path:
    """First folder holding all four IDX files: data.root/<name>, the system folder, else download."""
    sub, system, tv_class = IDX_DATASETS[name]
    candidates = [root / sub, Path(system), root / tv_class / "raw"]
    for folder in candidates:
        if all(_find_idx(folder, stem) for stem in IDX_FILES.values()):
            return folder
    import torchvision  # only when nothing is on disk

    print(f"[prepare] {name}: no local copy in {', '.join(map(str, candidates[:2]))}; downloading with torchvision")
    try:
        for train in (True, False):
            getattr(torchvision.datasets, tv_class)(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(
            f"{name}: not found locally ({', '.join(map(str, candidates))}) and download failed: {e}"
        ) from None
    return candidates[2]


def _load_idx_dataset(name: str, root: Path) -> dict[str, np.ndarray]:
    folder = idx_folder(name, root)
    arrays = {key: read_idx(_find_idx(folder, stem)) for key, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise DataError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match 28x28 IDX")
    print(f"[prepare] {name}: read {len(arrays['train_y'])} train / {len(arrays['test_y'])} test images from {folder}")
    return {
        "x": arrays["train_x"][:, None],
        "y": arrays["train_y"],
        "x_test": arrays["test_x"][:, None],
        "y_test": arrays["test_y"],
    }


def _load_mnist1d() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # generated offline, seeded by the package's defaults
    return {"x": d["x"].astype(np.float32), "y": d["y"], "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"]}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pickle

    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _load_cifar10(root: Path) -> dict[str, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    candidates = [root / "cifar10" / CIFAR_DIR, root / CIFAR_DIR]
    folder = next((c for c in candidates if all((c / n).is_file() for n in names)), None)
    if folder is None:
        import torchvision

        print(f"[prepare] cifar10: no local copy in {', '.join(map(str, candidates))}; downloading with torchvision")
        try:
            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        except Exception as e:
            raise DataError(f"cifar10: not found locally ({', '.join(map(str, candidates))}) and download failed: {e}") from None
        folder = root / CIFAR_DIR
    train = [_read_cifar_batch(folder / n) for n in names[:5]]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    print(f"[prepare] cifar10: read {sum(len(y) for _, y in train)} train / {len(y_test)} test images from {folder}")
    return {"x": np.concatenate([x for x, _ in train]), "y": np.concatenate([y for _, y in train]),
            "x_test": x_test, "y_test": y_test}


def prepare(cfg: Config) -> dict[str, torch.Tensor]:
    """Raw data -> {x_train, y_train, x_val, y_val, x_test, y_test, mean, std} (unnormalised x)."""
    d = cfg.data
    if d.dataset == "mnist1d":
        raw = _load_mnist1d()
    elif d.dataset == "cifar10":
        raw = _load_cifar10(Path(d.root))
    else:
        raw = _load_idx_dataset(d.dataset, Path(d.root))
    n = len(raw["y"])
    if d.validation >= n:
        raise ConfigError(f"data.validation: {d.validation} is not allowed (must be < the {n} training examples of {d.dataset})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).numpy()
    val, train = perm[: d.validation], np.sort(perm[d.validation :])
    if d.train_subset:
        train = train[: d.train_subset]
    x = torch.from_numpy(np.ascontiguousarray(raw["x"]))
    y = torch.from_numpy(raw["y"].astype(np.int64))
    x_train = x[torch.from_numpy(train)]
    xf = x_train.float()
    dims = (0, 2, 3) if xf.ndim == 4 else tuple(range(xf.ndim))  # per channel for images
    return {
        "x_train": x_train, "y_train": y[torch.from_numpy(train)],
        "x_val": x[torch.from_numpy(val)], "y_val": y[torch.from_numpy(val)],
        "x_test": torch.from_numpy(np.ascontiguousarray(raw["x_test"])),
        "y_test": torch.from_numpy(raw["y_test"].astype(np.int64)),
        # per-dataset (per-channel) normalisation, from the training split only
        "mean": xf.mean(dim=dims, keepdim=True)[0], "std": xf.std(dim=dims, keepdim=True)[0],
    }


PREPARED = [f"{xy}_{split}" for split in ("train", "val", "test") for xy in "xy"] + ["mean", "std"]


def load_prepared(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Prepared tensors, normalised to float32 with the training split's mean and std."""
    from .artifacts import ArtifactError, load

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared data missing; run `dvc repro prepare`")
    try:
        raw, _ = load(path, "prepared")
    except ArtifactError as e:
        raise DataError(str(e)) from None
    _check_prepared(path, raw)
    out = {}
    for split in ("train", "val", "test"):
        x = (raw[f"x_{split}"].float() - raw["mean"]) / raw["std"]
        out[f"x_{split}"] = x.to(device)
        out[f"y_{split}"] = raw[f"y_{split}"].to(device)
    return out


def save_prepared(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """data/prepared.pt: an artifact of kind 'prepared' (every tensor's digest recorded)."""
    from .artifacts import save

    path = Path(path)
    _check_prepared(path, tensors)
    save(path, tensors, {"kind": "prepared"})


def _check_prepared(path: Path, t: dict[str, torch.Tensor]) -> None:
    """The keys, dtypes and shapes `load_prepared` relies on: labels int64 beside their examples, one example shape."""
    def bad(key: str, why: str) -> DataError:
        return DataError(f"{path}: prepared tensor '{key}' {why}; run `dvc repro -f prepare`")

    for key in PREPARED:
        if key not in t:
            raise bad(key, "is missing")
    example = t["x_train"].shape[1:]
    for split in ("train", "val", "test"):
        x, y = t[f"x_{split}"], t[f"y_{split}"]
        if (x.dtype != torch.uint8 and not x.is_floating_point()) or x.ndim < 2 or x.shape[1:] != example:
            raise bad(f"x_{split}", f"is {x.dtype} {tuple(x.shape)}: expected uint8 or float, examples {tuple(example)}")
        if y.dtype != torch.int64 or y.shape != x.shape[:1]:
            raise bad(f"y_{split}", f"is {y.dtype} {tuple(y.shape)}: expected int64, ({x.shape[0]},)")
    for key in ("mean", "std"):
        v = t[key]
        broadcasts = v.ndim <= len(example) and all(a in (1, b) for a, b in zip(v.shape[::-1], example[::-1]))
        if not v.is_floating_point() or not broadcasts:
            raise bad(key, f"is {v.dtype} {tuple(v.shape)}: expected float, broadcastable to {tuple(example)}")
