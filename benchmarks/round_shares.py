"""Where a default round's time goes: start-up, training steps, validation, test, saving, as shares of the round.

Runs the pipeline's own stage scripts (no DVC) on Fashion-MNIST with params.yaml's defaults (LeNet-300-100,
2 trials, ticket + reinit + random, 3,000 iterations, validation every 100 on 5,000 images): check, prepare,
init, the dense round r0 (2 networks: the tickets), then the 6-network round r1 pruned straight to r15's density
(fully-connected layers at 0.8^15 = 3.5%, the output layer at 0.9^15: 3.6% of the weights); once with
`train.sparse: auto` (sparse execution) and once with `off` (the dense path), each in its own folder
(train.sparse is a param of init and r0 too). Each round's last log line is its time line
(lottery.training.Clock); this prints the shares. Asserts nothing. The machine's speed drifts: compare shares
within one run, not seconds across runs; under load, run it on one thread (OMP_NUM_THREADS=1).

    python benchmarks/round_shares.py [--iterations 3000] [--data data/prepared.pt] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("start-up", "steps", "validation", "test", "saving", "other")
R15 = ["prune.rate=0.96482", "prune.output_rate=0.79411"]  # 1 - 0.8^15, 1 - 0.9^15: r15's density in one round


def stage(folder: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's lottery, not the one the venv points at
    print(f"{folder.name}: {' '.join(args)} ...", file=sys.stderr, flush=True)
    p = subprocess.run([sys.executable, str(ROOT / "stages" / args[0]), *args[1:]], cwd=folder, env=env,
                       capture_output=True, text=True)
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "logs" / f"{'-'.join(args)}.txt").write_text(p.stdout + p.stderr)
    if p.returncode:
        sys.exit(f"{' '.join(args)} failed: {(p.stderr.strip().splitlines() or ['(no output)'])[-1]}")
    return p.stdout


def params(folder: Path, overrides: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from lottery.params import compose

    shutil.copytree(ROOT / "conf", folder / "conf", dirs_exist_ok=True)
    shutil.copytree(ROOT / "hydra_plugins", folder / "hydra_plugins", dirs_exist_ok=True)
    compose(overrides, folder)


def shares(log: str, name: str) -> dict[str, float]:
    """{part: seconds} and "total" from round `name`'s time line."""
    line = next(line for line in log.splitlines() if line.startswith(f"[{name}] time "))
    out = {"total": float(re.search(r"time ([\d.]+)s:", line).group(1))}
    out.update({p: float(s) for p, s in re.findall(r"([a-z-]+) ([\d.]+)s \d+%", line)})
    return out


def row(name: str, mode: str, log: str) -> tuple:
    """(round, networks, density, train.sparse, {part: seconds}) from round `name`'s log."""
    nets, density = re.search(rf"\[{name}\] (\d+) networks .*?([\d.]+)% of weights remaining", log).groups()
    return name, nets, f"{density}%", mode, shares(log, name)


def cell(seconds: float, total: float) -> str:
    return f"{100 * seconds / total:.0f}% ({seconds:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--data", type=Path, help="a prepared.pt of these params (default: prepare Fashion-MNIST here)")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    top = args.keep or Path(tempfile.mkdtemp(prefix="round-shares-"))
    rows = []
    try:
        for mode in ("auto", "off"):  # (train.sparse is a param of init and r0 too: one folder each)
            folder, base = top / mode, [f"train.iterations={args.iterations}", "prune.rounds=1", f"train.sparse={mode}"]
            folder.mkdir(parents=True, exist_ok=True)
            params(folder, base)
            (folder / "data").mkdir(exist_ok=True)
            if args.data or mode != "auto":
                shutil.copy2(args.data or top / "auto" / "data" / "prepared.pt", folder / "data" / "prepared.pt")
            else:
                stage(folder, "check.py")
                stage(folder, "prepare.py")
            stage(folder, "init.py")
            rows.append(row("r0", mode, stage(folder, "round.py", "r0", "init")))
            params(folder, base + R15)
            rows.append(row("r1", mode, stage(folder, "round.py", "r1", "r0")))
    finally:
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)
    print(f"LeNet-300-100, 2 trials (r0: the tickets; r1: ticket + reinit + random), {args.iterations} iterations, "
          "validation every 100 on 5,000 images; share of each round's wall time (seconds in brackets)")
    print(f"{'round':<6}{'nets':>5}{'density':>8} {'sparse':>6} {'seconds':>8}" + "".join(f"{p:>17}" for p in PARTS))
    for name, nets, density, mode, s in rows:
        cells = "".join(f"{cell(s.get(p, 0.0), s['total']):>17}" for p in PARTS)
        print(f"{name:<6}{nets:>5}{density:>8} {mode:>6} {s['total']:>8.1f}{cells}")


if __name__ == "__main__":
    main()
