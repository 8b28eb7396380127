"""The raw files of a dataset: where they are and what they hold. Torch-free: the `check` stage
imports it on every repro (an image folder's manifest comes from `lottery.folder`, which imports torch).

`describe(dataset, root)` is what `check` writes to data/raw.json: each file `prepare` will read
(path, size, sha256), found by `locate` (the local copy under data.root first, then the system
copy, else a torchvision download), or for the generated mnist1d the generator's version and
arguments. `read_record` gives it back to `prepare`, after checking that every listed file is
still the one recorded.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib import metadata
from pathlib import Path

from .config import FOLDER_DATASETS, ConfigError, LotteryError, is_import_path

# dataset -> (folder under data.root, system folder, torchvision class)
IDX_DATASETS = {
    "fashion-mnist": ("fashion-mnist", "/usr/share/datasets/fashion-mnist", "FashionMNIST"),
    "mnist": ("mnist", "/usr/share/datasets/mnist", "MNIST"),
    "kmnist": ("kmnist", "/usr/share/datasets/kmnist", "KMNIST"),
}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CIFAR_DIR = "cifar-10-batches-py"  # CIFAR-10's python format: data_batch_1..5, test_batch (pickles)
CIFAR_FILES = {name: name for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
CIFAR100_DIR = "cifar-100-python"  # CIFAR-100's python format: train, test (pickles, fine_labels)
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}  # SVHN's cropped digits, MATLAB files


class DataError(LotteryError, RuntimeError):
    """A raw or prepared data file is missing, truncated or malformed."""


def _sources(dataset: str, root: Path) -> tuple[list[Path], dict[str, str], tuple[str, ...], str]:
    """Candidate folders in order of precedence, role -> file name, accepted suffixes, torchvision class."""
    if dataset == "cifar10":
        return [root / "cifar10" / CIFAR_DIR, root / CIFAR_DIR], CIFAR_FILES, ("",), "CIFAR10"
    if dataset == "cifar100":
        return [root / "cifar100" / CIFAR100_DIR, root / CIFAR100_DIR], {"train": "train", "test": "test"}, ("",), "CIFAR100"
    if dataset == "svhn":
        return [root / "svhn", root], SVHN_FILES, ("",), "SVHN"
    sub, system, tv_class = IDX_DATASETS[dataset]
    return [root / sub, Path(system), root / tv_class / "raw"], IDX_FILES, ("", ".gz"), tv_class


def _complete(folders: list[Path], files: dict[str, str], suffixes: tuple[str, ...]) -> dict[str, Path] | None:
    """role -> path in the first folder that holds every file."""
    for folder in folders:
        found = {role: next((folder / (name + s) for s in suffixes if (folder / (name + s)).is_file()), None)
                 for role, name in files.items()}
        if all(found.values()):
            return found
    return None


def locate(dataset: str, root: str | Path) -> dict[str, Path]:
    """role -> the file `prepare` reads; downloads with torchvision only when no folder holds them all."""
    root = Path(root)
    folders, files, suffixes, tv_class = _sources(dataset, root)
    found = _complete(folders, files, suffixes)
    if found is not None:
        return found
    import torchvision  # only when nothing is on disk (imports torch)

    where = ", ".join(map(str, folders))
    print(f"[check] {dataset}: no local copy in {where}; downloading with torchvision", flush=True)
    try:
        for train in (True, False):
            split = {"split": "train" if train else "test"} if tv_class == "SVHN" else {"train": train}
            getattr(torchvision.datasets, tv_class)(str(root), download=True, **split)
    except Exception as e:  # network errors come in many types
        raise DataError(f"{dataset}: not found locally ({where}) and download failed: {e}") from None
    found = _complete(folders, files, suffixes)
    if found is None:
        raise DataError(f"{dataset}: downloaded, but the files are still not in any of {where}")
    return found


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mnist1d_args() -> dict:
    try:
        from mnist1d.data import get_dataset_args
    except ImportError as e:
        raise DataError(f"mnist1d: the generator package is not installed ({e})") from None
    return dict(vars(get_dataset_args()))


def describe(dataset: str, root: str | Path) -> dict:
    """data/raw.json: the files `prepare` reads with size and sha256, mnist1d's generator and its arguments, or an
    image folder's manifest (`lottery.folder.describe`: relative paths and sizes digested, counts, classes)."""
    if is_import_path(dataset):  # your own loader: its source files, like your own network's
        return {"dataset": dataset, "code": describe_code(dataset, "data.dataset")["files"]}
    if dataset in FOLDER_DATASETS:  # a manifest of the image files (lottery.folder imports torch)
        from .folder import describe as manifest

        return manifest(dataset, root)
    if dataset == "mnist1d":
        args = _mnist1d_args()
        return {"dataset": dataset, "generator": {"package": "mnist1d", "version": metadata.version("mnist1d"), "args": args}}
    files = {role: {"path": str(p), "size": p.stat().st_size, "sha256": sha256(p)}
             for role, p in locate(dataset, root).items()}
    return {"dataset": dataset, "files": files}


