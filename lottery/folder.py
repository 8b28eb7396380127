"""Image-folder datasets, streamed: `data.dataset: imagefolder` (data.root holds train/<class>/<image> and
val/<class>/<image>, torchvision's ImageFolder layout) and `imagenet` (ILSVRC-2012 in that layout, under
data.root/imagenet or data.root). Too large to prepare into one tensor file, the images stay on disk and are
decoded and transformed by DataLoader workers while a round trains.

The splits: `val/` is this project's *test* split; the held-out validation split (early stopping) is
data.validation training files drawn by data.split_seed, as for every dataset (`lottery.data.holdout`).
Class names are the sorted folder names of train/ (label = position); val/ must hold the same ones.

What is checked where (a full decode of 1.28M images at every prepare is too slow):
  check    (`describe`, data/raw.json) walks the folder: root, train/ and val/ present, every file in a class
           folder, the same class lists, no empty class folder, image extensions only (EXTENSIONS, any case),
           no empty file. It records a manifest: the relative path and size of every file and a digest of
           that list; raw.json keeps the digest, the counts and the class names (small at ImageNet's size).
           Adding, removing, renaming or resizing a file changes the digest, so `prepare` reruns, and so does
           every round after it (data/prepared.pt records the digest). An edit that keeps a file's size (or
           a touched timestamp) is NOT detected: hashing every byte of 140 GB at every repro is too slow.
  prepare  (`prepare`) walks the folder again and verifies the digest against raw.json, then fully decodes a
           seeded sample of each split (PREPARE_DECODES files each; all of them in a small folder), from which
           imagefolder's per-channel mean and std come (ImageNet uses its usual constants).
  training every image is decoded when a batch or an evaluation chunk needs it; a file that does not decode
           stops the round with one line naming it (`lottery.data.DataError`, exit 2).

data/prepared.pt (kind 'prepared', no pickled objects): `paths` (the newline-joined relative paths as uint8),
`classes` (newline-joined names, uint8), `manifest` (the digest, uint8), `index_{train,val,test}` (each split's
files, int64) with its labels `y_{train,val,test}`, and `mean`/`std` (3, 1, 1) of pixel values (0-255, as for the
tensor datasets: the exported ticket takes uint8 images, here the transformed (3, S, S) crops).
`load` gives a `FolderData`: the interface of `lottery.data.TensorData` (see its docstring), batches float32,
normalised, on the round's device.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from .config import Config, ConfigError, DataConfig
from .data import Orders, Split, holdout
from .raw import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's, any case
SPLITS = ("train", "val")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # of pixels in [0, 1]
PREPARE_DECODES = 256  # files of each split (train, validation, test) fully decoded at prepare
LAYOUT = "an image folder holds train/<class>/<image> and val/<class>/<image>"
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # RandomResizedCrop's defaults


def folder_root(dataset: str, root: str | Path) -> Path:
    """The folder holding train/ and val/: data.root, or data.root/imagenet for `imagenet` when it exists."""
    root = Path(root)
    return root / "imagenet" if dataset == "imagenet" and (root / "imagenet").is_dir() else root


def scan(root: Path) -> tuple[list[str], list[tuple[str, int, int]]]:
    """The class names and every file: (path relative to `root`, size in bytes, label), train/ then val/, each
    class's files sorted. Bad layout is a DataError naming the path (see the module docstring)."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder missing (data.root; {LAYOUT})")
    classes = {}
    for split in SPLITS:
        top = root / split
        if not top.is_dir():
            raise DataError(f"{top}: missing ({LAYOUT})")
        names = []
        for entry in sorted(os.scandir(top), key=lambda e: e.name):
            if not entry.is_dir():
                raise DataError(f"{entry.path}: not in a class folder ({LAYOUT})")
            names.append(entry.name)
        if not names:
            raise DataError(f"{top}: no class folders ({LAYOUT})")
        classes[split] = names
    if classes["train"] != classes["val"]:
        odd = sorted(set(classes["train"]) ^ set(classes["val"]))
        where = "train" if odd[0] in classes["train"] else "val"
        raise DataError(f"{root}: the class lists of train/ and val/ differ: {where}/{odd[0]} has no counterpart "
                        f"({len(odd)} such class folder(s))")
    files = []
    for split in SPLITS:
        for label, name in enumerate(classes["train"]):
            found = []  # (strings, not Path objects: about 2x faster at a million files)
            for folder, subfolders, names in os.walk(root / split / name, followlinks=True):
                subfolders.sort()
                rel = Path(folder).relative_to(root).as_posix()
                for f in names:
                    path = os.path.join(folder, f)
                    if os.path.splitext(f)[1].lower() not in EXTENSIONS:
                        raise DataError(f"{path}: not an image file (extensions: {' '.join(EXTENSIONS)})")
                    if any(c in rel + f for c in "\n\t"):  # the separators of the manifest and prepared.pt
                        raise DataError(f"{path!r}: a newline or tab in a file or folder name is not supported")
                    size = os.stat(path).st_size
                    if not size:
                        raise DataError(f"{path}: empty file (0 bytes), not an image")
                    found.append((f"{rel}/{f}", size, label))
            if not found:
                raise DataError(f"{root / split / name}: empty class folder (no image files)")
            files += sorted(found)
    return classes["train"], files


