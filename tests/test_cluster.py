"""lottery.cluster: a sweep of DVC experiments on a real local Ray cluster (a head and a worker node,
one CPU each), a folder DVC remote and a bare git remote."""
from __future__ import annotations

import json
import re
import sys

import pytest

from lottery import cluster

SWEEP = ["-S", "trials=1", "-S", "prune.rounds=1", "-S", "prune.rate=0.3,0.5"]


def _remotes(repo, tmp_path) -> None:
    origin = tmp_path / "origin.git"
    repo.run("git", "init", "-q", "--bare", str(origin))
    repo.run("git", "remote", "add", "origin", str(origin))
    repo.dvc("remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"))
    repo.commit("add remote")
    repo.run("git", "push", "-q", "origin", "main")


def _metrics(repo) -> dict[str, dict]:
    """Experiment name -> (prune.rate, metrics/summary.json) from the workspace's `dvc exp show`."""
    out = {}
    for row in json.loads(repo.dvc("exp", "show", "--json").stdout):
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev["data"]
                out[rev["name"]] = (data["params"]["params.yaml"]["data"]["prune"]["rate"],
                                    data["metrics"]["metrics/summary.json"]["data"])
    return out


def test_sweep_expansion_is_dvcs():
    assert cluster.sweep(["prune.rate=0.1,0.2", "seed=0,100", "trials=1"]) == [
        ["prune.rate=0.1", "seed=0", "trials=1"], ["prune.rate=0.1", "seed=100", "trials=1"],
        ["prune.rate=0.2", "seed=0", "trials=1"], ["prune.rate=0.2", "seed=100", "trials=1"]]
    assert cluster.sweep([]) == [[]]


def test_bad_input_is_refused_before_any_task(repo, tmp_path):
    cmd = [sys.executable, "-m", "lottery.cluster", "--address", "127.0.0.1:1"]
    p = repo.run(*cmd, "-S", "prune.rate=0.3,7", check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "prune.rate" in p.stderr, p.stderr
    p = repo.run(*cmd, check=False)  # no remotes yet
    assert p.returncode == 2 and "no DVC remote" in p.stderr, p.stderr
    _remotes(repo, tmp_path)
    (repo.path / "lottery" / "masks.py").write_text((repo.path / "lottery" / "masks.py").read_text() + "\n# edit\n")
    p = repo.run(*cmd, check=False)
    assert p.returncode == 2 and "uncommitted code changes in lottery/masks.py" in p.stderr, p.stderr
    repo.run("git", "checkout", "lottery/masks.py")
    p = repo.run(*cmd, check=False)
    assert p.returncode == 2 and "no Ray cluster at 127.0.0.1:1" in p.stderr and "ray start --head" in p.stderr, p.stderr


@pytest.fixture
def ray_cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def test_sweep_on_two_nodes_matches_local_runs_and_reruns_restore(repo, tmp_path, ray_cluster):
    _remotes(repo, tmp_path)
    cmd = [sys.executable, "-m", "lottery.cluster", "--address", ray_cluster.address, "--name", "sw", *SWEEP]
    out = repo.run(*cmd).stdout
    for name in ("sw-1", "sw-2"):
        assert f"[{name}] queued" in out and re.search(rf"\[{name}\] running on node \w+", out), out
        done = re.search(rf"\[{name}\] done on node \w+: dense [\d.]+%.*trained \d stage\(s\): (.*)", out)
        assert done and "round@r1" in done[1], out
    assert "pulled 2 experiment(s)" in out
    shown = _metrics(repo)
    assert {shown["sw-1"][0], shown["sw-2"][0]} == {0.3, 0.5}, shown

    # The same experiments, run locally one by one, give the same metrics.
    for name, (rate, metrics) in [(n, shown[n]) for n in ("sw-1", "sw-2")]:
        repo.dvc("exp", "run", "-n", f"local-{rate}", "-S", "trials=1", "-S", "prune.rounds=1", "-S", f"prune.rate={rate}")
        assert _metrics(repo)[f"local-{rate}"][1] == metrics

    # The same sweep again: every stage restored from the shared remote, nothing trained.
    again = repo.run(*cmd).stdout
    assert again.count("trained 0 stage(s): none (all restored)") == 2, again
    assert {k: v for k, v in _metrics(repo).items() if k.startswith("sw-")} == {k: shown[k] for k in ("sw-1", "sw-2")}