def read_record(path: str | Path, dataset: str) -> dict:
    """data/raw.json for `prepare`: it must describe `dataset`, and every file must still match its digest."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run `dvc repro` (the check stage writes it)") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e}); run `dvc repro`") from None
    if not isinstance(record, dict) or record.get("dataset") != dataset:
        got = record.get("dataset") if isinstance(record, dict) else record
        raise DataError(f"{path}: describes {got!r}, not data.dataset {dataset!r}; run `dvc repro`")
    for f in record.get("files", {}).values():
        p = Path(f["path"])
        if not p.is_file() or p.stat().st_size != f["size"] or sha256(p) != f["sha256"]:
            raise DataError(f"{p}: changed since {path} recorded it (size or sha256 differ); run `dvc repro`")
    generator = record.get("generator")
    if generator and metadata.version(generator["package"]) != generator["version"]:
        raise DataError(f"{path}: recorded {generator['package']} {generator['version']}, installed "
                        f"{metadata.version(generator['package'])}; run `dvc repro`")
    return record


def describe_code(name: str, key: str = "model.name") -> dict:
    """data/code.json: the source files of your own network (model.name 'package.module:factory'), digested.

    Found without importing the module (importlib.util.find_spec imports only its parent packages):
    the module's file, and every .py file beside it when it lives in a package (the helpers it may
    import). The stages that build the network depend on this record, so editing those files reruns
    them (and DVC's run-cache never restores results of the old code). Registry networks: no files.
    """
    files: dict[str, dict] = {}
    if is_import_path(name):
        module = name.partition(":")[0]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as e:  # a parent package that does not import
            raise ConfigError(f"{key}: {name!r}: module {module!r} is not found ({type(e).__name__}: {e})") from None
        if spec is None:
            raise ConfigError(f"{key}: {name!r}: module {module!r} is not found (no source file on the Python path; "
                              "run from the folder that holds the package, or install it)")
        if not spec.origin or not Path(spec.origin).is_file():  # a module of Python itself: os, sys, math
            what = "network factory (a callable returning a torch.nn.Module)" if key == "model.name" else \
                "dataset loader (a callable returning x, y, x_test, y_test or a (train, test) pair)"
            raise ConfigError(f"{key}: {name!r}: module {module!r} exists but is part of Python itself "
                              f"({spec.origin or 'no file'}), so {name.partition(':')[2]!r} is not a {what} of "
                              "your own source file")
        origin = Path(spec.origin)
        paths = sorted(origin.parent.glob("*.py")) if "." in module or spec.submodule_search_locations else [origin]
        files = {_shown(p): {"size": p.stat().st_size, "sha256": sha256(p)} for p in paths}
    return {key: name, "files": files}


def _shown(path: Path) -> str:
    """A path relative to the working directory when inside it (records stay the same across checkouts)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)
