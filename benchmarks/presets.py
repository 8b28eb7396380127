"""Seconds per 1,000 training iterations of each paper preset on this machine.

Builds each preset's model and trains it with the preset's optimizer, batch size and
augmentation on random in-memory data of the dataset's shape, for one network and for a
round's stack (ticket + 2 controls x 2 trials = 6 networks) with half of every prunable
layer masked, and extrapolates from a few timed iterations after a warm-up. Prints a table; asserts nothing.

    python benchmarks/presets.py [--iterations N] [--device cpu|cuda] [--params-dir DIR]

--params-dir reads DIR/<preset>.yaml (written by --write-params DIR) instead of composing
the preset with Hydra: for a machine without DVC, such as a lent GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from lottery import masks, models
from lottery.data import SHAPES, TensorData

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["lenet", "conv2", "conv4", "conv6", "vgg19", "resnet20"]


def seconds_per_1000(cfg, n_nets: int, iters: int, device: str = "cpu") -> float:
    from lottery.runtime import configure_runtime
    from lottery.training import train

    dev = configure_runtime(device, cfg.train.precision)  # as the round stage: mallopt, and CUDA's settings
    shape = SHAPES[cfg.data.dataset]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(max(2000, cfg.train.batch_size * 4), *shape, generator=g)
    y = torch.randint(0, 10, (len(x),), generator=g)
    x, y = x.to(dev), y.to(dev)
    data = TensorData(x, y, x[:8], y[:8], x[:8], y[:8])
    model = models.to_device(models.build(cfg.model.name, list(range(n_nets))), dev)  # as a round: NHWC on CUDA
    # half of every prunable layer pruned, as in a round after r0 (masks change the step's work)
    mask = {k: (torch.rand(v.shape, generator=g) > 0.5).to(dev) for k, v in masks.ones(model, models.prunable(model)).items()}
    quiet = lambda *_: None  # noqa: E731
    run = dataclasses.replace(cfg.train, iterations=iters, eval_every=10**9, log_every=0, warmup=0, lr_drops=[])
    # warm-up: on CUDA past the graph capture (graphs are used without augmentation)
    train(model, mask, data, dataclasses.replace(run, iterations=5), list(range(n_nets)), log=quiet, augment=cfg.data.augment)
    t = time.perf_counter()
    train(model, mask, data, run, list(range(n_nets)), log=quiet, augment=cfg.data.augment)  # ends with a sync (.tolist)
    return (time.perf_counter() - t) / iters * 1000


def preset_config(preset: str, params_dir: Path | None):
    from lottery import config

    if params_dir:
        return config.load(params_dir / f"{preset}.yaml")
    from lottery.params import compose

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "conf", Path(tmp) / "conf")
        shutil.copytree(ROOT / "hydra_plugins", Path(tmp) / "hydra_plugins")
        compose([f"experiment={preset}"], Path(tmp), "params.yaml")
        return config.load(Path(tmp) / "params.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", help="override train.precision (float32, tf32, bfloat16)")
    ap.add_argument("--params-dir", type=Path, help="read DIR/<preset>.yaml instead of composing")
    ap.add_argument("--write-params", type=Path, metavar="DIR", help="write DIR/<preset>.yaml and exit")
    args = ap.parse_args()
    if args.write_params:
        args.write_params.mkdir(parents=True, exist_ok=True)
        for preset in args.presets:
            cfg = preset_config(preset, None)
            (args.write_params / f"{preset}.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        return

    print(f"{'preset':<9} {'model':<14} {'batch':>5} {'precision':>9} {'s/1k it (1 net)':>16} {'s/1k it (6 nets)':>17}",
          flush=True)
    for preset in args.presets:
        cfg = preset_config(preset, args.params_dir)
        if args.precision:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=args.precision))
        iters = args.iterations if cfg.model.name in ("lenet-300-100",) else max(3, args.iterations // 4)
        one = seconds_per_1000(cfg, 1, iters * 10 if cfg.model.name == "lenet-300-100" else iters, args.device)
        six = seconds_per_1000(cfg, 6, iters * 10 if cfg.model.name == "lenet-300-100" else max(2, iters // 2), args.device)
        print(f"{preset:<9} {cfg.model.name:<14} {cfg.train.batch_size:>5} {cfg.train.precision:>9} {one:>16.2f} {six:>17.2f}",
              flush=True)


if __name__ == "__main__":
    main()
