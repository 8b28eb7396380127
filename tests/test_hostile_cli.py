"""Hostile input to every documented command (README): a nonexistent experiment or revision, a malformed round, a
detached HEAD left by a killed `dvc exp run`; and the DVC-level cases (a params file missing keys, prune.rounds
out of range, a module of Python itself as a factory). Each is one line naming the thing, exit 2 (DVC's
own commands: its one ERROR line), no traceback.

One copied repository serves every command case (module scope, no training)."""
from __future__ import annotations

import shutil
import sys

import pytest
import yaml
from conftest import Repo, env_for, ran

NOSUCH = "'nosuch-exp' is neither an experiment nor a git revision of this repository"
ROUND = "--round 'r1x' is not a round name of 'HEAD' (r<digits>"
ABSENT = "round r9 is not in 'HEAD'"

# (command and arguments, what its one stderr line must say)
CASES = {
    "compare-nonexistent": (["lottery.compare", "HEAD", "nosuch-exp", "--round", "r1"], NOSUCH),
    "compare-plot-nonexistent": (["lottery.compare", "--plot", "x.png", "HEAD", "nosuch-exp"], NOSUCH),
    "compare-malformed-round": (["lottery.compare", "HEAD", "HEAD", "--round", "r1x"], ROUND),
    "compare-absent-round": (["lottery.compare", "HEAD", "HEAD", "--round", "r9"], ABSENT),
    "pool-nonexistent": (["lottery.pool", "nosuch-exp"], NOSUCH),
    "pool-output-is-a-file": (["lottery.pool", "HEAD", "-o", "params.yaml"], "-o 'params.yaml' is a file, not a folder"),
    "instability-nonexistent": (["lottery.instability", "nosuch-exp"], NOSUCH),
    "instability-malformed-round": (["lottery.instability", "HEAD", "--round", "r1x"], ROUND),
    "ticket-nonexistent": (["lottery.ticket", "nosuch-exp", "--round", "r1"], NOSUCH),
    "ticket-malformed-round": (["lottery.ticket", "HEAD", "--round", "r1x"], ROUND),
    "ticket-absent-round": (["lottery.ticket", "HEAD", "--round", "r9"], ABSENT),
    "cluster-nonexistent-remote": (["lottery.cluster", "--dvc-remote", "nosuch"], "no DVC remote nosuch"),
    "cluster-malformed-name": (["lottery.cluster", "--name", "a/b"], "--name 'a/b' is not a valid experiment name"),
    "cluster-malformed-round": (["lottery.cluster", "-S", "prune.rounds=r1"],
                                "-S prune.rounds=r1: prune.rounds: 'r1' is not allowed (an integer in [0, 100])"),
    "round-stage-malformed-round": (["stages.round", "x", "r0"], "round 'x' is not a round of this experiment: r0 to r2"),
    "round-stage-absent-round": (["stages.round", "r9", "r8"], "round 'r9' is not a round of this experiment: r0 to r2"),
    "params-nonexistent-key": (["lottery.params", "nosuch=1"], "Could not override 'nosuch'"),
    "params-malformed-round": (["lottery.params", "prune.rounds=r1"], "prune.rounds: 'r1' is not allowed (an integer in [0, 100])"),
}


@pytest.fixture(scope="module")
def killed(template, tmp_path_factory) -> tuple[Repo, str]:
    """The template as a `dvc exp run` killed after its commit leaves a repository (DVC's WorkspaceExecutor:
    HEAD detached at the experiment's commit, refs/exps/exec/EXEC_BASELINE at the baseline; here the commit
    before any result). DVC's own resolve_rev reads HEAD as that baseline. Returns the repo and HEAD's sha."""
    tmp = tmp_path_factory.mktemp("killed")
    shutil.copytree(template.path, tmp / "repo", symlinks=True)
    repo = Repo(tmp / "repo", env_for(tmp))
    repo.run("git", "update-ref", "refs/exps/exec/EXEC_BASELINE", "HEAD~1")
    repo.run("git", "checkout", "-q", "--detach", "HEAD")
    return repo, repo.run("git", "rev-parse", "HEAD").stdout.strip()


