"""Mask overlap between two experiments' tickets at the same round (Jaccard per layer and trial).

    python -m lottery.compare <exp-or-rev-a> <exp-or-rev-b> --round r3

Each side is a git revision or a DVC experiment name; its mask is read from the DVC cache.
"""
from __future__ import annotations

import argparse
import io
import sys

import torch


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
        raise ValueError("the two masks belong to different models or trial counts")
    out = {}
    for k in a:
        inter = (a[k] & b[k]).flatten(1).sum(1).double()
        union = (a[k] | b[k]).flatten(1).sum(1).double()
        out[k] = (inter / union.clamp(min=1)).tolist()
    return out


def read_mask(rev: str, round_name: str) -> dict[str, torch.Tensor]:
    import dvc.api
    from dvc.scm import RevError

    path = f"runs/{round_name}/mask.pt"
    try:
        with dvc.api.open(path, rev=rev, mode="rb") as f:
            obj = torch.load(io.BytesIO(f.read()), weights_only=True)
    except RevError:
        raise SystemExit(f"error: '{rev}' is neither an experiment nor a git revision of this repository (dvc exp show lists them)")
    except FileNotFoundError:
        raise SystemExit(f"error: {path} does not exist in '{rev}' (did that experiment run round {round_name}?)")
    return obj["tensors"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--round", required=True, help="round to compare, e.g. r3")
    args = ap.parse_args(argv)
    ja = jaccard(read_mask(args.a, args.round), read_mask(args.b, args.round))
    print(f"Jaccard overlap of the {args.round} ticket masks, {args.a} vs {args.b}")
    for layer, values in ja.items():
        print(f"  {layer:<20} " + "  ".join(f"trial {t}: {v:.4f}" for t, v in enumerate(values)))


if __name__ == "__main__":
    main(sys.argv[1:])
