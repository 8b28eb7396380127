"""Training throughput, measured side by side in one run (`make bench`).

LeNet-300-100, batch 60, Adam 1.2e-3, masks re-applied after every step, data in memory:
  ceiling  the matmuls of the model's own shapes (forward + backward) alone
  plain    a plain PyTorch loop (nn.Sequential, torch.optim.Adam, one network)
  ours N   lottery.training.train on a stack of N networks (the round stage's path;
           6 = the default round, 10 = the paper's figure: 5 trials x ticket + reinit)
  ours-10-bf16   the same with `train.precision: bfloat16` (autocast matmuls)
  on CUDA also: ours-10-eager (no CUDA graph) and ours-100
Each case runs in its own process (peak RSS per case): a warm-up, then the best of --repeats timed
repeats. The cases run in turn, --passes passes over all of them, and each reports its best pass:
this machine's speed drifts by tens of percent within minutes, and interleaving exposes
every case to the same drift. Prints ratios, never asserts speed.

Then (CPU) whole rounds: lottery.training.train as a stage runs it (validation every 100 iterations on
5,000 examples, early-stop copies, the final test evaluation on 10,000) for 15 stacked LeNet-300-100s (the
paper's figure: 5 trials x ticket + 2 controls) at 100%, 13.5% and 3.6% density (rounds r0, r9, r15 at 20%
per round), `train.sparse` off against auto, interleaved in one process over --passes passes; shortened to
--round-iterations iterations (the paper's rounds are 50,000). From them, the paper's full LeNet figure
estimated round by round at each round's density (`paper_estimate`).

    python benchmarks/train_step.py [--quick] [--iterations N] [--passes P] [--repeats R] [--device cpu|cuda]
                                    [--round-iterations N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# this checkout's lottery (and benchmarks/sparse_step.py), whatever the environment has installed
sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")]

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


def flops_per_iteration(density: tuple[float, ...] = (1.0, 1.0, 1.0)) -> float:
    """Forward products, weight gradients, and input gradients of the layers after the first; with `density`
    (per layer), of the kept weights only."""
    f = sum(2 * BATCH * i * o * d for (i, o), d in zip(SHAPES, density))  # forward
    f += sum(2 * BATCH * i * o * d for (i, o), d in zip(SHAPES, density))  # dW
    f += sum(2 * BATCH * i * o * d for (i, o), d in zip(SHAPES[1:], density[1:]))  # dX (not needed for the input layer)
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
    from lottery.data import TensorData
    from lottery.runtime import configure_runtime
    from lottery.training import train

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
    return {"it_s": iters / dt, "networks": n}


ROUND_NETS = 15  # the paper's figure: 5 trials x (ticket + reinit + random)
ROUND_DENSITIES = (1.0, 0.135, 0.036)  # the fc layers' density at rounds r0, r9 and r15 at 20% per round
PREPARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "prepared.pt")


class Clock:
    """train()'s `watch` hook, called after every evaluation: when the last one ended (the rest of a round is
    its final test evaluation)."""

    key = "clock"

    def __call__(self, it: int, state) -> None:
        self.at = time.perf_counter()


def case_rounds(iters: int, passes: int, quick: bool = False) -> dict:
    """Whole rounds of ROUND_NETS stacked LeNets, lottery.training.train as a round stage calls it, at every
    density with train.sparse off and auto, in turn over `passes` passes. Per case and pass: [seconds of the
    iterations with their validation and early-stop copies, seconds of the end (the final test evaluation)].
    `quick`: a tenth of the examples (checks the rows are produced)."""
    import torch

    from lottery import models
    from lottery.config import TrainConfig
    from lottery.data import TensorData, load_prepared
    from lottery.runtime import configure_runtime
    from lottery.sparse import AUTO_DENSITY
    from lottery.training import train
    from sparse_step import masks_at  # the random layer-wise masks of a round at a density (this folder)

    configure_runtime(DEVICE, "float32")
    data = load_prepared(PREPARED, DEVICE) if os.path.isfile(PREPARED) and not quick else None
    if data is not None and data.example_shape in [(1, 28, 28), (28, 28), (784,)]:  # (Fashion-)MNIST prepared
        source = f"data/prepared.pt ({len(data.train)} training examples)"
    else:  # Fashion-MNIST's shape: 55,000 training, 5,000 validation, 10,000 test images
        g, (tr, va, te) = torch.Generator().manual_seed(0), [n // (10 if quick else 1) for n in (55_000, VALIDATION, 10_000)]
        x = torch.randn(tr + va + te, 1, 28, 28, generator=g).to(DEVICE)
        y = torch.randint(0, 10, (tr + va + te,), generator=g).to(DEVICE)
        data = TensorData(x[:tr], y[:tr], x[tr:tr + va], y[tr:tr + va], x[tr + va:], y[tr + va:])
        source = "random data of Fashion-MNIST's shape" if not quick else "random data, a tenth of Fashion-MNIST's size"
    seeds, quiet = list(range(ROUND_NETS)), lambda *_: None  # noqa: E731
    cases = {}  # name -> (model, mask, train.sparse): the same θ0 (the same seeds) in every case
    for d in ROUND_DENSITIES:
        for mode in ("off", "auto"):
            model = models.build("lenet-300-100", seeds)
            mask = {k: m.to(DEVICE) for k, m in masks_at(model, d).items()}
            cases[f"{d:.3f} {mode}"] = (model.to(DEVICE), mask, mode)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    eval_every = EVAL_EVERY if iters >= 2 * EVAL_EVERY else max(1, iters // 2)
    for model, mask, mode in cases.values():  # warm-up: the sparse structures, evaluation, the allocator
        train(model, mask, data, TrainConfig(iterations=eval_every, eval_every=eval_every, sparse=mode), seeds, log=quiet)
    out: dict = {k: [] for k in cases}
    for _ in range(passes):
        for name, (model, mask, mode) in cases.items():
            model.load_state_dict(init)
            clock = Clock()
            sync()
            t = time.perf_counter()
            train(model, mask, data, TrainConfig(iterations=iters, eval_every=eval_every, sparse=mode), seeds,
                  log=quiet, watch=clock)
            sync()
            out[name].append([clock.at - t, time.perf_counter() - clock.at])
    return {"passes": out, "iterations": iters, "eval_every": eval_every, "validation": len(data.val),
            "test": len(data.test), "data": source, "auto_density": AUTO_DENSITY}


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


def child(name: str, iters: int, args) -> dict:
    if name == os.environ.get("LOTTERY_BENCH_FAIL"):  # how tests/test_bench.py checks that a failed case is reported
        raise SystemExit(f"case {name} failed on purpose (LOTTERY_BENCH_FAIL)")
    fn = {"ceiling": lambda: case_ceiling(iters), "plain": lambda: case_plain(iters), "startup": case_startup,
          "dvc-stage": case_dvc_stage, "rounds": lambda: case_rounds(args.round_iterations, args.passes, args.quick),
          "ours-10-bf16": lambda: case_ours(iters, 10, precision="bfloat16"),
          "ours-10-eager": lambda: case_ours(iters, 10, fast=False)}
    out = fn[name]() if name in fn else case_ours(iters, int(name.split("-")[1]))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if DEVICE == "cuda":
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    global DEVICE, REPEATS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few iterations: checks the table is produced")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=2, help="passes over all cases; each case keeps its best")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="timed repeats per case and process")
    ap.add_argument("--round-iterations", type=int, default=600,
                    help="iterations of the whole rounds (validation every 100; every half of them if fewer than 200)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    DEVICE = args.device
    iters = 30 if args.quick else args.iterations
    passes = 1 if args.quick else args.passes
    REPEATS = 1 if args.quick else args.repeats
    if args.quick:
        args.round_iterations, args.passes = 12, 1
    if args.child:
        print(json.dumps(child(args.child, iters, args)))
        return
    rows = ["plain", "ours-1", "ours-2", "ours-6", "ours-10", "ours-10-bf16"]
    if DEVICE == "cuda":
        rows += ["ours-10-eager", "ours-100"]
    extra = [] if args.quick or DEVICE == "cuda" else ["dvc-stage"]  # DVC runs stages on the CPU machine
    extra.append("rounds")  # (interleaves its own cases over the passes)
    res: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for i in range(passes):
        for name in ["ceiling", *rows] + (["startup", *extra] if i == passes - 1 else []):
            if name in failed:
                continue
            print(f"pass {i + 1}/{passes}: measuring {name} ...", file=sys.stderr, flush=True)
            p = subprocess.run([sys.executable, __file__, "--child", name, "--iterations", str(iters), "--device", DEVICE,
                                "--repeats", str(REPEATS), "--passes", str(passes),
                                "--round-iterations", str(args.round_iterations)]
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
    if "rounds" in res:
        round_rows(res["rounds"])
        paper_estimate(res["rounds"], res.get("ceiling"))
    if failed:
        sys.exit(f"{len(failed)} case(s) failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))


PAPER_TRIALS, PAPER_ROUNDS, PAPER_ITERATIONS = 5, 21, 50_000  # r0..r20 at 20% per round


def round_rows(r: dict) -> None:
    """The whole rounds: median seconds per case and train.sparse auto against off at the same density (the
    median of the per-pass ratios)."""
    its, runs = r["iterations"], r["passes"]
    med = {k: [statistics.median(p[i] for p in v) for i in (0, 1)] for k, v in runs.items()}
    print(f"\nwhole rounds (lottery.training.train as a round stage runs it), {ROUND_NETS} stacked LeNet-300-100s: "
          f"SHORTENED to {its} iterations (the paper's: {PAPER_ITERATIONS:,}), validation every {r['eval_every']} on "
          f"{r['validation']} examples with the early-stop copies, the final test on {r['test']}; {r['data']}; "
          f"median of {len(next(iter(runs.values())))} interleaved passes")
    print(f"{'fc density':>10} {'sparse':>6} {'round s':>8} {'train+val s':>11} {'test s':>6} {'net-it/s':>9} {'x off':>6}")
    for k, (loop, end) in med.items():
        d, mode = k.split()
        off = runs[f"{d} off"]
        ratio = statistics.median((a[0] + a[1]) / (b[0] + b[1]) for a, b in zip(off, runs[k]))
        print(f"{d:>10} {mode:>6} {loop + end:>8.2f} {loop:>11.2f} {end:>6.2f} {ROUND_NETS * its / (loop + end):>9.0f} "
              f"{ratio:>5.2f}x")


def paper_estimate(r: dict, ceiling: dict | None) -> None:
    """The paper's full LeNet figure, round by round at each round's density, from the whole rounds measured.

    r0 trains the 5 dense networks, r1..r20 each a stack of 15 (5 trials x ticket + reinit + random) with the fc
    layers at 0.8^k (the output layer at 0.9^k); 50,000 iterations, validation every 100 on 5,000 examples. A
    round at fc density d costs 50,000 / I x (the measured seconds of the I iterations with their validation at
    d) + (the measured end: the test evaluation); r0's 5 networks a third of a 15-network round. A round that
    runs dense (every round with train.sparse off; with auto, those at or above its crossover AUTO_DENSITY) costs
    the dense round: the median of every measured round that ran dense, since dense execution costs the same at
    every density. A round that auto runs sparse (below the crossover): linear in d between the densities measured
    below it, and beyond them the nearest one's (below the lowest, an upper bound: a sparser round costs less)."""
    its, cross = r["iterations"], r["auto_density"]
    runs = {(float(k.split()[0]), k.split()[1]): v for k, v in r["passes"].items()}
    dense = [p for (d, mode), v in runs.items() if mode == "off" or d >= cross for p in v]
    dense_s = [statistics.median(p[i] for p in dense) for i in (0, 1)]
    sparse = sorted((d, *(statistics.median(p[i] for p in v) for i in (0, 1)))
                    for (d, mode), v in runs.items() if mode == "auto" and d < cross)

    def seconds(mode: str, d: float) -> float:  # a paper round of 15 networks at fc density d
        loop, end = dense_s if mode == "off" or d >= cross or not sparse else (
            interpolate(d, [p[0] for p in sparse], [p[i] for p in sparse]) for i in (1, 2))
        return loop * PAPER_ITERATIONS / its + end

    density = [0.8**k for k in range(PAPER_ROUNDS)]
    nets = [PAPER_TRIALS] + [ROUND_NETS] * (PAPER_ROUNDS - 1)
    cost = {m: [seconds(m, d) * n / ROUND_NETS for d, n in zip(density, nets)] for m in ("off", "auto")}
    off_h, auto_h = sum(cost["off"]) / 3600, sum(cost["auto"]) / 3600
    measured = ", ".join(f"{p[0]:.1%}" for p in sparse)
    print(f"paper's full LeNet figure (r0: the {PAPER_TRIALS} dense networks; r1..r{PAPER_ROUNDS - 1}: {ROUND_NETS} "
          f"networks = {PAPER_TRIALS} trials x ticket + reinit + random, fc layers at 0.8^k; {PAPER_ITERATIONS:,} "
          f"iterations, validation every {EVAL_EVERY}): {auto_h:.2f} h with train.sparse auto, {off_h:.2f} h off "
          f"({off_h / auto_h:.2f}x)")
    print(f"  how: a round at fc density d costs {PAPER_ITERATIONS:,}/{its} x its train+val seconds + its test seconds, "
          f"as measured above; a round run dense (off; auto at {cross:.0%} or more) the median of the {len(dense)} dense "
          f"rounds measured\n  ({dense_s[0]:.2f} + {dense_s[1]:.2f} s); a round auto runs sparse: linear in d between "
          f"the densities measured ({measured}), below {sparse[0][0]:.1%} its cost (an upper bound); r0 = a third\n"
          f"  of a {ROUND_NETS}-network round. Minutes per round, off / auto:")
    for k0 in range(0, PAPER_ROUNDS, 6):
        print("  " + "".join(f"  r{k:<2} {density[k]:>5.1%} {cost['off'][k] / 60:>5.1f}/{cost['auto'][k] / 60:.1f}"
                             for k in range(k0, min(k0 + 6, PAPER_ROUNDS))))
    if ceiling:
        rate = ceiling["gflops"] * 1e9 * 3600
        dense = sum(n * PAPER_ITERATIONS * flops_per_iteration() for n in nets) / rate
        kept = sum(n * PAPER_ITERATIONS * flops_per_iteration((d, d, 0.9**k)) for k, (d, n) in enumerate(zip(density, nets))) / rate
        print(f"  (its training matmuls alone at this run's ceiling: {dense:.2f} h dense, {kept:.2f} h counting only the "
              f"kept weights: the limit of FLOPs proportional to density)")


def interpolate(x: float, xs: list[float], ys: list[float]) -> float:
    """ys at x, linear between the points (xs increasing), the nearest end's value beyond them."""
    if x <= xs[0]:
        return ys[0]
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def torch_device_name() -> str:
    import torch

    return torch.cuda.get_device_name()


if __name__ == "__main__":
    main()
