"""The streaming image-folder loader (lottery.folder) against the in-memory path (lottery.data.TensorData), on the
same images: training batches per second, in images/s.

A folder of `--images` JPEGs (default 2,000, 64x64, 10 classes; quality 90, smooth colour fields with noise) is
generated in a temporary folder and prepared as `data.dataset: imagefolder` (image_size 56, resize 64). Cases:

  memory      TensorData of the same training images, decoded once with the evaluation transform (what an
              in-memory prepared file holds): `orders(...).batch` gathers rows (augment: crop with padding 4 and
              flip on the tensors)
  stream-W    FolderData with data.workers W (1, 2): every batch decoded from the files by W DataLoader workers
              (augment: RandomResizedCrop(56) and flip; plain: resize 64, center crop 56), prefetched

Each case draws one epoch of batches of `--batch` (default 100) for one data order, after one batch of start-up
(timed apart: worker start and the first decode); the cases run in turn, `--passes` times (default 3), and a
row gives the median images/s and its ratio to `memory` and to `stream-1`. Prints, never asserts a speed.

    python benchmarks/folder_loader.py [--images N] [--batch B] [--passes P]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lottery

from lottery import config, data, raw  # noqa: E402

SIZE, RESIZE, CLASSES = 56, 64, 10


def make_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 64
    for split, count in (("train", n), ("val", 10 * CLASSES)):
        for i in range(count):
            c = i % CLASSES
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            a, b, g = rng.uniform(0, 1, 3)
            field = np.stack([a * xx + (1 - a) * yy, b * yy, g * (1 - xx)], -1) * 200
            pixels = np.clip(field + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i:05d}.jpg", quality=90)


def rate(orders, batches: int) -> tuple[float, float]:
    """(images/s over `batches` batches after the first, seconds of the first batch)."""
    t0 = time.perf_counter()
    orders.batch(orders.next_batch())
    t1 = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _ = orders.batch(orders.next_batch())
        n += x.shape[0] * x.shape[1]
    t2 = time.perf_counter()
    if hasattr(orders, "close"):
        orders.close()
    return n / (t2 - t1), t1 - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the training process's own share; the workers are separate processes
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        t0 = time.perf_counter()
        make_folder(root, args.images)
        cfg = config.from_dict({"data": {"dataset": "imagefolder", "root": str(root), "validation": args.batch,
                                         "image_size": SIZE, "resize": RESIZE},
                                "model": {"name": "any.module:net"}, "prune": {"rounds": 0, "chain": {}}})
        prepared = Path(tmp) / "prepared.pt"
        data.save_prepared(data.prepare(cfg, raw.describe("imagefolder", root)), prepared, data.prepared_params(cfg))
        streams = {w: data.load_prepared(prepared, "cpu", data.prepared_params(cfg),
                                         config.DataConfig(**{**vars(cfg.data), "workers": w})) for w in (1, 2)}
        d = streams[1]
        splits = {name: torch.cat([x for x, _ in getattr(d, name).chunks(500)]) for name in ("train", "val", "test")}
        memory = data.TensorData(splits["train"], d.train.y, splits["val"], d.val.y, splits["test"], d.test.y)
        n_train = len(d.train)
        print(f"folder_loader: {args.images} JPEGs 64x64 in {CLASSES} classes ({n_train} training after the validation "
              f"split), crops {SIZE}, batch {args.batch}; set-up {time.perf_counter() - t0:.1f}s; "
              f"{torch.get_num_threads()} torch thread in this process, {os.cpu_count()} CPUs")
        batches = n_train // args.batch - 1  # one epoch, less the start-up batch
        sources = {"memory": memory, "stream-1": streams[1], "stream-2": streams[2]}
        for augment in (False, True):
            runs: dict[str, list[tuple[float, float]]] = {k: [] for k in sources}
            for _ in range(args.passes):
                for name, source in sources.items():
                    runs[name].append(rate(source.orders([0], args.batch, augment), batches))
            med = {k: statistics.median(r for r, _ in v) for k, v in runs.items()}
            print(f"\n{'augment (random crop + flip)' if augment else 'plain (evaluation transform)'}: "
                  f"median of {args.passes} passes, {batches * args.batch} images each")
            print(f"{'case':10} {'images/s':>10} {'vs memory':>10} {'vs stream-1':>12} {'first batch':>12}")
            for k, v in runs.items():
                first = statistics.median(f for _, f in v)
                print(f"{k:10} {med[k]:10.0f} {med[k] / med['memory']:10.4f}x {med[k] / med['stream-1']:11.2f}x "
                      f"{first:11.3f}s")


if __name__ == "__main__":
    main()
