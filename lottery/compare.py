"""Mask overlap between two experiments' tickets at the same round (Jaccard per layer and trial).

    python -m lottery.compare <exp-or-rev-a> <exp-or-rev-b> --round r3

Each side is a git revision or a DVC experiment name; its mask is read from the DVC cache.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import torch

from . import artifacts
from .config import ROUND_NAME


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
    """The round's ticket mask in `rev`, loaded and checked by `artifacts.load` (from a temporary copy)."""
    import dvc.api
    from dvc.exceptions import PathMissingError
    from dvc.scm import RevError

    if not re.fullmatch(ROUND_NAME, round_name):
        raise SystemExit(f"error: --round {round_name!r} is not a round name of '{rev}' (r<digits>: r0 is dense, "
                         "r1 the first pruned round)")
    path = f"runs/{round_name}/mask.pt"
    try:
        blob = dvc.api.read(path, rev=rev, mode="rb")
    except RevError:
        raise SystemExit(f"error: '{rev}' is neither an experiment nor a git revision of this repository (dvc exp show lists them)")
    except (FileNotFoundError, PathMissingError):  # dvc.api.read raises PathMissingError for a path it cannot find
        raise SystemExit(f"error: round {round_name} is not in '{rev}': {path} does not exist there "
                         f"(its prune.rounds is smaller, or it never ran that round)") from None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "mask.pt"
        copy.write_bytes(blob)
        try:
            mask, _ = artifacts.load(copy, "mask", {"round": round_name})
        except artifacts.ArtifactError as e:
            raise SystemExit(f"error: {path} in '{rev}': {str(e).replace(str(copy) + ': ', '')}") from None
    return mask


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
