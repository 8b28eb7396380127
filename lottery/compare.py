"""Mask overlap between two experiments' tickets at the same round (Jaccard per layer and trial), and
several experiments' accuracy against weights remaining on one figure (e.g. IMP vs SNIP vs SynFlow).

    python -m lottery.compare <exp-or-rev-a> <exp-or-rev-b> --round r3
    python -m lottery.compare --plot out.png <exp-or-rev> [<exp-or-rev> ...]

Each side is a git revision or a DVC experiment name; masks and metrics/rounds.csv are read from the DVC cache.
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import torch

from . import artifacts
from .cli import output
from .config import LotteryError
from .revisions import Revision, RevisionError, parse


class CompareError(LotteryError, ValueError):
    """Two masks that cannot be compared."""


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
        raise CompareError("the two masks belong to different models or trial counts")
    out = {}
    for k in a:
        inter = (a[k] & b[k]).flatten(1).sum(1).double()
        union = (a[k] | b[k]).flatten(1).sum(1).double()
        out[k] = (inter / union.clamp(min=1)).tolist()
    return out


def read_rounds(rev: str):
    """The tidy table metrics/rounds.csv of `rev` (one row per round x variant x trial)."""
    import pandas as pd

    data = Revision(rev).read("metrics/rounds.csv", "did its summarize stage run?")
    df = parse(data, "metrics/rounds.csv", rev, lambda b: pd.read_csv(io.BytesIO(b)))
    missing = [c for c in ("variant", "weights_remaining", "test_accuracy") if c not in df]
    if missing:
        raise RevisionError(f"metrics/rounds.csv in '{rev}' has no column {missing[0]!r}")
    return df


def plot(tables: dict, out: Path) -> Path:
    """Test accuracy against weights remaining, one colour per experiment (label: name and criterion, and
    'early-bird' for an experiment whose rounds pruned early-bird weights), the ticket solid and each control
    dashed, mean and min/max band over trials; log x axis, sparsest right."""
    from .summary import VARIANTS, _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    styles = {"ticket": "-", "reinit": "--", "random": ":", "invert": "-.", "rigl": (0, (5, 1, 1, 1, 1, 1)),
              "set": (0, (1, 1))}
    for colour, (rev, df) in enumerate(tables.items()):
        bird = ", early-bird" if "early_bird_iteration" in df and df["early_bird_iteration"].notna().any() else ""
        crit = f" ({df['criterion'].iloc[-1]}, at {df['at'].iloc[-1]}{bird})" if "criterion" in df else ""
        for v in [v for v in VARIANTS if v in set(df["variant"])]:
            g = df[df["variant"] == v].groupby("round")
            s = g[["weights_remaining", "test_accuracy"]].mean().join(g["test_accuracy"].agg(["min", "max"]))
            s = s.sort_values("weights_remaining", ascending=False)
            ax.plot(s["weights_remaining"], s["test_accuracy"], ls=styles[v], color=f"C{colour}", marker="o", ms=2.5,
                    label=f"{rev}{crit}: {v}")
            ax.fill_between(s["weights_remaining"], s["min"], s["max"], color=f"C{colour}", alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("percent of weights remaining (log)")
    ax.set_ylabel("test accuracy at early stop (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2, title="mean, min-max over trials", title_fontsize=7)
    _save(fig, out)
    plt.close(fig)
    return out


def read_mask(rev: str, round_name: str) -> dict[str, torch.Tensor]:
    """The round's ticket mask in `rev`, loaded and checked by `artifacts.load` (from a temporary copy)."""
    blob = Revision(rev).round_file(round_name, "mask.pt")
    path = f"runs/{round_name}/mask.pt"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "mask.pt"
        copy.write_bytes(blob)
        try:
            mask, _ = artifacts.load(copy, "mask", {"round": round_name})
        except artifacts.ArtifactError as e:
            raise RevisionError(f"{path} in '{rev}': {str(e).replace(str(copy) + ': ', '')}") from None
    return mask


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revs", nargs="+", metavar="rev", help="experiment names or git revisions")
    ap.add_argument("--round", help="round whose ticket masks to compare, e.g. r3 (two revisions)")
    ap.add_argument("--plot", type=Path, metavar="OUT.png", help="overlay the revisions' accuracy curves in this image")
    args = ap.parse_args(argv)
    if args.plot:
        out = output(args.plot, "--plot")
        print(f"wrote {plot({rev: read_rounds(rev) for rev in args.revs}, out)}")
        return
    if len(args.revs) != 2 or not args.round:
        ap.error("mask overlap needs exactly two revisions and --round (or --plot OUT.png for the accuracy figure)")
    args.a, args.b = args.revs
    ja = jaccard(read_mask(args.a, args.round), read_mask(args.b, args.round))
    print(f"Jaccard overlap of the {args.round} ticket masks, {args.a} vs {args.b}")
    for layer, values in ja.items():
        print(f"  {layer:<20} " + "  ".join(f"trial {t}: {v:.4f}" for t, v in enumerate(values)))


if __name__ == "__main__":
    from .cli import run

    run(main)
