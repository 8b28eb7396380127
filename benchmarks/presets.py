"""Seconds per 1,000 training iterations of each paper preset on this machine.

Builds each preset's model and trains it with the preset's optimizer, batch size and
augmentation on random in-memory data of the dataset's shape, for one network and for a
round's stack (ticket + 2 controls x 2 trials = 6 networks), and extrapolates from a few
timed iterations after a warm-up. Prints a table; asserts nothing.

    python benchmarks/presets.py [--iterations N]
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lottery import masks, models
from lottery.data import SHAPES
from lottery.params import compose

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["lenet", "conv2", "conv4", "conv6", "vgg19", "resnet20"]


def seconds_per_1000(cfg, n_nets: int, iters: int) -> float:
    from lottery.training import train

    shape = SHAPES[cfg.data.dataset]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(max(2000, cfg.train.batch_size * 4), *shape, generator=g)
    y = torch.randint(0, 10, (len(x),), generator=g)
    data = {"x_train": x, "y_train": y, "x_val": x[:8], "y_val": y[:8], "x_test": x[:8], "y_test": y[:8]}
    model = models.build(cfg.model.name, list(range(n_nets)))
    mask = masks.ones(model, models.prunable(model))
    quiet = lambda *_: None  # noqa: E731
    run = dataclasses.replace(cfg.train, iterations=iters, eval_every=10**9, log_every=0, warmup=0, lr_drops=[])
    train(model, mask, data, dataclasses.replace(run, iterations=2), list(range(n_nets)), log=quiet, augment=cfg.data.augment)
    t = time.perf_counter()
    train(model, mask, data, run, list(range(n_nets)), log=quiet, augment=cfg.data.augment)
    return (time.perf_counter() - t) / iters * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    args = ap.parse_args()
    from lottery import config

    print(f"{'preset':<9} {'model':<14} {'batch':>5} {'s/1k it (1 net)':>16} {'s/1k it (6 nets)':>17}", flush=True)
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "params.yaml"
            shutil.copytree(ROOT / "conf", Path(tmp) / "conf")
            shutil.copytree(ROOT / "hydra_plugins", Path(tmp) / "hydra_plugins")
            compose([f"experiment={preset}"], Path(tmp), "params.yaml")
            cfg = config.load(out)
        iters = args.iterations if cfg.model.name in ("lenet-300-100",) else max(3, args.iterations // 4)
        one = seconds_per_1000(cfg, 1, iters * 10 if cfg.model.name == "lenet-300-100" else iters)
        six = seconds_per_1000(cfg, 6, iters * 10 if cfg.model.name == "lenet-300-100" else max(2, iters // 2))
        print(f"{preset:<9} {cfg.model.name:<14} {cfg.train.batch_size:>5} {one:>16.1f} {six:>17.1f}", flush=True)


if __name__ == "__main__":
    main()
