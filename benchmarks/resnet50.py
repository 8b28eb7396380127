"""Images/s of one ResNet-50 training step, as a round of the `imagenet-resnet50` preset runs it.

One network (`models.build("resnet-50")`), moved with `models.to_device` (channels-last on CUDA), one
masked SGD step (momentum 0.9, weight decay 1e-4; half of every conv layer pruned, as in a round after
r0) through `lottery.step.Step` under `train.precision`'s autocast, with the round's process settings
(`configure_runtime`: deterministic cuDNN on CUDA). No CUDA graph: the preset augments its data, and the
training loop replays graphs only without augmentation. The batch is random and already on the device:
this is the model's step, not the data loader's throughput. Prints images/s and, from it, the computed
time of one round of the preset (iterations x global batch / (images/s per device x N devices)).

    python benchmarks/resnet50.py                       # CPU, batch 8 at 64x64
    python benchmarks/resnet50.py --device cuda --precision bfloat16 --batch 256 --image-size 224

`--fast-cudnn` measures without deterministic kernels (cudnn.benchmark on): what determinism costs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lottery

from lottery import masks, models  # noqa: E402
from lottery.config import TrainConfig  # noqa: E402
from lottery.runtime import configure_runtime  # noqa: E402
from lottery.step import Step  # noqa: E402
from lottery.training import autocast  # noqa: E402

ITERATIONS, GLOBAL_BATCH = 111_724, 1024  # conf/experiment/imagenet-resnet50.yaml: 90 epochs at batch 1024


def images_per_second(device: str, precision: str, batch: int, size: int, steps: int, warmup: int,
                      classes: int = 1000, fast_cudnn: bool = False) -> float:
    dev = configure_runtime(device, precision)
    if fast_cudnn and dev.type == "cuda":
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    model = models.to_device(models.build("resnet-50", [0], classes, (3, size, size)), dev)
    g = torch.Generator().manual_seed(0)
    convs = [k for k, kind in models.kinds(model).items() if kind == "conv"]
    mask = {k: (torch.rand(m.shape, generator=g) > 0.5 if k in convs else m).to(dev)
            for k, m in masks.ones(model, models.prunable(model)).items()}
    x = torch.randn(1, batch, 3, size, size, generator=g).to(dev)
    y = torch.randint(0, classes, (1, batch), generator=g).to(dev)

    def losses(idx: torch.Tensor) -> torch.Tensor:
        with autocast(dev, precision):
            out = model(x)
        return F.cross_entropy(out.float().transpose(1, 2), y, reduction="none").mean(1)

    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=batch)
    model.train()
    step = Step(model, mask, cfg, losses, graph=False, log=lambda *_: None)
    idx = torch.zeros(1, dtype=torch.long)
    for _ in range(warmup):
        step(idx)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step(idx)
    sync()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["float32", "tf32", "bfloat16"], default="float32")
    ap.add_argument("--batch", type=int, default=8, help="images per step on this device")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--fast-cudnn", action="store_true", help="no deterministic kernels, cudnn.benchmark on")
    args = ap.parse_args()
    rate = images_per_second(args.device, args.precision, args.batch, args.image_size, args.steps, args.warmup,
                             fast_cudnn=args.fast_cudnn)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"resnet-50 training step  {name}  {args.precision}  batch {args.batch}  {args.image_size}x"
          f"{args.image_size}{'  fast cuDNN' if args.fast_cudnn else ''}")
    print(f"{rate:,.2f} images/s  ({1000 * args.batch / rate:,.1f} ms per step)")
    if args.image_size == 224:
        print(f"one round of imagenet-resnet50 ({ITERATIONS:,} iterations x {GLOBAL_BATCH} images), one network, "
              "computed from this rate, linear scaling assumed:")
        for n in (1, 8, 64):
            print(f"  {n:>2} device(s): {ITERATIONS * GLOBAL_BATCH / (rate * n) / 3600:8.1f} h")


if __name__ == "__main__":
    main()
