"""Dataset registry, and the data a round reads. Everything is held in memory as tensors (no per-sample Dataset work),
except image folders, streamed from their files (`lottery.folder`, same interface).

`prepare(cfg, record)` reads the raw files that `record` (data/raw.json, `lottery.raw`)
lists, carves the validation split out of the training set by seed and returns a dict of
tensors that `stages/prepare.py` saves once;
`load_prepared(path)` gives them back, normalised, as a `TensorData`: the one object training,
instability, the rounds and the scores of pruning at init read data through (see its docstring).
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import FOLDER_DATASETS, STAGE_PARAMS, Config, ConfigError, DataConfig, is_import_path
from .raw import DataError, describe

SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "kmnist": (1, 28, 28), "mnist1d": (40,),
          "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "svhn": (3, 32, 32)}
CLASSES = {name: 100 if name == "cifar100" else 10 for name in SHAPES}


def sized_by_data(dataset: str) -> bool:
    """Whether the classes and example shape are the prepared data's (your own loader, an image folder: see
    `TensorData.classes`, `example_shape`) rather than the tables above."""
    return is_import_path(dataset) or dataset in FOLDER_DATASETS


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


def _load_idx_dataset(name: str, files: dict[str, dict]) -> dict[str, np.ndarray]:
    arrays = {role: read_idx(Path(f["path"])) for role, f in files.items()}
    folder = Path(files["train_x"]["path"]).parent
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


def _load_mnist1d(args: dict) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    d = make_dataset(ObjectView(dict(args)))  # generated offline, seeded by the recorded arguments
    return {"x": d["x"].astype(np.float32), "y": d["y"], "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"]}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's python batches hold: dicts, lists, bytes, str, ints and numpy arrays
    (and numpy integers, as labels written from numpy have)."""

    GLOBALS = {(f"numpy{core}.multiarray", name) for core in (".core", "._core") for name in ("_reconstruct", "scalar")}
    GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # _codecs: bytes in protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.GLOBALS:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR-10 batch holds only dicts, lists, "
                                         "bytes, str, ints and numpy arrays")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, labels: bytes = b"labels", what: str = "CIFAR-10") -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[labels], dtype=np.int64)
    except Exception as e:  # a malformed pickle fails in many ways
        raise DataError(f"{path}: not a {what} python batch ({type(e).__name__}: {e})") from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _load_cifar10(files: dict[str, dict]) -> dict[str, np.ndarray]:
    batches = {role: _read_cifar_batch(Path(f["path"])) for role, f in files.items()}
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    x_test, y_test = batches["test_batch"]
    folder = Path(files["test_batch"]["path"]).parent
    print(f"[prepare] cifar10: read {sum(len(y) for _, y in train)} train / {len(y_test)} test images from {folder}")
    return {"x": np.concatenate([x for x, _ in train]), "y": np.concatenate([y for _, y in train]),
            "x_test": x_test, "y_test": y_test}


