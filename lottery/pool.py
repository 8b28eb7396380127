"""Trials across machines: experiments that differ only in `seed` pooled into one study.

    python -m lottery.pool EXP... [-o DIR]     # EXP: a DVC experiment name, a branch, tag or commit

Each experiment's rounds (runs/<round>/metrics.json, live/ curves, mask.pt) are read from its
revision through DVC (the cache, else the default remote), renumbered trial by trial in seed
order, and summarized by `lottery.summary` into DIR (default metrics-pooled/): summary.json,
rounds.csv, accuracy.csv, rounds.json, figures, report.md (which lists the experiments and seeds pooled).

What pooling equals: every network of trial t depends only on that trial's seed (θ0, data order,
the controls' seeds) and on `data.split_seed` (the validation split), not on the experiment's base
`seed` or the number of trials in its stack. So pooling experiments with seeds 0 and 1 (trials=1)
gives exactly the rows and numbers of one experiment with trials=2, seed=0 (tests/test_pool.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from . import artifacts, summary
from .config import LotteryError, flatten
from .revisions import Revision, RevisionError, parse


class PoolError(LotteryError, ValueError):
    """Experiments that cannot be one study: overlapping seeds or differing params."""


def round_names(params: dict) -> list[str]:
    """r0, then the rounds of prune.chain (which may or may not list r0)."""
    return ["r0", *[k for k in params["prune"]["chain"] if k != "r0"]]


def seeds_of(params: dict) -> list[int]:
    return [params["seed"] + t for t in range(params["trials"])]


def check(studies: dict[str, dict]) -> None:
    """One study: the same params but `seed` (and `trials`), no trial seed twice."""
    (first, base), *rest = studies.items()
    ignore = {"seed", "trials"}
    flat = {k: v for k, v in flatten(base).items() if k not in ignore and not k.startswith("prune.chain")}
    owner: dict[int, str] = {}
    for name, params in studies.items():
        other = {k: v for k, v in flatten(params).items() if k not in ignore and not k.startswith("prune.chain")}
        keys = sorted(k for k in flat.keys() | other.keys() if flat.get(k) != other.get(k))
        if keys:
            raise PoolError(f"experiments {first} and {name} differ in {', '.join(keys)}: only seed may differ")
        for s in seeds_of(params):
            if s in owner:
                raise PoolError(f"experiments {owner[s]} and {name} both ran trial seed {s}")
            owner[s] = name


def fetch(rev: str, dst: Path, repo: str = ".") -> dict:
    """params.yaml and runs/<round>/ of `rev` copied under `dst`; returns the params."""
    r = Revision(rev, repo)
    params = parse(r.read("params.yaml"), "params.yaml", rev, yaml.safe_load)
    try:
        names, _ = round_names(params), seeds_of(params)
    except (TypeError, KeyError, AttributeError):
        raise RevisionError(f"params.yaml of '{rev}' has no prune.chain, seed or trials: not an experiment of this "
                            "project") from None
    for name in names:
        (dst / "runs" / name).mkdir(parents=True, exist_ok=True)
        for f in ("metrics.json", "mask.pt", "live"):
            r.get(f"runs/{name}/{f}", dst / "runs" / name / f, f"did '{rev}' run round {name}?")
    return params


def merge(parts: list[tuple[dict, Path]], names: list[str], out: Path) -> None:
    """One runs/ folder under `out` holding every part's trials, renumbered in seed order."""
    parts = sorted(parts, key=lambda p: p[0]["seed"])
    offsets = [sum(p[0]["trials"] for p in parts[:i]) for i in range(len(parts))]
    for name in names:
        metrics = [json.loads((runs / name / "metrics.json").read_text()) for _, runs in parts]
        variants = list(dict.fromkeys(n["variant"] for n in metrics[0]["networks"]))
        networks = [{**n, "trial": n["trial"] + off} for v in variants for m, off in zip(metrics, offsets)
                    for n in m["networks"] if n["variant"] == v]
        dst = out / name
        dst.mkdir(parents=True, exist_ok=True)
        artifacts.atomic_write_bytes(dst / "metrics.json",
                                     (json.dumps({**metrics[0], "networks": networks}, indent=1) + "\n").encode())
        for (_, runs), off in zip(parts, offsets):
            for tsv in (runs / name / "live" / "plots" / "metrics").glob("*/*/*.tsv"):
                to = dst / "live" / "plots" / "metrics" / tsv.parent.parent.name / str(int(tsv.parent.name) + off)
                to.mkdir(parents=True, exist_ok=True)
                shutil.copy2(tsv, to / tsv.name)
        loaded = [artifacts.load(runs / name / "mask.pt", "mask") for _, runs in parts]
        mask = {k: torch.cat([m[k] for m, _ in loaded]) for k in loaded[0][0]}
        seeds = [s for p, _ in parts for s in seeds_of(p)]
        artifacts.save(dst / "mask.pt", mask, {**loaded[0][1], "seeds": seeds, "pooled": True})


def pool(revs: list[str], out: Path, repo: str = ".", log=print) -> dict:
    """Pool the experiments `revs` into `out`; returns the headline numbers (summary.headline)."""
    if len(set(revs)) != len(revs):
        raise PoolError(f"an experiment is named twice: {' '.join(revs)}")
    with tempfile.TemporaryDirectory(prefix="lottery-pool-") as tmp:
        fetched = {rev: (fetch(rev, Path(tmp) / str(i), repo), Path(tmp) / str(i) / "runs")
                   for i, rev in enumerate(revs)}
        studies = {rev: params for rev, (params, _) in fetched.items()}
        check(studies)
        params = next(iter(studies.values()))
        names = round_names(params)
        merged = Path(tmp) / "merged"
        merge(list(fetched.values()), names, merged)
        seeds = sorted(s for p in studies.values() for s in seeds_of(p))
        settings = {**summary.settings(params, summary.commit(repo), seeds),
                    "experiments": ", ".join(f"{rev} (seeds {summary.format_seeds(seeds_of(p))})" for rev, p in studies.items())}
        study = summary.collect(merged, names)
        result, files = summary.outputs(study, params["summary"]["tolerance"], settings)
        summary.write(files, out)
    log(summary.format_table(study.df))
    log(f"[pool] {len(revs)} experiments, {len(seeds)} trials (seeds {seeds}) -> {out}/")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="+", metavar="EXP")
    ap.add_argument("-o", "--out", default="metrics-pooled")
    args = ap.parse_args()
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise PoolError(f"-o {args.out!r} is a file, not a folder")
    pool(args.experiments, Path(args.out))


if __name__ == "__main__":
    from .cli import run

    run(main)
