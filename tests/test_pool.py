"""lottery.pool: experiments that differ only in seed, summarized as one study."""
from __future__ import annotations

import io
import json
import sys

import pandas as pd
import pytest

from lottery import pool, summary


def _csv(repo, rev: str) -> pd.DataFrame:
    """metrics/rounds.csv (a DVC output) of a revision."""
    from dvc.api import DVCFileSystem

    sha = repo.run("git", "rev-parse", rev).stdout.strip()
    return pd.read_csv(io.StringIO(DVCFileSystem(str(repo.path), rev=sha).read_text("metrics/rounds.csv")))


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

    # Against one experiment with trials=2, seed=0 (the committed workspace). Trial 0's ticket and reinit
    # networks are the same, row for row, whether their stack held 1 or 2 trials ...
    single = _csv(repo, "HEAD")

    def rows(df, trial, variants):
        return df[(df.trial == trial) & df.variant.isin(variants)].reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(pooled, 0, ["ticket", "reinit"]), rows(single, 0, ["ticket", "reinit"]))
    # ... but not its random control: one generator, seeded by trial 0's mask_seed, draws the random masks of
    # every trial of the stack (rounds.build_stack), so the draw depends on the number of trials.
    assert rows(pooled, 0, ["random"])["mask_seed"].equals(rows(single, 0, ["random"])["mask_seed"])
    assert not rows(pooled, 0, ["random"]).equals(rows(single, 0, ["random"]))
    # Trial 1 of the pooled study (seed 1) is not trial 1 of seed=0, trials=2: prepare draws the validation
    # split from the base seed, and the controls' seeds derive from (base seed, trial index, round).
    assert not rows(pooled, 1, ["ticket"])["test_accuracy"].equals(rows(single, 1, ["ticket"])["test_accuracy"])

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
