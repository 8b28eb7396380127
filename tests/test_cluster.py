"""lottery.cluster: a sweep of DVC experiments on a real local Ray cluster (a head and a worker node,
one CPU each), a folder DVC remote and a bare git remote."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import add_remotes, ran
from lottery import cluster

SWEEP = ["-S", "trials=1", "-S", "prune.rounds=1", "-S", "prune.rate=0.3,0.5", "-S", "seed=0,1"]


def _metrics(repo) -> dict[str, tuple]:
    """Experiment name -> ((prune.rate, seed), metrics/summary.json, commit) from the workspace's `dvc exp show`."""
    out = {}
    for row in json.loads(repo.dvc("exp", "show", "--json").stdout):
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev["data"]
                params = data["params"]["params.yaml"]["data"]
                out[rev["name"]] = ((params["prune"]["rate"], params["seed"]),
                                    data["metrics"]["metrics/summary.json"]["data"], rev["rev"])
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
    add_remotes(repo, tmp_path)
    (repo.path / "lottery" / "masks.py").write_text((repo.path / "lottery" / "masks.py").read_text() + "\n# edit\n")
    p = repo.run(*cmd, check=False)
    assert p.returncode == 2 and "uncommitted code changes in lottery/masks.py" in p.stderr, p.stderr
    repo.run("git", "checkout", "lottery/masks.py")
    p = repo.run(*cmd, check=False)
    assert p.returncode == 2 and "no Ray cluster at 127.0.0.1:1" in p.stderr and "ray start --head" in p.stderr, p.stderr


@pytest.fixture(autouse=True)
def _no_clones_left():
    """The clones a killed attempt or a cancelled task leaves in the temp folder, removed after each test of this
    file (not by the cluster fixture: a cluster of another test file may be running a sweep meanwhile)."""
    yield
    for pattern in ("lottery-sw-*", "lottery-ff-*"):
        for clone in Path(tempfile.gettempdir()).glob(pattern):
            shutil.rmtree(clone, ignore_errors=True)


def _kill_node(c, node) -> None:
    """A node dies: SIGKILL its raylet and every process under it (Ray workers, their git, DVC and stage processes),
    stopping them all first so that none forks a new one meanwhile."""
    import psutil

    root = psutil.Process(node.all_processes["raylet"][0].process.pid)
    procs: dict[int, psutil.Process] = {}
    for _ in range(3):
        for proc in [root, *root.children(recursive=True)]:
            if proc.pid not in procs:
                procs[proc.pid] = proc
                proc.suspend()
    for proc in procs.values():
        proc.kill()
    c.remove_node(node, allow_graceful=False)


def _drive(repo, cmd: list[str], on_line) -> tuple[int, str]:
    """Run the driver, calling `on_line(line, process)` on each output line (stdout and stderr); (exit status, output)."""
    p = subprocess.Popen(cmd, cwd=repo.path, env=repo.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even under `pytest &`
    lines = []
    for line in p.stdout:
        lines.append(line)
        on_line(line, p)
    return p.wait(), "".join(lines)


def _outs(repo, rev: str) -> dict[str, str]:
    """Every output's md5 in the experiment's dvc.lock: equal dicts mean byte-identical results."""
    lock = yaml.safe_load(repo.run("git", "show", f"{rev}:dvc.lock").stdout)
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}


def _run_cache(remote: Path) -> dict[str, str]:
    """The DVC remote's run-cache entries: path -> the command of the stage run it records."""
    return {str(f): yaml.safe_load(f.read_text())["cmd"] for f in (remote / "runs").rglob("*") if f.is_file()}


