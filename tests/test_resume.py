"""Crash safety: a resumed training equals an uninterrupted one bit for bit, also after `kill -9`."""
from __future__ import annotations

import shutil
import sys

import pytest
import torch

from conftest import SCRATCH, Repo, env_for, kill_at_resume_point, ran
from lottery import masks, models
from lottery.config import TrainConfig
from lottery.data import TensorData
from lottery.training import train


class Crash(Exception):
    pass


def _data(n=300):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 40, generator=g)
    y = (x[:, :10].argmax(1))
    return TensorData(x, y, x[:50], y[:50], x[50:100], y[50:100])


def _run(resume_dir, crash_at=None, **train_kw):
    model = models.build("mlp-mnist1d", [3, 4])
    mask = masks.ones(model, models.prunable(model))
    cfg = TrainConfig(iterations=120, eval_every=10, batch_size=16, log_every=10, **train_kw)

    def log(line):
        if crash_at and f"it {crash_at:>6}/" in line:
            raise Crash(line)

    result = train(model, mask, _data(), cfg, [3, 4], log=log, resume_dir=resume_dir, checkpoint_seconds=0.0)
    return model, result


@pytest.mark.parametrize("train_kw", [dict(), dict(warmup=30, lr_drops=[90]), dict(sparse="on")],
                         ids=["adam", "adam-schedule", "adam-sparse"])
def test_resumed_training_is_bit_identical(tmp_path, train_kw):
    # the schedule sets the lr of the optimizer's param group, a new dict after the resume's load_state_dict
    ref_model, ref = _run(None, **train_kw)
    try:
        _run(tmp_path, crash_at=70, **train_kw)
    except Crash:
        pass
    else:
        raise AssertionError("the crash hook did not fire")
    assert len(list(tmp_path.glob("*.pt"))) == 1  # the resume point survived the crash
    model, result = _run(tmp_path, **train_kw)
    for (k, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    assert result == ref
    assert list(tmp_path.glob("*.pt")) == []  # deleted on success


def test_kill_9_during_a_round_then_repro_matches_an_uninterrupted_run(template, tmp_path):
    # long enough for round@r1 to be killed mid-training; r2 and summarize add nothing to what is checked
    longer = {"train": {"iterations": 2000, "eval_every": 50, "checkpoint_seconds": 0.2}}
    reference = Repo(tmp_path / "ref", env_for(tmp_path))
    shutil.copytree(template.path, reference.path, symlinks=True)
    reference.set_params(longer)
    assert ran(reference.dvc("repro", "round@r1").stdout) == ["dense", "round@r1"]

    repo = Repo(tmp_path / "killed", env_for(tmp_path))
    shutil.copytree(template.path, repo.path, symlinks=True)
    repo.set_params(longer)
    scratch = repo.path / SCRATCH
    kill_at_resume_point(repo, "repro", "round@r1")  # once round@r1 has written a resume point
    assert not (repo.path / "runs/r1/model.pt").exists()  # no stale partial output
    assert not list((repo.path / "runs/r1").glob(".*.tmp")) if (repo.path / "runs/r1").exists() else True

    out = repo.dvc("repro", "round@r1").stdout
    assert ran(out) == ["round@r1"] and "resumed from" in out  # the finished dense round is not recomputed
    for r in ("r0", "r1"):
        for f in ("mask.pt", "model.pt", "controls.pt", "metrics.json"):
            assert (repo.path / "runs" / r / f).read_bytes() == (reference.path / "runs" / r / f).read_bytes(), (r, f)
    assert list(scratch.glob("*.pt")) == []
