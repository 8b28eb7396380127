"""Scale-out on DVC's own engines: the experiment queue and a shared remote."""
from __future__ import annotations

import json

from conftest import Repo, ran, run_queue


def test_queue_runs_two_experiments(repo):
    repo.dvc("exp", "run", "--queue", "-S", "prune.rate=0.3", "-S", "prune.rounds=1")
    repo.dvc("exp", "run", "--queue", "-S", "prune.rate=0.5", "-S", "prune.rounds=1")
    status = run_queue(repo)
    repo.dvc("queue", "stop", "--kill", check=False)
    assert "Success" in status and "Failed" not in status, status
    rows = json.loads(repo.dvc("exp", "show", "--json").stdout)
    rates = []
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs", []):
                params = rev["data"]["params"]["params.yaml"]["data"]
                rates.append(params["prune"]["rate"])
    assert sorted(rates) == [0.3, 0.5], rates


def test_fresh_clone_pulls_every_round_and_trains_nothing(repo, tmp_path):
    remote, origin = tmp_path / "dvc-remote", tmp_path / "origin.git"
    repo.run("git", "init", "-q", "--bare", str(origin))
    repo.run("git", "remote", "add", "origin", str(origin))
    repo.dvc("remote", "add", "-d", "shared", str(remote))
    repo.commit("add remote")
    repo.run("git", "push", "-q", "origin", "main")
    repo.dvc("push")
    main_masks = {r: (repo.path / "runs" / r / "mask.pt").read_bytes() for r in ("r0", "r1", "r2")}
    repo.dvc("exp", "run", "-n", "rate-a", "-S", "prune.rate=0.3")
    repo.dvc("exp", "push", "origin", "rate-a")  # git refs to origin, outputs to the DVC remote

    clone = Repo(tmp_path / "clone", repo.env)
    repo.run("git", "clone", "-q", "-b", "main", str(origin), str(clone.path))
    clone.dvc("pull")
    for r, data in main_masks.items():
        assert (clone.path / "runs" / r / "mask.pt").read_bytes() == data, r
    assert ran(clone.dvc("repro").stdout) == []  # every round came from the remote

    clone.dvc("exp", "pull", "origin", "rate-a")
    assert "rate-a" in clone.dvc("exp", "list", "--all-commits").stdout
    clone.dvc("exp", "apply", "rate-a")
    clone.dvc("checkout")
    assert clone.params()["prune"]["rate"] == 0.3
    assert ran(clone.dvc("repro").stdout) == []
    a = clone.path / "runs/r1/mask.pt"
    assert a.read_bytes() == (repo.path / "runs/r1/mask.pt").read_bytes()  # repo's workspace holds rate-a too
