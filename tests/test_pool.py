"""lottery.pool: experiments that differ only in seed, summarized as one study."""
from __future__ import annotations

import io
import json
import sys

import pandas as pd
import pytest

from lottery import pool, summary


def _read(repo, rev: str, path: str) -> str:
    """A DVC output of a revision."""
    from dvc.api import DVCFileSystem

    sha = repo.run("git", "rev-parse", rev).stdout.strip()
    return DVCFileSystem(str(repo.path), rev=sha).read_text(path)


def _csv(repo, rev: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(_read(repo, rev, "metrics/rounds.csv")))


def test_pooling_two_seeds(repo, tmp_path):
    repo.dvc("exp", "run", "-n", "s0", "-S", "trials=1")
    repo.dvc("exp", "run", "-n", "s1", "-S", "trials=1", "-S", "seed=1")
    out = repo.run(sys.executable, "-m", "lottery.pool", "s1", "s0", "-o", "pooled")
    assert "2 experiments, 2 trials (seeds [0, 1])" in out.stdout, out.stdout

    pooled = pd.read_csv(repo.path / "pooled" / "rounds.csv")
    refs = repo.run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    by_name = {r.rsplit("/", 1)[1]: r for r in refs}
    s0, s1 = _csv(repo, by_name["s0"]), _csv(repo, by_name["s1"])
    # Every row of both experiments, trial renumbered in seed order, variant-major like one stack.
    expect = pd.concat([s0, s1.assign(trial=s1["trial"] + 1)], ignore_index=True)
    expect = expect.sort_values(["index", "variant", "trial"], key=lambda c: c.map(
        {"ticket": 0, "reinit": 1, "random": 2}) if c.name == "variant" else c, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(pooled, expect)
    assert sorted(pooled["seed"].unique()) == [0, 1]
    declared = json.loads((repo.path / "pooled" / "summary.json").read_text())
    assert declared == summary.declared(summary.headline(expect, repo.params()["summary"]["tolerance"]))
    for f in ("accuracy.csv", "rounds.json", "report.md", "accuracy.png", "mask_first_layer.png"):
        assert (repo.path / "pooled" / f).is_file(), f
    report = (repo.path / "pooled" / "report.md").read_text()  # which experiments and seeds were pooled
    assert "| experiments | s1 (seeds 1), s0 (seeds 0) |" in report and "| trials | 2 (seeds 0, 1) |" in report

    # The pooled study is the one experiment with trials=2, seed=0 (the committed workspace), row for row
    # and number for number: every draw of a trial derives from its own seed, the validation split from
    # data.split_seed.
    single = _csv(repo, "HEAD")
    pd.testing.assert_frame_equal(pooled, single)
    assert declared == json.loads(_read(repo, "HEAD", "metrics/summary.json"))

    err = repo.run(sys.executable, "-m", "lottery.pool", "s0", "HEAD", check=False)
    assert err.returncode == 2 and err.stderr.strip() == "error: experiments s0 and HEAD both ran trial seed 0", err.stderr


def test_differing_params_are_refused():
    base = {"seed": 0, "trials": 1, "prune": {"rate": 0.2, "chain": {"r1": "r0"}}, "train": {"lr": 0.1}}
    other = {"seed": 1, "trials": 1, "prune": {"rate": 0.3, "chain": {"r1": "r0"}}, "train": {"lr": 0.2}}
    with pytest.raises(pool.PoolError, match=r"^experiments a and b differ in prune.rate, train.lr: only seed may differ$"):
        pool.check({"a": base, "b": other})
    pool.check({"a": base, "b": {**base, "seed": 1}})
    assert pool.round_names({"prune": {"chain": {"r0": "init", "r1": "r0", "r2": "r1"}}}) == ["r0", "r1", "r2"]
    assert pool.round_names({"prune": {"chain": {"r1": "r0", "r2": "r1"}}}) == ["r0", "r1", "r2"]
