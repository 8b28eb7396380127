"""Training throughput, measured side by side in one run (`make bench`).

LeNet-300-100, batch 60, Adam 1.2e-3, masks re-applied after every step, data in memory:
  ceiling  the matmuls of the model's own shapes (forward + backward) alone
  plain    a plain PyTorch loop (nn.Sequential, torch.optim.Adam, one network)
  ours N   lottery.training.train on a stack of N networks (the round stage's path;
           6 = the default round, 10 = the paper's figure: 5 trials x ticket + reinit)
  ours-10-bf16   the same with `train.precision: bfloat16` (autocast matmuls)
  on CUDA also: ours-10-eager (no CUDA graph) and ours-100
Each case runs in its own process (peak RSS per case): a warm-up, then the best of 2 timed
repeats. The cases run in turn, 3 passes over all of them, and each reports its best pass:
this machine's speed drifts by tens of percent within minutes, and interleaving exposes
every case to the same drift. Prints ratios, never asserts speed.

    python benchmarks/train_step.py [--quick] [--iterations N] [--passes P] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SHAPES = [(784, 300), (300, 100), (100, 10)]
BATCH = 60
VALIDATION, EVAL_EVERY = 5000, 100  # the paper's validation set and evaluation interval


DEVICE = "cpu"  # set from --device
REPEATS = 2  # timed repeats per case and process


def sync() -> None:
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def best_of(fn) -> float:
    """Fastest of a few timed repeats: the least disturbed by other work on the machine."""
    times = []
    for _ in range(REPEATS):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def flops_per_iteration() -> float:
    """Forward products, weight gradients, and input gradients of the layers after the first."""
    f = sum(2 * BATCH * i * o for i, o in SHAPES)  # forward
    f += sum(2 * BATCH * i * o for i, o in SHAPES)  # dW
    f += sum(2 * BATCH * i * o for i, o in SHAPES[1:])  # dX (not needed for the input layer)
    return float(f)


def case_ceiling(iters: int) -> dict:
    import torch

    x = [torch.randn(BATCH, i, device=DEVICE) for i, _ in SHAPES]
    w = [torch.randn(o, i, device=DEVICE) for i, o in SHAPES]
    d = [torch.randn(BATCH, o, device=DEVICE) for _, o in SHAPES]
    def step():
        for j in range(3):
            x[j] @ w[j].t()
            d[j].t() @ x[j]
            if j:
                d[j] @ w[j]
    for _ in range(50):
        step()
    dt = best_of(lambda: [step() for _ in range(iters)]) / iters
    return {"it_s": 1 / dt, "gflops": flops_per_iteration() / dt / 1e9}


def _data(n=55000):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g).to(DEVICE), torch.randint(0, 10, (n,), generator=g).to(DEVICE)


def case_plain(iters: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    x, y = _data()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    net.to(DEVICE)
    masks = {p: (torch.rand_like(p) > 0.5).float() for n, p in net.named_parameters() if n.endswith("weight")}
    opt = torch.optim.Adam(net.parameters(), lr=1.2e-3)
    perm, pos = torch.randperm(len(y), device=DEVICE), 0
    def step():
        nonlocal perm, pos
        if pos + BATCH > len(y):
            perm, pos = torch.randperm(len(y), device=DEVICE), 0
        idx = perm[pos : pos + BATCH]
        pos += BATCH
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p, m in masks.items():
                p.mul_(m)
    for _ in range(50):
        step()
    return {"it_s": iters / best_of(lambda: [step() for _ in range(iters)]), "networks": 1}


def case_ours(iters: int, n: int, precision: str = "float32", fast: bool = True) -> dict:
    import torch

    from lottery import masks, models
    from lottery.config import TrainConfig
    from lottery.data import Split, TensorData
    from lottery.runtime import configure_runtime
    from lottery.training import evaluate, train

    configure_runtime(DEVICE, precision)  # as the round stage: mallopt, and CUDA's settings
    x, y = _data()
    data = TensorData(x, y, x[:10], y[:10], x[:10], y[:10])
    model = models.build("lenet-300-100", list(range(n))).to(DEVICE)
    mask = {k: torch.rand(v.shape, device=DEVICE) > 0.5 for k, v in masks.ones(model, models.prunable(model)).items()}
    cfg = TrainConfig(iterations=iters, eval_every=10**9, log_every=0, precision=precision)
    quiet = lambda *_: None  # noqa: E731
    train(model, mask, data, TrainConfig(iterations=50, eval_every=10**9, log_every=0, precision=precision),
          list(range(n)), log=quiet, fast=fast)
    dt = best_of(lambda: train(model, mask, data, cfg, list(range(n)), log=quiet, fast=fast))
    # one validation pass as the rounds run it (every eval_every iterations, on the 5,000 held-out examples)
    val = best_of(lambda: evaluate(model, Split(x[:VALIDATION], y[:VALIDATION]), precision=precision))
    return {"it_s": iters / dt, "networks": n, "eval_s": val}


def case_startup() -> dict:
    t = time.perf_counter()
    import torch  # noqa: F401

    t_torch = time.perf_counter() - t
    t = time.perf_counter()
    import lottery.rounds  # noqa: F401
    import lottery.data  # noqa: F401

    return {"import_torch_s": t_torch, "import_lottery_after_torch_s": time.perf_counter() - t}


def case_dvc_stage() -> dict:
    """DVC's cost per executed stage: `dvc repro -f -s round@r1` of a tiny round, wall time vs training."""
    import os
    import re
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for f in ["dvc.yaml", "conf", "hydra_plugins", "stages", "lottery", ".dvc/config", ".dvcignore", ".gitignore"]:
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (root / f).is_dir() else shutil.copy2)(root / f, repo / f)
        env["DVC_SITE_CACHE_DIR"] = str(repo / ".site-cache")
        run = lambda *cmd: subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=True).stdout  # noqa: E731
        run(sys.executable, "-m", "lottery.params", "data.dataset=mnist1d", "data.validation=500", "model.name=mlp-mnist1d",
            "prune.rounds=1", "train.iterations=100", "train.eval_every=50")
        run("git", "init", "-q")
        run(sys.executable, "-m", "dvc", "repro")
        t = time.perf_counter()
        out = run(sys.executable, "-m", "dvc", "repro", "-f", "-s", "round@r1")
        wall = time.perf_counter() - t
    startup = float(re.search(r"start-up ([0-9.]+)s", out).group(1))
    trained = float(re.search(r"trained in ([0-9.]+)s", out).group(1))
    return {"wall_s": wall, "startup_s": startup, "trained_s": trained}


