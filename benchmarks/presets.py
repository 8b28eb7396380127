"""Seconds per 1,000 training iterations of each paper preset on this machine.

Builds each preset's model and trains it with the preset's optimizer, batch size and
augmentation on random in-memory data of the dataset's shape, for one network and for a
round's stack (ticket + 2 controls x 2 trials = 6 networks) with half of every prunable
layer masked, and extrapolates from a few timed iterations after a warm-up. The 6 networks run four
ways: stacked with every conv layer grouped (one grouped convolution), stacked with every conv layer
network by network (`loop`), one after another (the one-network training six times in a row), and as a
round runs them with `train.stack: 0` (one after another where `models.one_at_a_time` says so, else
stacked with each layer on the path `models.conv_loop` chooses; timed apart only where that mixes the
two paths, else the matching column is repeated); the cases are interleaved over --passes passes (best
kept) and compared as ratios to one network. Prints a table; asserts nothing.

    python benchmarks/presets.py [--iterations N] [--passes P] [--clock wall|cpu] [--device cpu|cuda] [--params-dir DIR]

On a loaded machine, `OMP_NUM_THREADS=1 ... --clock cpu` (the process's CPU time) gives steadier ratios.

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


def trainer(cfg, n_nets: int, device: str = "cpu", conv: str | None = None, clock=time.perf_counter):
    """A warmed-up stack of `n_nets` networks of the preset, and `timed(iters)`: seconds per 1,000 iterations of
    training it `iters` more iterations. `conv` grouped | loop forces every conv layer's path (default: the
    one `models.to_device` chooses, as a round)."""
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
    if conv:
        for m in model.modules():
            if isinstance(m, models.StackedConv2d):
                m.loop = conv == "loop"
    # half of every prunable layer pruned, as in a round after r0 (masks change the step's work)
    mask = {k: (torch.rand(v.shape, generator=g) > 0.5).to(dev) for k, v in masks.ones(model, models.prunable(model)).items()}
    quiet = lambda *_: None  # noqa: E731
    run = dataclasses.replace(cfg.train, eval_every=10**9, log_every=0, warmup=0, lr_drops=[])

    def timed(iters: int) -> float:
        t = clock()
        train(model, mask, data, dataclasses.replace(run, iterations=iters), list(range(n_nets)), log=quiet,
              augment=cfg.data.augment)  # ends with a sync (.tolist)
        return (clock() - t) / iters * 1000

    # warm-up: on CUDA past the graph capture (graphs are used without augmentation)
    timed(5 if dev.type == "cuda" else 1)
    return model, timed


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
    ap.add_argument("--passes", type=int, default=2, help="interleaved passes over the cases (best kept)")
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the process's CPU time (steadier on a loaded machine; on CPU, with OMP_NUM_THREADS=1)")
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

    cases = {"1 net": (1, None), "6 grouped": (6, "grouped"), "6 loop": (6, "loop"), "6 in turn": (1, None),
             "6 nets": (6, None)}
    print(f"{'preset':<9} {'model':<14} {'batch':>5} {'precision':>9} | s/1k it: "
          + " ".join(f"{c:>10}" for c in cases)
          + " | 6 nets / 1 net: grouped    loop in turn    used | a round", flush=True)
    for preset in args.presets:
        cfg = preset_config(preset, args.params_dir)
        if args.precision:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=args.precision))
        iters = args.iterations * 10 if cfg.model.name == "lenet-300-100" else max(1, args.iterations // 8)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        runs = {c: trainer(cfg, n, args.device, conv, clock) for c, (n, conv) in cases.items()
                if c not in ("6 in turn", "6 nets")}
        runs["6 in turn"] = runs["1 net"][0], lambda i, one=runs["1 net"][1]: sum(one(i) for _ in range(6))
        model, dev = runs["6 grouped"][0], torch.device(args.device)
        convs = [m for m in model.modules() if isinstance(m, models.StackedConv2d)]
        rule = [models.conv_loop(m, dev) for m in convs]  # the path of each layer in a round's stack
        same = ("6 in turn" if models.one_at_a_time(model, dev) else "6 grouped" if not any(rule)
                else "6 loop" if all(rule) else None)  # the case a round runs, where already timed
        if same is None:
            runs["6 nets"] = trainer(cfg, 6, args.device, None, clock)
        best = {c: float("inf") for c in runs}
        for _ in range(args.passes):  # the cases interleaved, pass after pass: the machine's drift hits all alike
            for c, (_, timed) in runs.items():
                best[c] = min(best[c], timed(iters))
        best["6 nets"] = best[same or "6 nets"]
        how = ("one at a time" if same == "6 in turn" else "stacked" + (f", {sum(rule)}/{len(rule)} conv looped"
                                                                         if convs else ""))
        one = best["1 net"]
        print(f"{preset:<9} {cfg.model.name:<14} {cfg.train.batch_size:>5} {cfg.train.precision:>9} |          "
              + " ".join(f"{best[c]:>10.2f}" for c in cases) + " |                "
              + " ".join(f"{best[c] / one:>6.2f}x" for c in ("6 grouped", "6 loop", "6 in turn", "6 nets"))
              + f" | {how}", flush=True)


if __name__ == "__main__":
    main()