def _load_cifar100(files: dict[str, dict]) -> dict[str, np.ndarray]:
    """CIFAR-100's python format: `train` and `test` pickles, the 100 fine labels (read by the same unpickler)."""
    (x, y), (x_test, y_test) = (_read_cifar_batch(Path(files[s]["path"]), b"fine_labels", "CIFAR-100")
                                for s in ("train", "test"))
    print(f"[prepare] cifar100: read {len(y)} train / {len(y_test)} test images from {Path(files['test']['path']).parent}")
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat file: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0 -> (N, 3, 32, 32), labels 0-9."""
    from scipy.io import loadmat

    try:
        d = loadmat(path)
        x, y = np.asarray(d["X"], dtype=np.uint8), np.asarray(d["y"], dtype=np.int64).reshape(-1)
    except Exception as e:  # not a MATLAB file, or keys missing
        raise DataError(f"{path}: not an SVHN .mat file ({type(e).__name__}: {e})") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DataError(f"{path}: images {x.shape} and labels {y.shape} do not match SVHN's (32, 32, 3, N) and (N, 1)")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: labels must be 1-10 (10 = digit 0), found {y.min()}..{y.max()}")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y % 10


def _load_svhn(files: dict[str, dict]) -> dict[str, np.ndarray]:
    (x, y), (x_test, y_test) = (_read_svhn(Path(files[s]["path"])) for s in ("train", "test"))
    print(f"[prepare] svhn: read {len(y)} train / {len(y_test)} test images from {Path(files['test']['path']).parent}")
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def _load_user(name: str) -> dict[str, np.ndarray]:
    """Your own loader (data.dataset 'package.module:loader'): x, y, x_test, y_test, or a (train, test) pair of
    map-style datasets of (tensor, int) items; checked by `check_raw` like every dataset."""
    from .generic import load_factory

    loader = load_factory(name, "data.dataset")
    try:
        out = tuple(loader())
    except Exception as e:
        raise ConfigError(f"data.dataset: {name}() raised {type(e).__name__}: {e}") from e
    if len(out) == 2:  # map-style datasets: items (x, label)
        out = tuple(v for ds in out for v in (torch.stack([torch.as_tensor(ds[i][0]) for i in range(len(ds))]),
                                               torch.tensor([ds[i][1] for i in range(len(ds))])))
    if len(out) != 4:
        raise ConfigError(f"data.dataset: {name}() returned {len(out)} values, expected x, y, x_test, y_test "
                          "or a (train, test) pair of datasets")
    raw = dict(zip(["x", "y", "x_test", "y_test"], (np.asarray(v.numpy() if torch.is_tensor(v) else v) for v in out)))
    if all(np.issubdtype(raw[k].dtype, np.number) for k in ("x", "x_test")) and \
            (raw["x"].dtype != np.uint8 or raw["x_test"].dtype != np.uint8):
        raw["x"], raw["x_test"] = raw["x"].astype(np.float32), raw["x_test"].astype(np.float32)
    return raw


def check_raw(name: str, raw: dict[str, np.ndarray]) -> None:
    """What every dataset's examples and labels must be before the split, built-in or yours, in one line naming
    `data.dataset` and the split: one label per example, integer labels >= 0, numeric finite inputs of one
    example shape, and no test label the training set lacks (it would silently add a class to the network)."""
    def bad(split: str, why: str) -> DataError:
        return DataError(f"data.dataset: {name}: {split} split: {why}")

    for split, x, y in (("train", raw["x"], raw["y"]), ("test", raw["x_test"], raw["y_test"])):
        if y.ndim != 1 or len(x) != len(y):
            raise bad(split, f"{len(x)} examples but labels of shape {y.shape}: expected one label per example")
        if not np.issubdtype(y.dtype, np.integer):
            raise bad(split, f"labels are {y.dtype}, expected integers")
        if len(y) and y.min() < 0:
            raise bad(split, f"label {int(y.min())} is negative (labels are 0..C-1)")
        if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
            raise bad(split, f"examples are {x.dtype} {x.shape}, expected numbers, one example per row")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            where = np.argwhere(~np.isfinite(x))[0]
            raise bad(split, f"example {where[0]} holds {x[tuple(where)]} (non-finite inputs at "
                             f"{int((~np.isfinite(x)).sum())} positions)")
    if raw["x"].shape[1:] != raw["x_test"].shape[1:]:
        raise bad("test", f"examples of shape {raw['x_test'].shape[1:]}, the training split's are {raw['x'].shape[1:]}")
    if not len(raw["y"]):
        raise bad("train", "no examples")
    unseen = sorted(set(np.unique(raw["y_test"]).tolist()) - set(np.unique(raw["y"]).tolist()))
    if unseen:
        raise bad("test", f"label {unseen[0]} does not occur in the training split "
                          f"({len(unseen)} such label(s); training labels {int(raw['y'].min())}..{int(raw['y'].max())})")
    if name in CLASSES and max(int(raw["y"].max()), int(raw["y_test"].max(initial=0))) >= CLASSES[name]:
        raise bad("train", f"label {int(raw['y'].max())} is out of range for {CLASSES[name]} classes")


def prepare(cfg: Config, record: dict | None = None) -> dict[str, torch.Tensor]:
    """Raw data -> {x_train, y_train, x_val, y_val, x_test, y_test, mean, std} (unnormalised x).

    `record` (data/raw.json, `lottery.raw.read_record`) names the files read; None locates them now.
    """
    d = cfg.data
    record = describe(d.dataset, d.root) if record is None else record
    if d.dataset in FOLDER_DATASETS:  # file names and labels, streamed by the rounds
        from . import folder

        return folder.prepare(cfg, record)
    if is_import_path(d.dataset):
        raw = _load_user(d.dataset)
    elif d.dataset == "mnist1d":
        raw = _load_mnist1d(record["generator"]["args"])
    elif d.dataset == "cifar10":
        raw = _load_cifar10(record["files"])
    elif d.dataset == "cifar100":
        raw = _load_cifar100(record["files"])
    elif d.dataset == "svhn":
        raw = _load_svhn(record["files"])
    else:
        raw = _load_idx_dataset(d.dataset, record["files"])
    check_raw(d.dataset, raw)
    val, train = holdout(d, raw["y"], raw["y_test"])
    x = torch.from_numpy(np.ascontiguousarray(raw["x"]))
    y = torch.from_numpy(raw["y"].astype(np.int64))
    x_train = x[torch.from_numpy(train)]
    xf = x_train.float()
    dims = (0, 2, 3) if xf.ndim == 4 else tuple(range(xf.ndim))  # per channel for images
    std = xf.std(dim=dims, keepdim=True)[0]
    if not (std > 0).all():
        raise DataError(f"data.dataset: {d.dataset}: train split: constant inputs (standard deviation 0"
                        + (f" in channel {int((std <= 0).nonzero()[0][0])})" if std.numel() > 1 else ")")
                        + ": normalisation would divide by zero")
    return {
        "x_train": x_train, "y_train": y[torch.from_numpy(train)],
        "x_val": x[torch.from_numpy(val)], "y_val": y[torch.from_numpy(val)],
        "x_test": torch.from_numpy(np.ascontiguousarray(raw["x_test"])),
        "y_test": torch.from_numpy(raw["y_test"].astype(np.int64)),
        # per-dataset (per-channel) normalisation, from the training split only
        "mean": xf.mean(dim=dims, keepdim=True)[0], "std": std,
    }


def holdout(d: DataConfig, y: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The validation split carved out of the training examples (labels `y`): data.validation indices drawn
    by data.split_seed, and the training indices left, sorted (the first data.train_subset of them when set).
    Every validation and test label (`y_test`) must occur in what training keeps."""
    n = len(y)
    if d.validation >= n:
        raise ConfigError(f"data.validation: {d.validation} is not allowed (must be < the {n} training examples of {d.dataset})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(d.split_seed)).numpy()
    val, train = perm[: d.validation], np.sort(perm[d.validation :])
    if d.train_subset:
        train = train[: d.train_subset]
    seen = set(np.unique(y[train]).tolist())
    for split, labels in (("validation", y[val]), ("test", y_test)):
        unseen = sorted(set(np.unique(labels).tolist()) - seen)
        if unseen:
            raise DataError(f"data.dataset: {d.dataset}: {split} split: label {unseen[0]} does not occur in the "
                            f"training split left after holding out data.validation={d.validation}"
                            + (f" and keeping data.train_subset={d.train_subset}" if d.train_subset else ""))
    return val, train


PREPARED = [f"{xy}_{split}" for split in ("train", "val", "test") for xy in "xy"] + ["mean", "std"]


def prepared_params(cfg: Config) -> str:
    """The params digest data/prepared.pt records: of exactly the keys `prepare` reads."""
    return cfg.digest(STAGE_PARAMS["prepare"])


def load_prepared(path: str | Path, device: str | torch.device = "cpu", params: str | None = None,
                  data: DataConfig | None = None) -> TensorData:
    """The prepared splits, normalised to float32 with the training split's mean and std, on `device`; with
    `params` (`prepared_params`), the file must have been prepared with those params. A prepared image folder
    (it holds `paths`) gives a `lottery.folder.FolderData`, the same interface, reading its images with the
    settings of `data` (data.root, image_size, resize, workers)."""
    from .artifacts import ArtifactError, load

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared data missing; run `dvc repro prepare`")
    try:
        raw, _ = load(path, "prepared", None if params is None else {"params": params})
    except ArtifactError as e:
        raise DataError(str(e)) from None
    _check_prepared(path, raw)
    if "paths" in raw:
        from . import folder

        if data is None:
            raise ValueError(f"{path} is a prepared image folder: load_prepared needs the data params to read it")
        return folder.load(path, raw, device, data)
    out = {}
    for split in ("train", "val", "test"):
        x = (raw[f"x_{split}"].float() - raw["mean"]) / raw["std"]
        out[f"x_{split}"] = x.to(device)
        out[f"y_{split}"] = raw[f"y_{split}"].to(device)
    return TensorData(**out)


def save_prepared(tensors: dict[str, torch.Tensor], path: str | Path, params: str | None = None) -> None:
    """data/prepared.pt: an artifact of kind 'prepared' (every tensor's digest recorded), with the digest of the
    params it was prepared with (`prepared_params`)."""
    from .artifacts import save

    path = Path(path)
    _check_prepared(path, tensors)
    save(path, tensors, {"kind": "prepared", **({} if params is None else {"params": params})})


def _check_prepared(path: Path, t: dict[str, torch.Tensor]) -> None:
    """The keys, dtypes and shapes `load_prepared` relies on: labels int64 beside their examples, one example shape
    (a prepared image folder's: `lottery.folder.check_prepared`)."""
    def bad(key: str, why: str) -> DataError:
        return DataError(f"{path}: prepared tensor '{key}' {why}; run `dvc repro -f prepare`")

    if "paths" in t:  # an image folder's file list
        from . import folder

        return folder.check_prepared(t, bad)
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


# ---------------------------------------------------------------- the data a round reads


class Split:
    """Labelled examples in memory: inputs `x` (n, *example shape) and int64 labels `y` (n,), on one device.

    Read through `len`, `y` (every label), `chunks` (in order: evaluation) and `subset` (a fixed selection)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def chunks(self, size: int, shard: tuple[int, int] = (0, 1)):
        """(x, y) of `size` consecutive examples at a time (the last chunk may be shorter), in order; with
        `shard` (r, W), only the chunks i with i % W == r (rank r of a data-parallel evaluation)."""
        rank, world = shard
        for s in range(rank * size, len(self.y), world * size):
            yield self.x[s : s + size], self.y[s : s + size]

    def subset(self, idx: torch.Tensor) -> Split:
        """The examples at the indices `idx`, in that order."""
        idx = idx.to(self.x.device)
        return Split(self.x[idx], self.y[idx])


class TensorData:
    """The data a round reads: the `train`, `val` and `test` splits (`Split`), held in memory as tensors, and
    the data orders training draws from `train`. Training, instability, the rounds and the scores of pruning
    at init read data through this object only:

      classes, example_shape, device     what the networks are built for and run on
      len(data.train)                    the number of training examples
      orders(order_seeds, batch_size, augment)
                                         the training batches (`Orders`): the batch of every data order at
                                         iteration i is a function of (its seed, i) alone, so a run resumed
                                         at iteration k (or rewound to θk: `Orders.skip`) sees the batches an
                                         uninterrupted run would; its state makes the resume points
      val / test .chunks(size)           the splits evaluated, in order, `size` examples at a time
      train.subset(idx)                  a fixed selection of training examples (instability's)
      first_batches(order_seeds, batch_size, count)
                                         the first training batches of each data order, on the CPU (SNIP, GraSP)

    A streaming source (`lottery.folder.FolderData`, data.dataset imagefolder or imagenet: `train/<class>/<image>`,
    too large to prepare into one file) gives the same object. Its splits hold the file list in memory, and `y`
    every label (from the class folders: cheap); `chunks` decodes the files in order with the evaluation
    transform in DataLoader workers; `subset` is a split of the selected files. Its `orders` draws the same
    indices as `Orders` (its index arithmetic, on no examples): `skip`, resume points and the indices need no
    image, only `batch(idx)` differs: it decodes the files of `idx` in DataLoader workers (the indices are known
    ahead, so batches are prefetched) and draws each example's random transform from a generator seeded by
    (order seed, iteration, position in the global batch), never from the worker process, so a resumed run, or
    another number of workers, sees the same tensors. Its orders are not `graphable`: the step is not captured
    as a CUDA graph (decoding happens on the CPU).

    Design, not built yet:

    Data-parallel rounds (`train.world_size` W): `train.batch_size` B stays the global batch. Every rank
    builds the same `Orders` from the same seeds and draws the same indices (no communication), and rank r
    takes the rows r·B/W .. (r+1)·B/W - 1 of every order's batch (B divisible by W, checked before training);
    augmentation draws are made for the whole global batch on every rank, each keeping its rows, so the
    generators stay in step. Each rank's loss is the mean over its rows; DDP's gradient average over equal
    shards is then the gradient of the mean over B, the world_size 1 result up to the order of float sums.
    Since the `Orders` state is the same on every rank, rank 0's resume point restores all of them.
    Evaluation: rank r evaluates every W-th chunk, and the summed losses and correct counts are all-reduced
    before dividing by len(split), so every rank takes the same early-stop decision.
    """

    def __init__(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                 x_test: torch.Tensor, y_test: torch.Tensor):
        self.train, self.val, self.test = Split(x_train, y_train), Split(x_val, y_val), Split(x_test, y_test)

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def classes(self) -> int:
        """The largest label of any split + 1."""
        return max(int(s.y.max()) for s in (self.train, self.val, self.test) if len(s)) + 1

    def orders(self, order_seeds: list[int], batch_size: int, augment: bool = False,
               shard: tuple[int, int] = (0, 1)) -> Orders:
        return Orders(self.train, order_seeds, batch_size, augment, shard)

    def first_batches(self, order_seeds: list[int], batch_size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first `count` training batches (x (orders, B, ...), y (orders, B)) of each data order, on the CPU."""
        orders = Orders(Split(self.train.x.cpu(), self.train.y.cpu()), order_seeds, batch_size, False)
        return [orders.batch(orders.next_batch()) for _ in range(count)]


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


class Orders:
    """The data orders of a stack over the training split: one generator per distinct seed, so networks that
    share a seed share batches; `next_batch()` gives the indices (orders, B) of every order's next batch, and
    `batch(idx)` every network's examples: with `shard` (r, W), only rows r·B/W .. (r+1)·B/W - 1 of each
    (rank r of a data-parallel round; augmentation is drawn for the whole batch, so every rank's generators
    stay in step). `graphable`: the step may gather its batch inside a captured CUDA graph."""

    def __init__(self, train: Split, order_seeds: list[int], bs: int, augment: bool, shard: tuple[int, int] = (0, 1)):
        uniq = sorted(set(order_seeds))
        self.x, self.y = train.x, train.y
        self.gens = [torch.Generator().manual_seed(s) for s in uniq]
        self.net_order = torch.tensor([uniq.index(s) for s in order_seeds], device=self.x.device)
        self.identity = len(uniq) == len(order_seeds) and uniq == list(order_seeds)
        self.n_train, self.bs, self.augment = len(train), bs, augment
        self.perms, self.pos = None, self.n_train
        rank, world = shard
        if bs % world:
            raise ConfigError(f"train.batch_size: {bs} is not divisible by train.world_size={world} "
                              "(every process takes an equal share of each batch)")
        self.rows = slice(rank * bs // world, (rank + 1) * bs // world) if world > 1 else slice(None)
        self.graphable = not augment

    def next_batch(self) -> torch.Tensor:
        if self.pos + self.bs > self.n_train:  # a new permutation for every data order
            self.perms = torch.stack([torch.randperm(self.n_train, generator=g) for g in self.gens]).to(self.x.device)
            self.pos = 0
        self.pos += self.bs
        return self.perms[:, self.pos - self.bs : self.pos]

    def skip(self) -> None:
        """Consume one batch's orders (and augmentation draws), unused: the iterations before a rewind point."""
        self.next_batch()
        if self.augment:
            for g in self.gens:
                _augment_draws(g, self.bs)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every network's batch (N, B, ...) and labels (N, B) of the order indices `idx` (orders, B)."""
        if not self.augment:  # this rank's rows (augmentation draws for the whole batch first)
            idx = idx[:, self.rows]
        if not (self.identity or self.augment):  # each network's batch, gathered once
            idx = idx[self.net_order]
        # index_select copies whole rows: 2.6x faster than x[idx] (LeNet, 10 orders)
        xb = torch.index_select(self.x, 0, idx.reshape(-1)).view(*idx.shape, *self.x.shape[1:])
        yb = torch.index_select(self.y, 0, idx.reshape(-1)).view(idx.shape)
        if self.augment:  # one draw per data order, then each network takes its order's batch
            xb = torch.stack([augment_batch(xb[o], g) for o, g in enumerate(self.gens)])[:, self.rows]
            yb = yb[:, self.rows]
            if not self.identity:
                xb, yb = xb[self.net_order], yb[self.net_order]
        return xb, yb

    def state_dict(self) -> dict:
        """What a resume point keeps: the generators' states and the current permutations."""
        return {"gens": [g.get_state() for g in self.gens], "perms": self.perms, "pos": self.pos}

    def load_state_dict(self, st: dict) -> None:
        for g, gs in zip(self.gens, st["gens"]):
            g.set_state(gs)
        self.perms, self.pos = st["perms"], st["pos"]
