"""Data-parallel rounds (train.world_size): real processes joined by torch.distributed (gloo, this CPU)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import json

import pytest
import torch

from conftest import SCRATCH, ran

# float32, the template's 200 Adam iterations of 2 MLPs: the largest weight difference between world sizes 1 and
# 2 observed here was below 1e-4 (the order of float sums; Adam divides by sqrt(v) and magnifies it); accuracies,
# early-stop iterations and the masks pruned from those weights were identical.
TOLERANCE = 1e-3


def _weights(path):
    from lottery.artifacts import load

    return load(path, {"mask.pt": "mask", "controls.pt": "controls"}.get(path.name, "weights"))[0]


def _worst(a: dict, b: dict) -> float:
    """The largest difference between the tensors of two artifacts of the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_a_round_of_two_processes_equals_one_process_at_the_same_global_batch(repo):
    one = {r: _weights(repo.path / f"runs/{r}/model.pt") for r in ("r0", "r1")}
    metrics = (repo.path / "runs/r1/metrics.json").read_text()
    mask = _weights(repo.path / "runs/r1/mask.pt")
    repo.set_params({"train": {"world_size": 2}})
    out = repo.dvc("repro", "round@r1")
    assert ran(out.stdout) == ["init", "dense", "round@r1"], out.stdout  # world_size is a result param
    assert "rank" not in out.stderr, out.stderr
    for r in ("r0", "r1"):
        two = _weights(repo.path / f"runs/{r}/model.pt")
        assert two.keys() == one[r].keys()
        worst = max(float((two[k] - one[r][k]).abs().max()) for k in two)
        assert 0 < worst < TOLERANCE, (r, worst)  # 0 would mean the second process took no part
    two = _weights(repo.path / "runs/r1/mask.pt")
    assert two.keys() == mask.keys() and all(torch.equal(two[k], mask[k]) for k in mask)

    a, b = json.loads(metrics), json.loads((repo.path / "runs/r1/metrics.json").read_text())
    key = ("test_accuracy", "early_stop_iteration", "weights_remaining")
    assert [[n[k] for k in key] for n in a["networks"]] == [[n[k] for k in key] for n in b["networks"]]


def _ranks(pid: int) -> list:
    """The rank processes under the stage `pid` (spawned by torch.multiprocessing), oldest first."""
    import psutil

    kids = [p for p in psutil.Process(pid).children(recursive=True)
            if any("spawn_main" in part for part in p.cmdline())]
    return sorted(kids, key=lambda p: p.create_time())


def test_a_rank_killed_fails_the_stage_in_one_line_and_the_next_repro_resumes(repo):
    repo.set_params({"train": {"world_size": 2, "iterations": 1500, "eval_every": 50, "checkpoint_seconds": 0.5}})
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "dense"], cwd=repo.path, env=repo.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list((repo.path / SCRATCH).glob("*.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    ranks = _ranks(proc.pid)
    assert len(ranks) == 2 and list((repo.path / SCRATCH).glob("*.pt")), (ranks, proc.poll())
    os.kill(ranks[1].pid, signal.SIGKILL)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    line = f"error: rank 1 of train.world_size=2 (pid {ranks[1].pid}) was killed by SIGKILL"
    assert line in out, out
    assert "Traceback" not in out, out
    assert list((repo.path / SCRATCH).glob("*.pt")), "the resume point was removed"
    assert not [p for p in _ranks(os.getpid())], "ranks left running"

    again = repo.dvc("repro", "dense")
    assert "[r0] resumed from" in again.stdout, again.stdout
    assert (repo.path / "runs/r0/metrics.json").exists()
    assert not list((repo.path / SCRATCH).glob("*.pt"))


CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("over, line", [
    ({"world_size": CORES + 1, "batch_size": 8 * (CORES + 1)},
     f"train.world_size: {CORES + 1} CPU processes on a machine with {CORES} cores"),
    ({"world_size": 2, "backend": "nccl"}, "train.backend: 'nccl' is not allowed with train.device=cpu"),
    ({"world_size": 2, "nodes": 2}, "train.address: '' is not allowed"),
    ({"world_size": 2, "nodes": 2, "address": "127.0.0.1:1"}, "train.address: no Ray cluster at 127.0.0.1:1 ("),
    ({"world_size": 4, "batch_size": 30}, "train.world_size: 4 is not allowed"),
])
def test_a_data_parallel_round_that_cannot_run_is_refused_before_training(repo, over, line):
    before = (repo.path / "runs/r0/model.pt").read_bytes()
    repo.set_params({"train": over})
    out = repo.run(sys.executable, "-m", "stages.round", "r0", "init", check=False)
    assert out.returncode == 2, out
    assert out.stderr.startswith("error: " + line) and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert (repo.path / "runs/r0/model.pt").read_bytes() == before


def test_a_round_across_two_nodes_of_a_ray_cluster_through_ray_train(repo, ray_cluster):
    """Two nodes of one CPU each: Ray Train's workers (one CPU each, spread) must land on both."""
    one = _weights(repo.path / "runs/r0/model.pt")
    repo.set_params({"train": {"world_size": 2, "nodes": 2, "address": ray_cluster.address}})
    out = repo.dvc("repro", "dense")
    assert ran(out.stdout) == ["init", "dense"], out.stdout
    two = _weights(repo.path / "runs/r0/model.pt")
    worst = max(float((two[k] - one[k]).abs().max()) for k in two)
    assert 0 < worst < TOLERANCE, worst
    assert "[r0] trained in" in out.stdout + out.stderr, out.stdout


def test_a_round_trained_two_networks_at_a_time_equals_the_whole_stack(repo):
    """train.stack: 2 trains round r1's 6 networks (ticket, reinit, random x 2 trials) as 3 groups."""
    before = {f: _weights(repo.path / f"runs/r1/{f}") for f in ("model.pt", "controls.pt")}
    metrics = json.loads((repo.path / "runs/r1/metrics.json").read_text())
    repo.set_params({"train": {"stack": 2}})
    out = repo.dvc("repro", "round@r1")
    assert ran(out.stdout) == ["dense", "round@r1"], out.stdout
    assert "[r1] networks 4-5 of 6 (train.stack=2)" in out.stdout, out.stdout
    for f, one in before.items():
        two = _weights(repo.path / f"runs/r1/{f}")
        assert _worst(two, one) < TOLERANCE, (f, _worst(two, one))  # 6e-8 here: batched kernels sum in another order
    again = json.loads((repo.path / "runs/r1/metrics.json").read_text())
    key = ("variant", "trial", "test_accuracy", "early_stop_iteration")
    assert [[n[k] for k in key] for n in again["networks"]] == [[n[k] for k in key] for n in metrics["networks"]]
