"""transfer: `source` materialises transfer.source's round mask and θ0 under runs/transfer/source/ (refusing what
cannot transfer, by name); `train` trains it here beside its controls -> runs/transfer/ (lottery.transfer)."""
import argparse
from pathlib import Path

from lottery import config, distributed, transfer
from lottery.cli import run
from lottery.runtime import configure_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("step", choices=["source", "train"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--data", default="data/prepared.pt")
    ap.add_argument("--resume-dir", default=".dvc/tmp/lottery-resume",
                    help="undeclared scratch folder for periodic resume points (deleted on success)")
    args = ap.parse_args()
    cfg = config.load(args.params)
    if not cfg.transfer.source:
        raise config.ConfigError("transfer.source is '': no ticket to transfer (an experiment name or git revision)")
    if args.step == "source":
        transfer.fetch(cfg, Path(args.runs))
        return
    device = configure_runtime(cfg.train.device, cfg.train.precision)
    distributed.launch(cfg.train, device, transfer.run, cfg, Path(args.runs), Path(args.data),
                       resume_dir=Path(args.resume_dir))


if __name__ == "__main__":
    run(main)