def test_sweep_on_two_nodes_matches_local_runs_and_reruns_restore(repo, tmp_path, ray_cluster):
    """One cluster session: a 2x2 sweep during which a worker node is killed, the same experiments run locally,
    a failed experiment and Ctrl-C on the driver, and the whole sweep again (all restored)."""
    add_remotes(repo, tmp_path)
    driver = [sys.executable, "-m", "lottery.cluster", "--address", ray_cluster.address]
    cmd = [*driver, "--name", "sw", *SWEEP]
    workers = {n.node_id[:8]: n for n in ray_cluster.worker_nodes}
    killed: dict[str, str] = {}

    def kill_on_round(line: str, _p) -> None:  # kill the node of the first experiment that pushed its dense round
        m = re.match(r"\[(sw-\d)\] running on node (\w+): (round@r1|r1 iteration)", line)
        if m and not killed and m[2] in workers:
            killed.update(exp=m[1], node=m[2])
            _kill_node(ray_cluster, workers[m[2]])

    rc, out = _drive(repo, cmd, kill_on_round)
    print(out)
    assert rc == 0 and killed, out
    names = [f"sw-{i}" for i in range(1, 5)]
    for name in names:
        assert f"[{name}] queued" in out and re.search(rf"\[{name}\] running on node \w+", out), out
        done = re.search(rf"\[{name}\] done on node (\w+): dense [\d.]+%.*trained \d stage\(s\): ([^;]*)", out)
        assert done and done[1] != killed["node"], out
        if name != killed["exp"]:
            assert "round@r1" in done[2], out
        else:  # the retry ran on the other node and restored what the killed attempt had pushed
            after = out[out.index(f"[{name}] running on node {killed['node']}: "):]
            assert re.search(rf"\[{name}\] running on node (?!{killed['node']})\w+", after), out
            assert not {"prepare", "init", "dense"} & set(done[2].split()), out
    assert "pulled 4 experiment(s)" in out
    shown = _metrics(repo)
    assert sorted(shown[n][0] for n in names) == [(0.3, 0), (0.3, 1), (0.5, 0), (0.5, 1)], shown

    # The same experiments, run locally one by one, give the same metrics and byte-identical outputs.
    for name in names:
        (rate, seed), metrics, rev = shown[name]
        local = repo.dvc("exp", "run", "-n", f"local-{rate}-{seed}", "-S", "trials=1", "-S", "prune.rounds=1",
                         "-S", f"prune.rate={rate}", "-S", f"seed={seed}")
        assert "round@r1" in ran(local.stdout), local.stdout
        mine = _metrics(repo)[f"local-{rate}-{seed}"]
        assert mine[1] == metrics and _outs(repo, mine[2]) == _outs(repo, rev), name

    # A failed experiment (NaN loss, only seen on the worker) and Ctrl-C, on the one node left: ff-1 fails with
    # its error line, ff-2 still runs and is done, then SIGINT cancels ff-3 and ff-4. Nothing half-written is
    # pushed: the DVC remote gains only the completed stage of the failed experiment (init), no ref but ff-2's.
    repo.dvc("push", "--run-cache")  # the local runs' entries (the driver pushes its own run-cache first)
    cache = _run_cache(tmp_path / "dvc-remote")
    interrupt = lambda line, p: line.startswith("[ff-2] done") and p.send_signal(signal.SIGINT)  # noqa: E731
    rc, out = _drive(repo, [*driver, "--name", "ff", "-S", "trials=1", "-S", "prune.rounds=1",
                            "-S", "prune.rate=0.3,0.5", "-S", "train.lr=1e30,0.0012"], interrupt)
    print(out)
    assert rc == 130, out
    assert re.search(r"\[ff-1\] failed: error: .*non-finite loss", out), out
    assert out.index("[ff-1] failed") < out.index("[ff-2] done") and "trained 0 stage(s)" in out, out
    assert out.splitlines()[-1] == "error: interrupted: 1 of 4 experiment(s) done; 1 failed: ff-1; 2 cancelled: ff-3, ff-4"
    assert "[ff-3] done" not in out and "[ff-4] done" not in out and "[ff-4] running" not in out, out
    new = {k: v for k, v in _run_cache(tmp_path / "dvc-remote").items() if k not in cache}
    assert set(new.values()) == {"python -m stages.init"}, new
    refs = repo.run("git", "ls-remote", "origin", "refs/exps/*").stdout
    assert "/ff-2\n" in refs and not re.search(r"/ff-[134]\n", refs), refs
    assert "ff-2" in _metrics(repo) and not {"ff-1", "ff-3", "ff-4"} & set(_metrics(repo)), out

    # A dataset missing on the worker (a data.root with no MNIST, which no download can fill): the check stage
    # fails there, the driver reports its error line and exits 2; nothing is pushed.
    cache = _run_cache(tmp_path / "dvc-remote")
    p = repo.run(*driver, "--name", "dm", "-S", "trials=1", "-S", "data.dataset=mnist", "-S", "model.name=lenet-300-100",
                 "-S", "data.root=/dev/null/x", check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert re.search(r"\[dm-1\] failed: error: mnist: not found locally \(/dev/null/x/mnist", p.stdout), p.stdout
    assert p.stderr.strip() == "error: 0 of 1 experiment(s) done; 1 failed: dm-1", p.stderr
    assert _run_cache(tmp_path / "dvc-remote") == cache and "/dm-1" not in repo.run("git", "ls-remote", "origin").stdout

    # The same sweep again, on two nodes: every stage restored from the shared remote, nothing trained.
    ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    again = repo.run(*cmd).stdout
    print(again)
    assert again.count("trained 0 stage(s): none (all restored)") == 4, again
    assert {k: v[:2] for k, v in _metrics(repo).items() if k.startswith("sw-")} == {k: shown[k][:2] for k in names}


def test_gpu_fractions_pack_experiments_on_one_gpu(repo, tmp_path):
    """--gpus-per-experiment 0.5 on a node declaring one GPU and three CPUs: two of three experiments run at once
    (the GPU, not the CPUs, is the limit), the third once one is done, each with `train.device=auto` (the CPU on
    this machine, which has no CUDA: what is tested is Ray's fractional packing and the override, not CUDA)."""
    from ray.cluster_utils import Cluster

    add_remotes(repo, tmp_path)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        c.add_node(num_cpus=3, num_gpus=1)
        c.wait_for_nodes()
        out = repo.run(sys.executable, "-m", "lottery.cluster", "--address", c.address, "--name", "gp",
                       "--gpus-per-experiment", "0.5", "-S", "trials=1", "-S", "prune.rounds=0",
                       "-S", "train.iterations=50", "-S", "prune.rate=0.3,0.4,0.5").stdout
    finally:
        c.shutdown()
    print(out)
    names = ["gp-1", "gp-2", "gp-3"]
    for name in names:
        assert re.search(rf"\[{name}\] queued: .* train.device=auto$", out, re.M), out
    first_done = min(out.index(f"[{n}] done") for n in names)
    started = [n for n in names if f"[{n}] running" in out[:first_done]]
    assert len(started) == 2, out  # the third waits for a half GPU, though a CPU is free
    rows = json.loads(repo.dvc("exp", "show", "--json").stdout)
    devices = {rev["name"]: rev["data"]["params"]["params.yaml"]["data"]["train"]["device"]
               for row in rows for exp in row.get("experiments") or [] for rev in exp.get("revs", [])}
    assert devices == dict.fromkeys(names, "auto"), devices
