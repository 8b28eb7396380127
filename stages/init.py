"""init: the rewind point of every trial (θ0, or θk when rewinding to iteration k) and the dense mask -> runs/init/{model,mask}.pt."""
import argparse
from pathlib import Path

from lottery import config, distributed, rounds
from lottery.cli import run
from lottery.runtime import configure_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="runs/init")
    ap.add_argument("--data", default="data/prepared.pt", help="read only when rewinding to an iteration k > 0")
    args = ap.parse_args()
    cfg = config.load(args.params)
    if rounds.rewind_point(cfg):  # trains the dense networks to θk (in train.world_size processes)
        device = configure_runtime(cfg.train.device, cfg.train.precision)
        distributed.launch(cfg.train, device, rounds.init, cfg, Path(args.out), Path(args.data))
    else:
        rounds.init(cfg, Path(args.out), Path(args.data))
    print(f"[init] {cfg.model.name}: θ0 for seeds {rounds.trial_seeds(cfg)} -> {args.out}")


if __name__ == "__main__":
    run(main)
