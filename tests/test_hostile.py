"""Hostile but fair input, one test per case found (Reliability III): each failed before its fix.

Tampered metadata, bad data, endless jobs, leftover scratch files, a copy of the project without history.
Every case ends in one line naming the offending key, file or split, exit code 2, nothing computed lost.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import SCRATCH, TINY, Repo, _merge, env_for, kill_at_resume_point, ran, retag
from lottery import artifacts, config, resume

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(p: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line a failing command prints (no traceback), exit code 2."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_a_params_digest_tampered_in_an_artifact_stops_the_round_that_reads_it(repo):
    before = (repo.path / "runs/r2/model.pt").read_bytes()
    retag(repo.path / "runs/r1/mask.pt", params="0" * 16)
    p = repo.run(sys.executable, "-m", "stages.round", "r2", "r1", check=False)
    line = one_error_line(p)
    assert line.startswith("error: runs/r1/mask.pt: written with other values of stage 'round@r1's params than "
                           "params.yaml's (params digest '0000000000000000', expected "), line
    assert (repo.path / "runs/r2/model.pt").read_bytes() == before  # nothing overwritten


def test_prepared_data_of_other_params_stops_the_round(repo):
    retag(repo.path / "data/prepared.pt", params="f" * 16)
    line = one_error_line(repo.run(sys.executable, "-m", "stages.round", "r1", "r0", check=False))
    assert line.startswith("error: data/prepared.pt: written with other values of stage 'prepare's params"), line


@pytest.mark.parametrize("key", sorted(config.LIMITS))
def test_every_size_and_count_param_is_bounded(key):
    lo, hi = config.LIMITS[key]
    base = {"prune": {"rounds": 1, "chain": config.chain(1)}, "train": {"iterations": 1000}}
    for bad in (lo - 1, hi + 1):
        raw = json.loads(json.dumps(base))
        *sections, name = key.split(".")
        at = raw
        for section in sections:  # (nested: prune.early_bird.window)
            at = at.setdefault(section, {})
        at[name] = bad
        with pytest.raises(config.ConfigError, match=rf"^{re.escape(key)}: {bad} is not allowed \(an integer in "
                                                     rf"\[{lo:,}, {hi:,}\]\)$"):
            config.from_dict(raw)


def test_an_endless_job_is_refused_by_check_before_any_stage_runs(repo):
    """`-S train.iterations=100000000000000` once started a job with an ETA of 2.7e11 s."""
    before = {p: p.read_bytes() for p in (repo.path / "runs").rglob("*") if p.is_file()}
    repo.set_params({"train": {"iterations": 100_000_000_000_000}})
    line = one_error_line(repo.run(sys.executable, "-m", "stages.check", check=False))
    assert line == "error: train.iterations: 100000000000000 is not allowed (an integer in [1, 10,000,000])", line
    repo.set_params({"train": {"iterations": 1_000_000, "eval_every": 1}})
    line = one_error_line(repo.run(sys.executable, "-m", "stages.check", check=False))
    assert line == ("error: train.eval_every: 1 is not allowed (at most 100,000 validation passes per round: "
                    "train.iterations=1,000,000 needs eval_every >= 10)"), line
    assert before == {p: p.read_bytes() for p in (repo.path / "runs").rglob("*") if p.is_file()}


def test_resume_points_are_one_per_round(tmp_path):
    (tmp_path / "r1-aaaa.pt").write_bytes(b"old inputs")
    (tmp_path / "r10-aaaa.pt").write_bytes(b"another round")
    (tmp_path / "r1.g0-cccc.pt").write_bytes(b"a finished group of r1 (train.stack)")
    assert resume.point(tmp_path, "r1", "bbbb") == tmp_path / "r1-bbbb.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1.g0-cccc.pt", "r10-aaaa.pt"]
    runs = tmp_path / "runs"
    assert resume.sweep(tmp_path, runs) == []  # r1 and r10 unfinished: their files stay
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / "metrics.json").write_text("{}")
    assert resume.sweep(tmp_path, runs) == [tmp_path / "r1.g0-cccc.pt"]  # r1 done: its groups go


def test_a_resume_point_is_swept_once_its_round_is_restored_from_the_run_cache(template, tmp_path):
    """Killed after its first resume point, then restored by DVC from the run-cache: the 12.8 MB file stayed forever."""
    repo = Repo(tmp_path / "repo", env_for(tmp_path))
    shutil.copytree(template.path, repo.path, symlinks=True)
    repo.set_params({"train": {"iterations": 2000, "eval_every": 50, "checkpoint_seconds": 0.2}})
    assert ran(repo.dvc("repro", "round@r1").stdout) == ["dense", "round@r1"]  # now in the run-cache
    kill_at_resume_point(repo, "repro", "-f", "-s", "round@r1")
    points = list((repo.path / SCRATCH).iterdir())
    assert [p.name[:3] for p in points] == ["r1-"]
    out = repo.dvc("repro", "round@r1").stdout
    assert ran(out) == [] and "Stage 'round@r1' is cached - skipping run" in out  # finished by the run-cache
    out = repo.dvc("repro", "round@r1").stdout
    assert f"[check] deleted {SCRATCH / points[0].name}: its round has finished since" in out, out
    assert list((repo.path / SCRATCH).iterdir()) == []


def test_make_repro_works_in_a_copy_without_history(tmp_path):
    """`make repro` of a downloaded copy: `git init`, no commit, then `dvc repro` (DVCLive asked git for a revision)."""
    folder = tmp_path / "copy"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):  # what `git archive` of this working tree holds
        if (ROOT / f).is_file():
            (folder / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, folder / f)
    conf = folder / "conf" / "config.yaml"
    tiny = {**TINY, "trials": 1, "prune": {"rounds": 1}, "train": {**TINY["train"], "iterations": 100}}
    conf.write_text(yaml.safe_dump(_merge(yaml.safe_load(conf.read_text()), tiny), sort_keys=False))
    venv = Path(sys.executable).parents[1]
    make = ["make", f"VENV={venv}", "-o", f"{venv}/.installed"]  # the venv of this run: no second set-up
    env = env_for(tmp_path)
    subprocess.run([*make, "params"], cwd=folder, env=env, check=True, capture_output=True)
    p = subprocess.run([*make, "repro"], cwd=folder, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert ran(p.stdout) == ["prepare", "init", "dense", "round@r1", "summarize"], p.stdout
    assert (folder / ".git").is_dir() and (folder / "metrics" / "summary.json").is_file()


def test_summarize_and_the_ticket_export_check_the_params_digest_too(repo):
    before = {p: p.read_bytes() for p in (repo.path / "metrics").iterdir()}
    retag(repo.path / "runs/r2/mask.pt", params="0" * 16)
    line = one_error_line(repo.run(sys.executable, "-m", "stages.summarize", check=False))
    assert line.startswith("error: runs/r2/mask.pt: written with other values of stage 'round@r2's params"), line
    retag(repo.path / "runs/r2/mask.pt", params=config.artifact_params(config.load(repo.path / "params.yaml"), "r2"))
    retag(repo.path / "runs/init/model.pt", params="0" * 16)  # read by the ticket export alone
    line = one_error_line(repo.run(sys.executable, "-m", "stages.summarize", check=False))
    assert line.startswith("error: runs/init/model.pt: written with other values of stage 'init's params"), line
    assert before == {p: p.read_bytes() for p in (repo.path / "metrics").iterdir()}  # nothing written


def test_the_documented_limits_are_the_enforced_ones():
    text = (ROOT / "docs" / "reliability.md").read_text()
    rows = re.findall(r"^  \| `([\w.]+)` \| ([\d,]+) \| ([\d,]+) \|$", text, flags=re.M)
    documented = {k: (int(lo.replace(",", "")), int(hi.replace(",", ""))) for k, lo, hi in rows}
    assert documented == {**config.LIMITS, "prune.rounds": (0, config.MAX_ROUNDS)}


def test_malformed_files_of_another_commit_are_named_not_a_traceback(repo):
    """A commit's params.yaml or metrics/rounds.csv is not trusted: `instability` and `compare --plot` read them."""
    (repo.path / "metrics" / "rounds.csv").write_text('round,variant\n"r1,ticket\n')  # a quote never closed
    repo.dvc("commit", "-f", "summarize")
    repo.commit("a malformed rounds.csv")
    line = one_error_line(repo.run(sys.executable, "-m", "lottery.compare", "--plot", "x.png", "HEAD", "HEAD~1",
                                   check=False))
    assert line.startswith("error: metrics/rounds.csv of 'HEAD' is malformed (ParserError: "), line
    (repo.path / "params.yaml").write_text("- a list\n")  # YAML, not a mapping
    repo.commit("params a list")
    line = one_error_line(repo.run(sys.executable, "-m", "lottery.instability", "HEAD", "--round", "r1", check=False))
    assert line == "error: params.yaml of 'HEAD' is malformed (a list, expected a dict)", line
    (repo.path / "params.yaml").write_text("seed: [0\n")  # not YAML: DVC itself cannot read that commit's pipeline
    repo.commit("params not YAML")
    line = one_error_line(repo.run(sys.executable, "-m", "lottery.instability", "HEAD", "--round", "r1", check=False))
    assert line.startswith("error: params.yaml of 'HEAD' is malformed (ParserError: "), line
    line = one_error_line(repo.run(sys.executable, "-m", "lottery.compare", "HEAD", "HEAD~2", "--round", "r1",
                                   check=False))
    assert line == ("error: DVC cannot read the pipeline of 'HEAD': unable to read: 'params.yaml', YAML file "
                    "structure is corrupted"), line