def one_line(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stdout, p.stdout + p.stderr
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_every_command_names_a_bad_experiment_round_or_path_in_one_line(killed, case):
    repo, _ = killed
    argv, says = CASES[case]
    params = (repo.path / "params.yaml").read_bytes()
    p = repo.run(sys.executable, "-m", *argv, check=False)
    assert p.returncode == 2 and says in one_line(p), p.stderr
    assert (repo.path / "params.yaml").read_bytes() == params  # nothing rewritten


def test_head_is_the_commit_checked_out_after_a_killed_exp_run(killed):
    repo, sha = killed
    compare = repo.run(sys.executable, "-m", "lottery.compare", "HEAD", sha, "--round", "r1")
    assert compare.stdout.startswith(f"Jaccard overlap of the r1 ticket masks, HEAD vs {sha}\n")
    assert compare.stdout.count("trial 0: 1.0000  trial 1: 1.0000") == 3, compare.stdout  # the same commit
    repo.run(sys.executable, "-m", "lottery.ticket", "HEAD", "--round", "r2", "-o", "r2.pt")
    assert (repo.path / "r2.pt").read_bytes() == (repo.path / "metrics/ticket.pt").read_bytes()  # summarize's: r2
    inst = repo.run(sys.executable, "-m", "lottery.instability", "HEAD", "--round", "r1", check=False)
    assert inst.returncode == 2 and one_line(inst) == ("error: runs/r0/metrics.json of 'HEAD' has no instability: run "
                                                       "it with -S instability.enabled=true")
    repo.run(sys.executable, "-m", "lottery.pool", "HEAD", "-o", "pooled")
    assert (repo.path / "pooled/rounds.csv").read_bytes() == (repo.path / "metrics/rounds.csv").read_bytes()


# ---------------------------------------------------------------- DVC-level cases

def test_prune_rounds_out_of_range_is_our_one_line_in_dvc_exp_run(repo):
    """The chain resolver runs inside DVC's Hydra composition: its error is DVC's own ERROR line, not an
    'unexpected error' with DVC's support footer."""
    params = (repo.path / "params.yaml").read_bytes()
    for value in ("1000", "-1"):
        p = repo.dvc("exp", "run", "-S", f"prune.rounds={value}", check=False)
        assert p.returncode != 0 and ran(p.stdout) == []
        assert p.stderr.strip() == f"ERROR: prune.rounds: {value} is not allowed (an integer in [0, 100])", p.stderr
    assert (repo.path / "params.yaml").read_bytes() == params


def test_a_params_file_missing_keys_stops_at_check_naming_the_key(repo):
    params = repo.params()
    del params["train"]["lr"]
    (repo.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = repo.dvc("repro", check=False)
    assert p.returncode != 0 and ran(p.stdout) == []
    assert "error: params.yaml: train.lr is missing; params.yaml is generated from conf/config.yaml" in p.stderr, p.stderr


def test_an_empty_params_file_is_named_by_lottery_params_check(repo):
    (repo.path / "params.yaml").write_text("")
    p = repo.dvc("repro", check=False)  # DVC reads dvc.yaml's `foreach: ${prune.chain}` before any stage: its line
    assert p.returncode != 0 and "Could not find 'prune.chain'" in p.stderr and ran(p.stdout) == []
    p = repo.run(sys.executable, "-m", "lottery.params", "--check", check=False)
    assert p.returncode == 2 and one_line(p) == ("error: params.yaml is empty (params.yaml is generated from "
                                                 "conf/config.yaml: `make params` or `dvc exp run` rewrites it)")
    assert (repo.path / "params.yaml").read_text() == ""


@pytest.mark.parametrize("key, what", [("model.name", "network factory"), ("data.dataset", "dataset loader")])
def test_a_module_of_python_itself_is_named_as_not_a_factory(repo, key, what):
    p = repo.dvc("exp", "run", "-S", f"{key}=os:getcwd", check=False)
    assert p.returncode != 0 and ran(p.stdout) == []
    assert f"error: {key}: 'os:getcwd': module 'os' exists but is part of Python itself" in p.stderr, p.stderr
    assert f"so 'getcwd' is not a {what}" in p.stderr
