"""Real git + real DVC in temporary folders.

One template repository per test session (project files, a tiny mnist1d configuration,
`dvc repro` already run and committed); each test gets its own copy.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "conf", "hydra_plugins", "stages", "lottery", ".dvc/config", ".dvcignore", ".gitignore"]

# Small enough for seconds per stage, real enough to prune and train.
TINY = {
    "trials": 2,
    "data": {"dataset": "mnist1d", "validation": 500},
    "model": {"name": "mlp-mnist1d"},
    "train": {"iterations": 200, "eval_every": 50, "log_every": 100, "batch_size": 32},
    "prune": {"rounds": 2},
}


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def env_for(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc-site-cache"),
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
        PYTHONUNBUFFERED="1",
    )
    return env


class Repo:
    def __init__(self, path: Path, env: dict):
        self.path, self.env = path, env

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(cmd, cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def commit(self, msg: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", msg, "--allow-empty")

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, over: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(_merge(self.params(), over), sort_keys=False))


def ran(output: str) -> list[str]:
    """Stages DVC executed (not skipped, not restored from the run-cache), less `check`, which runs on
    every repro (always_changed; tests/test_check.py asserts it)."""
    names = [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
    return [name for name in names if name != "check"]


def make_repo(path: Path, env: dict, overrides: dict) -> Repo:
    path.mkdir(parents=True)
    for f in PROJECT_FILES:
        src = ROOT / f
        if not src.exists():
            continue
        dst = path / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    conf = path / "conf" / "config.yaml"
    conf.write_text(yaml.safe_dump(_merge(yaml.safe_load(conf.read_text()), overrides), sort_keys=False))
    repo = Repo(path, env)
    repo.run(sys.executable, "-m", "lottery.params")
    repo.run("git", "init", "-q", "-b", "main")
    repo.commit("template")
    return repo


SCRATCH = Path(".dvc") / "tmp" / "lottery-resume"  # stages.round's default --resume-dir


def kill_at_resume_point(repo: Repo, *dvc_args: str, after: str = "runs/r0/metrics.json", timeout: float = 300) -> None:
    """Start `dvc <dvc_args>` and `kill -9` its whole process group as soon as `after` exists and a round has
    saved a resume point (the params must set a short train.checkpoint_seconds)."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "dvc", *dvc_args], cwd=repo.path, env=repo.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (repo.path / after).exists() and list((repo.path / SCRATCH).glob("*.pt")):
            break
        time.sleep(0.05)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"no resume point appeared in {timeout} s: {sorted(os.listdir(repo.path / SCRATCH.parent))}"
                             f"\n{proc.communicate()[0]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def retag(path: Path, **meta) -> None:
    """Rewrite an artifact's metadata, its tensors and their digests untouched (what a tamperer who knows the format
    does, or a test that reads one experiment's artifacts as another's)."""
    import torch

    from lottery import artifacts

    obj = torch.load(path, weights_only=True)
    obj["meta"].update(meta)
    artifacts.atomic_save(obj, path)


def add_remotes(repo: Repo, folder: Path) -> None:
    """A bare git remote `origin` (folder/origin.git) and a default folder DVC remote (folder/dvc-remote),
    committed and pushed: what `lottery.cluster` needs."""
    folder.mkdir(parents=True, exist_ok=True)
    repo.run("git", "init", "-q", "--bare", str(folder / "origin.git"))
    repo.run("git", "remote", "add", "origin", str(folder / "origin.git"))
    repo.dvc("remote", "add", "-d", "shared", str(folder / "dvc-remote"))
    repo.commit("add remote")
    repo.run("git", "push", "-q", "origin", "main")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """In-process tests use small tensors: intra-op threads only add synchronisation cost
    (and stall badly when the machine is busy). Stage subprocesses keep torch's default."""
    from lottery.runtime import one_thread as single

    with single():
        yield


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Repo:
    """A tiny experiment, reproduced once and committed: once per session, shared by pytest-xdist's workers
    (`make test` runs two), whose base folders sit side by side in the session's folder."""
    from filelock import FileLock

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _template(tmp_path_factory.mktemp("template"))
    tmp = tmp_path_factory.getbasetemp().parent / "template"
    with FileLock(f"{tmp}.lock"):
        done = tmp / "done"
        if not done.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # a worker that died half-way
            _template(tmp)
            done.touch()
    return Repo(tmp / "repo", env_for(tmp))


def _template(tmp: Path) -> Repo:
    repo = make_repo(tmp / "repo", env_for(tmp), TINY)
    out = repo.dvc("repro")
    assert out.stdout.startswith("Running stage 'check'"), out.stdout
    assert ran(out.stdout) == ["prepare", "init", "dense", "round@r1", "round@r2", "summarize"], out.stdout
    repo.commit("reproduced")
    return repo


@pytest.fixture
def repo(template, tmp_path) -> Repo:
    dst = tmp_path / "repo"
    shutil.copytree(template.path, dst, symlinks=True)
    return Repo(dst, env_for(tmp_path))


def run_queue(repo: Repo, timeout: float = 300) -> str:
    """`dvc queue start` one worker and wait until nothing is queued or running; the last `dvc queue status`."""
    import time

    repo.dvc("queue", "start", "-j", "1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = repo.dvc("queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    return status


@pytest.fixture
def float64():
    """Default dtype float64 for one test (bit-for-bit stack == one-by-one checks)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def ray_cluster():
    """A head node that runs no task (0 CPUs; the driver connects to it) and two worker nodes with one CPU each."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