def manifest(files: list[tuple[str, int, int]]) -> dict:
    """What data/raw.json keeps of a scan: the digest of every relative path and size, the counts and bytes."""
    h = hashlib.sha256()
    for rel, size, _ in files:
        h.update(f"{rel}\t{size}\n".encode())
    return {"sha256": h.hexdigest(), "train": sum(rel.startswith("train/") for rel, _, _ in files),
            "val": sum(rel.startswith("val/") for rel, _, _ in files), "bytes": sum(size for _, size, _ in files)}


def describe(dataset: str, root: str | Path) -> dict:
    """data/raw.json of an image folder (the check stage): its root, class names and manifest."""
    root = folder_root(dataset, root)
    classes, files = scan(root)
    return {"dataset": dataset, "root": str(root), "classes": classes, "manifest": manifest(files)}


def _text(t: torch.Tensor) -> str:
    return t.numpy().tobytes().decode()


def _bytes(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(s.encode()), dtype=torch.uint8) if s else torch.zeros(0, dtype=torch.uint8)


# ---------------------------------------------------------------- decoding (in DataLoader workers)


def crop_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, height, width): scale (0.08, 1) of the area, aspect ratio (3/4, 4/3)
    (log-uniform), up to 10 tries, else the central crop of the ratio nearest; drawn from `rng` only."""
    area, lo, hi = width * height, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target, ratio = area * rng.uniform(*CROP_SCALE), math.exp(rng.uniform(lo, hi))
        w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        w, h = int(round(height * CROP_RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def open_rgb(path: Path) -> Image.Image:
    """The whole image, decoded, in RGB; a file that does not decode is a DataError naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # a corrupt or truncated image fails in many ways
        why = " ".join(str(e).split())
        raise DataError(f"{path}: cannot decode the image ({type(e).__name__}: {why})") from None


