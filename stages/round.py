"""round: prune the previous round's ticket, rewind (rewind.to: θ0, θk, lr or finetune), train ticket and controls -> runs/<round>/."""
import time

STARTED = time.perf_counter()  # before `import torch`: the stage's start-up is logged

import argparse  # noqa: E402
from pathlib import Path

from lottery import config, distributed, rounds  # noqa: E402
from lottery.cli import run  # noqa: E402
from lottery.runtime import configure_runtime  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("round", help="this round, e.g. r3")
    ap.add_argument("prev", help="the round it prunes, e.g. r2 (init for r0)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--resume-dir", default=".dvc/tmp/lottery-resume",
                    help="undeclared scratch folder for periodic resume points (deleted on success)")
    args = ap.parse_args()
    cfg = config.load(args.params)
    names = config.round_names(cfg.prune)
    if args.round not in names:
        raise config.ConfigError(f"round {args.round!r} is not a round of this experiment: r0 to {names[-1]} "
                                 f"(prune.rounds={cfg.prune.rounds})")
    device = configure_runtime(cfg.train.device, cfg.train.precision)
    distributed.launch(cfg.train, device, rounds.run_round, cfg, args.round, args.prev, Path(args.runs),
                       Path(args.data), resume_dir=Path(args.resume_dir), started=STARTED)


if __name__ == "__main__":
    run(main)
