"""Run a sweep of DVC experiments on a Ray cluster, one experiment per Ray task.

    python -m lottery.cluster -S prune.rate=0.1,0.2,0.3 -S seed=0,100 [--address <head>:6379]

Every combination of the `-S` overrides (Hydra's sweep syntax, expanded by DVC's own code) is
validated on the driver, then runs as one task on the cluster, in its own clone of the driver's
commit (`conf/` and `params.yaml` edits of the driver's workspace are carried along, as
`dvc exp run` would use them). A task drives DVC's Python API in one process (every DVC command
would cost seconds of start-up and status checks): stage by stage, it restores from the shared DVC
remote whatever was already computed (`repro --pull`: the run-cache), pushes the stage's outputs
and run-cache entry as soon as it is done (a retried task trains only what is missing), then
records the experiment (`exp run`, every stage up to date) and pushes its ref to the git remote.
The driver prints one line per change of an experiment's state and finally pulls every finished
experiment, so `dvc exp show` and `dvc metrics diff` work as after local runs.

Faults: a task whose worker or node dies is rerun by Ray (`--max-retries`) and restores what it had pushed; a
failed experiment is reported with its error line and the others go on (exit 2 at the end); Ctrl-C cancels every
experiment not finished (a running one with its DVC process group), pulls the finished ones and exits 130.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import ConfigError, load
from .ray_connect import ClusterError, connect
from .revisions import resolve

PARAMS_PATHS = ("params.yaml", "conf/")  # uncommitted edits the driver carries to its tasks
# Ray lowers its workers' priority by 15 (niceness); an experiment owns the CPUs it asked for: normal priority
NORMAL_PRIORITY = {"env_vars": {"RAY_worker_niceness": "0"}}
ENV_KEYS = re.compile(r"^(GIT_(AUTHOR|COMMITTER)_(NAME|EMAIL)|DVC_NO_ANALYTICS|OMP_NUM_THREADS)$")  # sent to tasks




def _sh(*cmd: str, cwd: str | Path = ".", env: dict | None = None, timeout: float | None = None) -> str:
    """Run `cmd` in its own process group; its stdout (a ClusterError naming its last error line on failure)."""
    lines = _run(list(cmd), cwd, env, timeout=timeout, merge=False)
    return "".join(f"{x}\n" for x in lines)


def _run(cmd: list[str], cwd, env, on_line=None, timeout: float | None = None, merge: bool = True) -> list[str]:
    """Run `cmd` in its own process group, passing each output line to `on_line`; its lines (stdout and stderr,
    or stdout alone with merge=False). An exception here (a cancelled task's KeyboardInterrupt) kills the whole
    group, DVC and the stage it runs, so nothing of a cancelled experiment keeps running."""
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
                         stderr=subprocess.STDOUT if merge else subprocess.PIPE)
    try:
        if merge:
            lines = []
            for line in p.stdout:
                lines.append(line.rstrip("\n"))
                on_line and on_line(lines[-1])
            p.wait()
            err = lines
        else:
            out, err = p.communicate(timeout=timeout)
            lines, err = out.splitlines(), err.splitlines() or out.splitlines()
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    if p.returncode != 0:
        # the stage's own one-line error first, then DVC's
        errors = [x for x in err if x.startswith("error:")] or [x for x in err if x.startswith("ERROR")]
        last = [x for x in err if x.strip()][-1:] or [f"exit {p.returncode}"]
        raise ClusterError(errors[-1] if errors else f"`{' '.join(cmd[:4])}` failed: {last[0]}")
    return lines


def check_name(prefix: str) -> None:
    """--name must make valid experiment names <prefix>-<i> (DVC's rule: a git ref name without '/')."""
    ok = "/" not in prefix and subprocess.run(["git", "check-ref-format", f"refs/exps/{prefix}-1"]).returncode == 0
    if not ok:
        raise ClusterError(f"--name {prefix!r} is not a valid experiment name (no '/', spaces, '..', '~', '^', ':' "
                           "or other characters git refuses in a ref name)")


def sweep(overrides: list[str]) -> list[list[str]]:
    """Every combination of the `-S` overrides, as `dvc exp run --queue` expands them."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import HydraException

    if not overrides:
        return [[]]
    try:
        return [combo.get("params.yaml", []) for combo in get_hydra_sweeps(to_path_overrides(overrides))]
    except HydraException as e:  # a malformed override: Hydra's message names it
        raise ConfigError(" ".join(line.strip() for line in str(e).splitlines() if line.strip())) from None


def validate(combos: list[list[str]], root: Path = Path(".")) -> None:
    """Compose and validate every combination before any task is submitted (a ConfigError names the key)."""
    from .params import compose

    with tempfile.TemporaryDirectory(prefix="lottery-cluster-") as tmp:
        for combo in combos:
            try:
                load(compose(combo, root, str(Path(tmp) / "params.yaml")), complete=True)
            except ConfigError as e:
                raise ConfigError(f"-S {' '.join(combo)}: {str(e).replace(tmp + '/', '')}") from None


def dirty_params(root: Path = Path(".")) -> dict[str, str]:
    """Uncommitted params edits to carry ({path: text}); refuses uncommitted code, naming the files."""
    lines = _sh("git", "status", "--porcelain", "--untracked-files=no", cwd=root).splitlines()
    changed = [line[3:] for line in lines if line[3:] != "dvc.lock"]  # DVC's record: tasks use the committed one
    code = [f for f in changed if not f.startswith(PARAMS_PATHS)]
    if code:
        raise ClusterError(f"uncommitted code changes in {', '.join(code)}: commit them so every worker runs the same code")
    return {f: (root / f).read_text() for f in changed if (root / f).is_file()}


def remotes(dvc_remote: str | None, git_remote: str, root: Path = Path(".")) -> tuple[str, str, str]:
    """(DVC remote name, its URL, git remote URL), both reachable from the driver, else a ClusterError."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = dvc_remote or repo.config["core"].get("remote")
        if not name or name not in repo.config["remote"]:
            raise ClusterError(f"no DVC remote {name or '(default)'}: `dvc remote add -d <name> <url>` or --dvc-remote")
        url = repo.config["remote"][name]["url"]
        try:
            remote = repo.cloud.get_remote(name)
            remote.fs.makedirs(remote.path, exist_ok=True)
            assert remote.fs.exists(remote.path)
        except Exception as e:
            raise ClusterError(f"DVC remote {name} ({url}) is unreachable: {e}") from None
    try:
        git_url = _sh("git", "remote", "get-url", git_remote, cwd=root).strip()
        _sh("git", "ls-remote", "-q", git_remote, cwd=root, timeout=60)
    except (ClusterError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"git remote {git_remote} is missing or unreachable ({e}); `git remote add {git_remote} <url>` "
                           "or --git-remote") from None
    if "://" not in url and not Path(url).is_absolute():
        url = str((root / ".dvc" / url).resolve())
    return name, url, git_url


class Progress:
    """Latest state line of every experiment (a Ray actor: tasks report, the driver reads)."""

    def __init__(self):
        self.state: dict[str, str] = {}

    def update(self, exp: str, text: str) -> None:
        self.state[exp] = text

    def read(self) -> dict[str, str]:
        return dict(self.state)


IT_LINE = re.compile(r"^\[(\w+)\] it\s+(\d+)/(\d+)")
STAGE_LINE = re.compile(r"^\[cluster\] (stage (\S+)|recording|seconds (.*))$")  # what `in_clone` prints


def run_experiment(spec: dict, progress) -> dict:
    """One experiment in its own clone of the driver's commit, run by `in_clone` in one process."""
    import ray

    node = ray.get_runtime_context().get_node_id()[:8]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # Ray's, not the driver's: torch's own
    env.update(spec["env"])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` of the stages
    exp, report = spec["name"], lambda text: progress.update.remote(spec["name"], text)
    report(f"running on node {node}: cloning")
    work = Path(tempfile.mkdtemp(prefix=f"lottery-{exp}-"))
    t0, seconds, last = time.monotonic(), {}, [0.0]
    try:
        _sh("git", "clone", "-q", "--no-checkout", spec["git_url"], str(work), env=env)
        _sh("git", "fetch", "-q", "origin", spec["ref"], cwd=work, env=env)
        _sh("git", "checkout", "-q", spec["sha"], cwd=work, env=env)
        for path, text in spec["params_files"].items():
            (work / path).write_text(text)
        seconds["clone"] = time.monotonic() - t0

        def on_line(line: str) -> None:
            if m := STAGE_LINE.match(line):
                if m[3]:
                    seconds.update(json.loads(m[3]))
                else:
                    report(f"running on node {node}: {m[2] or 'recording the experiment'}")
            elif (m := IT_LINE.match(line)) and time.monotonic() - last[0] > 1:
                last[0] = time.monotonic()
                report(f"running on node {node}: {m[1]} iteration {m[2]}/{m[3]}")

        task = {k: spec[k] for k in ("name", "overrides", "dvc_url")}
        out = _run([sys.executable, "-m", "lottery.cluster", "--in-clone", json.dumps(task)], work, env, on_line)
        ran = [x.split("'")[1] for x in out if x.startswith("Running stage '") and "'check'" not in x]
        summary = json.loads((work / "metrics" / "summary.json").read_text())
        return {"name": exp, "node": node, "trained": ran, "summary": summary, "seconds": seconds}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def in_clone(task: dict) -> None:
    """Run the experiment `task` in this clone, in one process (every DVC command would cost seconds of start-up
    and status checks): each stage in order, restored from the shared remote's run-cache when it was computed
    anywhere (`--pull`), else run, then pushed with its run-cache entry; then the experiment recorded (`dvc exp
    run`: every stage up to date) and its ref pushed to `origin`. Prints `[cluster] ...` lines for the task."""
    from dvc.config import Config
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    from .params import compose

    with Config(dvc_dir=".dvc").edit("local") as conf:
        conf["remote"]["cluster"] = {"url": task["dvc_url"]}
        conf["core"]["remote"] = "cluster"
    compose(task["overrides"])
    seconds, clock = {"stages": 0.0, "push": 0.0, "record": 0.0}, [time.monotonic()]

    def lap(phase: str) -> None:
        seconds[phase] += time.monotonic() - clock[0]
        clock[0] = time.monotonic()

    with Repo() as repo:  # importing dvc set up its logging: its lines as its CLI prints them ("Running stage ...")
        repo.scm_context.quiet = True  # no "To track the changes with git" hints
        for stage in [s.addressing for s in plan_repro(get_active_graph(repo.index.graph), list(repo.index.stages))]:
            print(f"[cluster] stage {stage}", flush=True)
            repo.reproduce(stage, single_item=True, pull=True)
            lap("stages")
            repo.push(stage, run_cache=True)
            lap("push")
        print("[cluster] recording", flush=True)
        repo.experiments.run(params=task["overrides"], name=task["name"])
        lap("record")
        repo.experiments.push("origin", [task["name"]], force=True)
        lap("push")
    print(f"[cluster] seconds {json.dumps(seconds)}", flush=True)


def _headline(summary: dict) -> str:
    win = summary.get("ticket", {}).get("win")
    return f"dense {summary['dense_acc']:.2f}%, ticket wins down to {win}% remaining"


def submit(args, combos: list[list[str]], params_files: dict, urls: list[str]) -> tuple[dict, object]:
    """Submit one task per combination (`urls`: the DVC and the git remote URL); returns {object ref: experiment
    name} and the progress actor."""
    import ray
    from dvc.repo import Repo
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    sha = args.sha
    ref = f"refs/lottery-cluster/{sha}"
    _sh("git", "push", "-q", "-f", args.git_remote, f"{sha}:{ref}")  # the commit every worker clones
    with Repo() as repo:  # what the driver already computed
        repo.push(remote=args.dvc_remote_name, run_cache=True)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress = ray.remote(num_cpus=0)(Progress).options(scheduling_strategy=here).remote()  # dies with no worker
    task = ray.remote(run_experiment).options(num_cpus=args.cpus_per_experiment, num_gpus=args.gpus_per_experiment,
                                              max_retries=args.max_retries, runtime_env=NORMAL_PRIORITY)
    env = {k: v for k, v in os.environ.items() if ENV_KEYS.match(k)}
    prefix = args.name or f"cl-{sha[:7]}"
    refs = {}
    for i, combo in enumerate(combos):
        overrides = combo + (["train.device=auto"] if args.gpus_per_experiment else [])
        name = f"{prefix}-{i + 1}"
        spec = {"name": name, "overrides": overrides, "sha": sha, "ref": ref, "git_url": urls[1], "dvc_url": urls[0],
                "params_files": params_files, "env": env}
        refs[task.remote(spec, progress)] = name
        print(f"[{name}] queued: {' '.join(overrides) or '(defaults)'}", flush=True)
    return refs, progress


def watch(refs: dict, progress, done: list[str], failed: list[str]) -> None:
    """Print state changes until every task ends, appending to `done` and `failed` as experiments end."""
    import ray

    pending, shown = list(refs), {}
    while pending:
        ready, pending = ray.wait(pending, timeout=1.0)
        for r in ready:
            name = refs[r]
            try:
                result = ray.get(r)
                t = result["seconds"]
                print(f"[{name}] done on node {result['node']}: {_headline(result['summary'])}; "
                      f"trained {len(result['trained'])} stage(s): {' '.join(result['trained']) or 'none (all restored)'}"
                      f"; {sum(t.values()):.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in t.items())})", flush=True)
                done.append(name)
            except Exception as e:  # the task's own error (RayTaskError wraps it), or the task was lost
                cause = getattr(e, "cause", None) or e
                print(f"[{name}] failed: {str(cause).strip().splitlines()[-1]}", flush=True)
                failed.append(name)
        for name, text in ray.get(progress.read.remote()).items():
            if shown.get(name) != text and name not in done + failed:
                print(f"[{name}] {text}", flush=True)
                shown[name] = text


def cancel(refs: dict, done: list[str], failed: list[str], grace: float = 60.0) -> None:
    """Ctrl-C: cancel every task not finished (a queued one never starts; a running one kills its DVC process
    group), wait up to `grace` seconds for them to end, and count one that finished meanwhile as done."""
    import ray

    left = [r for r in refs if refs[r] not in done + failed]
    for r in left:
        ray.cancel(r)
    ended, _ = ray.wait(left, num_returns=len(left), timeout=grace) if left else ([], [])
    done += [refs[r] for r in ended if _ok(r)]


def pull(names: list[str], args) -> None:
    """Fetch the experiments' refs from the git remote and their outputs from the DVC remote."""
    from dvc.repo import Repo

    if names:
        with Repo() as repo:
            repo.experiments.pull(args.git_remote, names, force=True, pull_cache=True, dvc_remote=args.dvc_remote_name)
        print(f"[cluster] pulled {len(names)} experiment(s): dvc exp show", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="key=value")
    ap.add_argument("--address", help="Ray cluster (default: a local Ray instance started for the run)")
    ap.add_argument("--name", help="experiment name prefix (default: cl-<commit>); experiment i is <prefix>-<i>")
    ap.add_argument("--gpus-per-experiment", type=float, default=0.0)
    ap.add_argument("--cpus-per-experiment", type=float, default=1.0)
    ap.add_argument("--max-retries", type=int, default=3)
    ap.add_argument("--dvc-remote", help="DVC remote name (default: the repo's default remote)")
    ap.add_argument("--git-remote", default="origin")
    args = ap.parse_args(argv)
    if args.name is not None:
        check_name(args.name)
    combos = sweep(args.overrides)
    validate(combos)
    params_files = dirty_params()
    args.sha = resolve("HEAD")  # the commit every worker clones (a repository with no commit stops here)
    args.dvc_remote_name, *urls = remotes(args.dvc_remote, args.git_remote)
    connect(args.address)
    refs, progress = submit(args, combos, params_files, urls)
    done, failed, interrupted = [], [], False
    try:
        watch(refs, progress, done, failed)
    except KeyboardInterrupt:
        interrupted = True
        print("[cluster] interrupted: cancelling what has not finished", flush=True)
        cancel(refs, done, failed)
    pull(done, args)
    cancelled = [n for n in refs.values() if n not in done + failed]
    summary = "; ".join([f"{len(done)} of {len(refs)} experiment(s) done"] +
                        [f"{len(v)} {k}: {', '.join(v)}" for k, v in (("failed", failed), ("cancelled", cancelled)) if v])
    if interrupted:
        print(f"error: interrupted: {summary}", file=sys.stderr, flush=True)
        sys.exit(130)
    if failed:
        raise ClusterError(summary)


def _ok(ref) -> bool:
    import ray

    try:
        ray.get(ref, timeout=0)
        return True
    except Exception:
        return False


def cli() -> None:
    """The `lottery-cluster` console script."""
    from .cli import run

    run(main)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--in-clone"]:  # a task's own process, in its clone (`run_experiment`)
        from dvc.exceptions import DvcException

        try:
            in_clone(json.loads(sys.argv[2]))
        except DvcException as e:  # DVC's own line, as its CLI prints it (a stage's error line came before)
            sys.exit(f"ERROR: {e}")
    else:
        cli()
