"""prepare: the raw files data/raw.json lists (digests verified) -> data/prepared.pt (train / validation / test tensors)."""
import argparse
from pathlib import Path

from lottery import config, data, raw
from lottery.cli import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default="data/raw.json", help="written by the check stage")
    ap.add_argument("--out", default="data/prepared.pt")
    args = ap.parse_args()
    cfg = config.load(args.params)
    tensors = data.prepare(cfg, raw.read_record(args.raw, cfg.data.dataset))
    data.save_prepared(tensors, Path(args.out), data.prepared_params(cfg))
    print(f"[prepare] {cfg.data.dataset}: {len(tensors['y_train'])} train / {len(tensors['y_val'])} validation "
          f"/ {len(tensors['y_test'])} test -> {args.out}")


if __name__ == "__main__":
    run(main)