def decode(path: Path, size: int, resize: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """One image as uint8 (size, size, 3): without `rng`, the evaluation transform (shorter side resized to
    `resize`, bilinear, then the central size x size crop); with it, RandomResizedCrop(size) and a horizontal
    flip with probability 1/2, every draw from `rng`. A file that does not decode is a DataError naming it."""
    im = open_rgb(path)
    width, height = im.size
    if rng is None:
        w, h = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
        im = im.resize((w, h), Image.BILINEAR)
        left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
        im = im.crop((left, top, left + size, top + size))
    else:
        top, left, h, w = crop_box(rng, width, height)
        im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(im, dtype=np.uint8)  # (a writable copy: torch.from_numpy takes it)


class Decoder:
    """What a DataLoader worker runs: the images of one request, decoded and transformed, as uint8 (..., 3, S, S).

    A request is ("eval", files) (one chunk, evaluation transform) or ("train", iteration, idx, files, first,
    seeds, augment): `files` (orders, P) are the files of rows first .. first+P-1 of every order's global batch
    `idx` (echoed back with the iteration); with `augment`, each image's draws come from a generator seeded by
    (its order's seed, iteration, position in the global batch), so neither the worker nor the number of
    workers changes a batch. A file that does not decode comes back as {"error": one line}."""

    def __init__(self, root: Path, paths: torch.Tensor, size: int, resize: int):
        self.root, self.size, self.resize = root, size, resize
        self.blob = paths.numpy()  # one array, not a list of strings: forked workers share its pages
        ends = np.flatnonzero(self.blob == ord("\n"))
        self.starts, self.ends = np.concatenate([[0], ends + 1]), np.concatenate([ends, [len(self.blob)]])

    def __len__(self) -> int:
        return len(self.starts)

    def path(self, i: int) -> Path:
        return self.root / self.blob[self.starts[i] : self.ends[i]].tobytes().decode()

    def __getitem__(self, request: tuple) -> dict:
        try:
            if request[0] == "eval":
                files = request[1]
                return {"x": self._images(files.reshape(1, -1), lambda o, p: None)[0]}
            _, it, idx, files, first, seeds, augment = request
            draw = (lambda o, p: np.random.default_rng((seeds[o], it, first + p))) if augment else (lambda o, p: None)
            return {"x": self._images(files, draw), "it": it, "idx": idx}
        except DataError as e:
            return {"error": str(e)}

    def _images(self, files: np.ndarray, draw) -> torch.Tensor:
        out = torch.empty(*files.shape, 3, self.size, self.size, dtype=torch.uint8)
        for o, p in np.ndindex(*files.shape):
            image = decode(self.path(int(files[o, p])), self.size, self.resize, draw(o, p))
            out[o, p] = torch.from_numpy(image).permute(2, 0, 1)
        return out


def stream(decoder: Decoder, requests, workers: int, pin: bool):
    """The decoded items of `requests` (an iterator, consumed ahead by the DataLoader), in order; `workers`
    processes (0: in this one), prefetching; an image that does not decode raises its DataError here."""
    loader = DataLoader(decoder, batch_size=None, sampler=requests, num_workers=workers, pin_memory=pin)
    for item in loader:
        if "error" in item:
            raise DataError(item["error"])
        yield item


# ---------------------------------------------------------------- prepare (data/prepared.pt)


def prepare(cfg: Config, record: dict) -> dict[str, torch.Tensor]:
    """The folder walked again and checked against data/raw.json (`record`), split, a sample decoded, and the
    tensors of data/prepared.pt (see the module docstring)."""
    d = cfg.data
    root = folder_root(d.dataset, d.root)
    classes, files = scan(root)
    now = manifest(files)
    if record.get("manifest") != now or record.get("classes") != classes:
        was = record.get("manifest") or {}
        raise DataError(f"{root}: changed since the check stage recorded it in data/raw.json (files added, removed "
                        f"or resized: {now['train']} train / {now['val']} val files now, {was.get('train')} / "
                        f"{was.get('val')} recorded); run `dvc repro`")
    labels = np.array([label for _, _, label in files], dtype=np.int64)
    in_train = np.array([rel.startswith("train/") for rel, _, _ in files])
    train_files, test = np.flatnonzero(in_train), np.flatnonzero(~in_train)
    val, train = holdout(d, labels[train_files], labels[test])
    index = {"train": train_files[train], "val": train_files[val], "test": test}
    gen = torch.Generator().manual_seed(d.split_seed)
    sums, count = np.zeros((2, 3)), 0
    for split, idx in index.items():  # a seeded sample of every split, fully decoded
        for i in idx[torch.randperm(len(idx), generator=gen)[:PREPARE_DECODES].numpy()]:
            px = np.asarray(open_rgb(root / files[i][0]), dtype=np.float64).reshape(-1, 3)
            if split == "train":
                sums += (px.sum(0), (px ** 2).sum(0))
                count += len(px)
    if d.dataset == "imagenet":
        mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    else:
        mean = sums[0] / count
        std = np.sqrt(np.maximum(sums[1] / count - mean ** 2, 0))
        if not (std > 0).all():
            raise DataError(f"data.dataset: {d.dataset}: {root}: constant images (standard deviation 0 in channel "
                            f"{int(np.flatnonzero(std <= 0)[0])}): normalisation would divide by zero")
    print(f"[prepare] {d.dataset}: {len(files)} files in {len(classes)} classes under {root}; decoded a sample of "
          f"{sum(min(len(i), PREPARE_DECODES) for i in index.values())}")
    return {"paths": _bytes("\n".join(rel for rel, _, _ in files)), "classes": _bytes("\n".join(classes)),
            "manifest": _bytes(now["sha256"]),
            **{f"index_{s}": torch.from_numpy(i.astype(np.int64)) for s, i in index.items()},
            **{f"y_{s}": torch.from_numpy(labels[i]) for s, i in index.items()},
            "mean": torch.tensor(mean, dtype=torch.float32).view(3, 1, 1),
            "std": torch.tensor(std, dtype=torch.float32).view(3, 1, 1)}


KEYS = ["paths", "classes", "manifest", "mean", "std", *(f"{k}_{s}" for s in ("train", "val", "test") for k in ("index", "y"))]


def check_prepared(t: dict[str, torch.Tensor], bad) -> None:
    """The keys, dtypes and shapes `load` relies on (a prepared image folder); `bad(key, why)` is the error."""
    for key in KEYS:
        if key not in t:
            raise bad(key, "is missing")
    for key in ("paths", "classes", "manifest"):
        if t[key].dtype != torch.uint8 or t[key].ndim != 1:
            raise bad(key, f"is {t[key].dtype} {tuple(t[key].shape)}: expected uint8 text")
    try:
        n, classes = len(_text(t["paths"]).split("\n")), len(_text(t["classes"]).split("\n"))
    except UnicodeDecodeError:
        raise bad("paths", "is not UTF-8 text") from None
    for split in ("train", "val", "test"):
        i, y = t[f"index_{split}"], t[f"y_{split}"]
        if i.dtype != torch.int64 or i.ndim != 1 or (len(i) and not 0 <= int(i.min()) <= int(i.max()) < n):
            raise bad(f"index_{split}", f"is {i.dtype} {tuple(i.shape)}: expected int64 positions among {n} files")
        if y.dtype != torch.int64 or y.shape != i.shape or (len(y) and not 0 <= int(y.min()) <= int(y.max()) < classes):
            raise bad(f"y_{split}", f"is {y.dtype} {tuple(y.shape)}: expected int64 labels below {classes}, one per file")
    for key in ("mean", "std"):
        if not t[key].is_floating_point() or tuple(t[key].shape) != (3, 1, 1):
            raise bad(key, f"is {t[key].dtype} {tuple(t[key].shape)}: expected float (3, 1, 1)")


def load(path: Path, t: dict[str, torch.Tensor], device: str | torch.device, data: DataConfig) -> FolderData:
    """A prepared image folder (its tensors `t`, checked) as the data a round reads; the images stay in the folder."""
    root = folder_root(data.dataset, data.root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder missing (data.root; {path} lists its files)")
    return FolderData(Decoder(root, t["paths"], data.image_size, data.resize), _text(t["classes"]).split("\n"),
                      {s: (t[f"index_{s}"], t[f"y_{s}"]) for s in ("train", "val", "test")},
                      t["mean"].float(), t["std"].float(), torch.device(device), data.workers)


# ---------------------------------------------------------------- the data a round reads


class FolderData:
    """The data a round reads, streamed from an image folder: exactly the interface of `lottery.data.TensorData`
    (its docstring). Each split holds its file positions and labels; images are decoded by `workers`
    DataLoader processes (0: in this one) and arrive float32, normalised, on `device` (pinned on CUDA)."""

    def __init__(self, decoder: Decoder, classes: list[str], splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 mean: torch.Tensor, std: torch.Tensor, device: torch.device, workers: int):
        self.decoder, self.class_names, self.workers, self.device = decoder, classes, workers, device
        self.mean, self.std = mean, std
        self.train, self.val, self.test = (FolderSplit(self, files, y.to(device)) for files, y in splits.values())

    @property
    def classes(self) -> int:
        return len(self.class_names)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (3, self.decoder.size, self.decoder.size)

    def stream(self, requests, device: torch.device):
        return stream(self.decoder, requests, self.workers, device.type == "cuda")

    def normalise(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 images (..., 3, S, S) -> float32 on `device`, (x - mean) / std."""
        x = x.to(device, non_blocking=True).float()
        return x.sub_(self.mean.to(device)).div_(self.std.to(device))

    def orders(self, order_seeds: list[int], batch_size: int, augment: bool = False,
               shard: tuple[int, int] = (0, 1)) -> FolderOrders:
        return FolderOrders(self, order_seeds, batch_size, augment, shard)

    def first_batches(self, order_seeds: list[int], batch_size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first `count` training batches (x (orders, B, ...), y (orders, B)) of each data order, on the CPU."""
        orders = FolderOrders(self, order_seeds, batch_size, False, device=torch.device("cpu"))
        try:
            return [orders.batch(orders.next_batch()) for _ in range(count)]
        finally:
            orders.close()


class FolderSplit:
    """The files of one split (positions in the decoder's list, `files`, on the CPU) and their labels `y`."""

    def __init__(self, data: FolderData, files: torch.Tensor, y: torch.Tensor):
        self.data, self.files, self.y = data, files, y

    def __len__(self) -> int:
        return len(self.y)

    def chunks(self, size: int, shard: tuple[int, int] = (0, 1)):
        """(x, y) of `size` consecutive examples at a time (the last chunk may be shorter), in order, evaluation
        transform; with `shard` (r, W), only the chunks i with i % W == r. Decoded ahead by the workers."""
        rank, world = shard
        starts = range(rank * size, len(self.y), world * size)
        files = self.files.numpy()
        items = self.data.stream((("eval", files[s : s + size]) for s in starts), self.data.device)
        for s, item in zip(starts, items):
            yield self.data.normalise(item["x"], self.data.device), self.y[s : s + size]

    def subset(self, idx: torch.Tensor) -> FolderSplit:
        """The examples at the indices `idx`, in that order."""
        return FolderSplit(self.data, self.files[idx.cpu()], self.y[idx.to(self.y.device)])


class FolderOrders:
    """The data orders of a stack over an image folder's training split: `lottery.data.Orders`'s index arithmetic
    (one permutation per epoch from each order's seeded generator; `next_batch`, `skip` and the state are its),
    and `batch(idx)` decodes the files of `idx`.

    The batches are decoded ahead: a look-ahead copy of the orders feeds a DataLoader of whole batches (this
    rank's rows of every order's batch), started at the first `batch` and again after `skip`, `load_state_dict`
    or an `idx` that is not the one it foresaw. Augmentation draws come from generators seeded by (order seed,
    iteration, position in the global batch): the same tensors for any number of workers, after a resume, and
    on every rank. `graphable` is False: decoding happens on the CPU, outside any CUDA graph."""

    graphable = False

    def __init__(self, data: FolderData, order_seeds: list[int], bs: int, augment: bool,
                 shard: tuple[int, int] = (0, 1), device: torch.device | None = None):
        rank, world = shard
        if bs % world:
            raise ConfigError(f"train.batch_size: {bs} is not divisible by train.world_size={world} "
                              "(every process takes an equal share of each batch)")
        self.data, self.augment, self.device = data, augment, device or data.device
        self.rows = (rank * bs // world, (rank + 1) * bs // world)
        train = data.train
        self.index_split = Split(torch.empty(len(train), 0), train.y.cpu())  # indices only: no examples
        self.seeds, self.bs = list(order_seeds), bs
        self.index = Orders(self.index_split, order_seeds, bs, False)
        self.uniq = sorted(set(order_seeds))
        self.net_order, self.identity = self.index.net_order, self.index.identity
        self.batches = 0  # batches drawn: the iteration of the last `next_batch`
        self.ahead = None  # the prefetching stream; None: started at the next `batch`

    def next_batch(self) -> torch.Tensor:
        self.batches += 1
        return self.index.next_batch()

    def skip(self) -> None:
        """Consume one batch's orders, unused (augmentation draws are per iteration: nothing else to advance)."""
        self.next_batch()
        self.close()

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every network's batch (N, B/W, 3, S, S) and labels (N, B/W) of the global order indices `idx`
        (orders, B): this rank's rows r·B/W .. (r+1)·B/W - 1 of each."""
        idx = idx.cpu()
        item = next(self.ahead, None) if self.ahead is not None else None
        if item is None or item["it"] != self.batches or not torch.equal(item["idx"], idx):
            self.close()
            self.ahead = self._prefetch(idx)
            item = next(self.ahead)
        first, last = self.rows
        x = self.data.normalise(item["x"], self.device)
        y = self.index_split.y[idx[:, first:last]].to(self.device)
        if not self.identity:
            net_order = self.net_order.to(self.device)
            x, y = x[net_order], y[net_order]
        return x, y

    def _prefetch(self, idx: torch.Tensor):
        """The stream of decoded batches from this one (iteration `batches`, indices `idx`) on."""
        ahead = Orders(self.index_split, self.seeds, self.bs, False)
        ahead.load_state_dict(self.index.state_dict())
        files, (first, last) = self.data.train.files, self.rows
        it, seeds, augment = self.batches, tuple(self.uniq), self.augment

        def requests(it=it, idx=idx):  # no reference to self: the stream is freed (workers stopped) with it
            while True:
                yield "train", it, idx, files[idx[:, first:last]].numpy(), first, seeds, augment
                it, idx = it + 1, ahead.next_batch()

        return self.data.stream(requests(), self.device)

    def close(self) -> None:
        """Stop prefetching (the workers exit); the next `batch` starts again."""
        if self.ahead is not None:
            self.ahead.close()
            self.ahead = None

    def state_dict(self) -> dict:
        """What a resume point keeps: `Orders`'s state and the batches drawn."""
        return {**self.index.state_dict(), "batches": self.batches}

    def load_state_dict(self, st: dict) -> None:
        perms = st["perms"].cpu() if st["perms"] is not None else None
        self.index.load_state_dict({"gens": [g.cpu() for g in st["gens"]], "perms": perms, "pos": st["pos"]})
        self.batches = st["batches"]
        self.close()