def child(name: str, iters: int) -> dict:
    if name == os.environ.get("LOTTERY_BENCH_FAIL"):  # how tests/test_bench.py checks that a failed case is reported
        raise SystemExit(f"case {name} failed on purpose (LOTTERY_BENCH_FAIL)")
    fn = {"ceiling": lambda: case_ceiling(iters), "plain": lambda: case_plain(iters), "startup": case_startup,
          "dvc-stage": case_dvc_stage,
          "ours-10-bf16": lambda: case_ours(iters, 10, precision="bfloat16"),
          "ours-10-eager": lambda: case_ours(iters, 10, fast=False)}
    out = fn[name]() if name in fn else case_ours(iters, int(name.split("-")[1]))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if DEVICE == "cuda":
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few iterations: checks the table is produced")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=3, help="passes over all cases; each case keeps its best")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global DEVICE, REPEATS
    DEVICE = args.device
    iters = 30 if args.quick else args.iterations
    passes = 1 if args.quick else args.passes
    if args.quick:
        REPEATS = 1
    if args.child:
        print(json.dumps(child(args.child, iters)))
        return
    rows = ["plain", "ours-1", "ours-2", "ours-6", "ours-10", "ours-10-bf16"]
    if DEVICE == "cuda":
        rows += ["ours-10-eager", "ours-100"]
    extra = [] if args.quick or DEVICE == "cuda" else ["dvc-stage"]  # DVC runs stages on the CPU machine
    res: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for i in range(passes):
        for name in ["ceiling", *rows] + (["startup", *extra] if i == passes - 1 else []):
            if name in failed:
                continue
            print(f"pass {i + 1}/{passes}: measuring {name} ...", file=sys.stderr, flush=True)
            p = subprocess.run([sys.executable, __file__, "--child", name, "--iterations", str(iters), "--device", DEVICE]
                               + (["--quick"] if args.quick else []), capture_output=True, text=True)
            if p.returncode:  # reported, and left out of the table: the other cases still print
                failed[name] = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
                print(f"case {name} failed (exit {p.returncode}): {failed[name]}", file=sys.stderr, flush=True)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            if name not in res or r.get("it_s", 0) > res[name].get("it_s", 0):
                r["peak_rss_mb"] = max(r["peak_rss_mb"], res.get(name, {}).get("peak_rss_mb", 0))
                res[name] = r
    ceil = res["ceiling"]["it_s"] if "ceiling" in res else None
    plain = res["plain"]["it_s"] * res["plain"]["networks"] if "plain" in res else None
    where = "CPU" if DEVICE == "cpu" else torch_device_name()
    gflops = f"{res['ceiling']['gflops']:.1f} GFLOP/s = {ceil:.0f} it/s" if ceil else "failed"
    print(f"\nLeNet-300-100, batch {BATCH}, Adam, masked, on {where}; {iters} iterations x {REPEATS} repeats x "
          f"{passes} passes per case (best kept); matmul ceiling {gflops}")
    gpu = " peak GPU MB" if DEVICE == "cuda" else ""
    print(f"{'case':<13} {'networks':>8} {'net-it/s':>9} {'% ceiling':>9} {'x plain':>8} {'peak MB':>8}{gpu}")
    for name in rows:
        if name not in res:
            print(f"{name:<13} failed: {failed[name]}")
            continue
        r = res[name]
        rate = r["it_s"] * r["networks"]
        mem = f" {r['peak_gpu_mb']:>11.0f}" if DEVICE == "cuda" else ""
        pct = f"{100 * rate / ceil:>8.1f}%" if ceil else f"{'-':>9}"
        ratio = f"{rate / plain:>7.2f}x" if plain else f"{'-':>8}"
        print(f"{name:<13} {r['networks']:>8} {rate:>9.0f} {pct} {ratio} {r['peak_rss_mb']:>8.0f}{mem}")
    if "startup" in res:
        s = res["startup"]
        print(f"stage start-up: import torch {s['import_torch_s']:.2f}s, then lottery {s['import_lottery_after_torch_s']:.2f}s")
    if "dvc-stage" in res:
        d = res["dvc-stage"]
        print(f"one executed DVC stage (tiny round): {d['wall_s']:.2f}s wall = {d['startup_s']:.2f}s stage start-up to the "
              f"first iteration + {d['trained_s']:.2f}s training + {d['wall_s'] - d['startup_s'] - d['trained_s']:.2f}s "
              "DVC and writing outputs")
    if "ours-10" in res:
        paper_estimate(res["ours-10"], res.get("ceiling"))
    if failed:
        sys.exit(f"{len(failed)} case(s) failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))


def paper_estimate(ours10: dict, ceiling: dict | None) -> None:
    """The paper's full LeNet figure at the 10-network rate: r0 trains the 5 dense trials, r1..r20 each 5 trials x
    (ticket + reinit) = 10 networks as one stack; 50K iterations each. Validation every 100 iterations on 5,000
    examples comes on top, at the measured cost of one pass over the 10-network stack (per network)."""
    nets, its = 5 + 20 * 10, 50000
    net_its = nets * its
    best = ours10["it_s"] * 10
    train_h = net_its / best / 3600
    val_h = nets * (its // EVAL_EVERY) * ours10["eval_s"] / 10 / 3600
    print(f"paper's full LeNet figure ((5 + 20 x 10 networks) x 50K iterations; rounds train 10-network stacks): "
          f"{train_h + val_h:.1f} h = {train_h:.1f} h of training at {best:.0f} net-it/s + {val_h:.1f} h of validation "
          f"({ours10['eval_s']:.2f} s per pass of 10 networks over {VALIDATION} examples, "
          f"every {EVAL_EVERY} iterations)")
    if ceiling:
        matmul_hours = net_its * flops_per_iteration() / (ceiling["gflops"] * 1e9) / 3600
        print(f"  (its training matmuls alone at this run's ceiling: {matmul_hours:.1f} h)")


def torch_device_name() -> str:
    import torch

    return torch.cuda.get_device_name()


if __name__ == "__main__":
    main()
