"""The benchmark runs in quick mode and prints its table (it never asserts a speed); a failing case is reported
and the others still print."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_prints_its_table_and_reports_a_failed_case():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_step.py"), "--quick"], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "LOTTERY_BENCH_FAIL": "ours-2"})
    out = p.stdout
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1] == (
        "1 case(s) failed: ours-2: case ours-2 failed on purpose (LOTTERY_BENCH_FAIL)"), p.stderr
    assert "case ours-2 failed (exit 1): case ours-2 failed on purpose (LOTTERY_BENCH_FAIL)" in p.stderr
    assert "matmul ceiling" in out and "GFLOP/s" in out
    names = ["plain", "ours-1", "ours-2", "ours-6", "ours-10", "ours-10-bf16"]
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in [[n] for n in names]]
    assert [r[0] for r in rows] == names
    assert rows[2][1:] == ["failed:", "case", "ours-2", "failed", "on", "purpose", "(LOTTERY_BENCH_FAIL)"]
    for r in rows[:2] + rows[3:]:
        assert float(r[2]) > 0 and r[3].endswith("%") and r[4].endswith("x")
    assert rows[0][4] == "1.00x"  # the plain loop is the baseline
    assert "stage start-up" in out
    # whole rounds at three densities, train.sparse off and auto, and the paper's estimate from them round by round
    rounds = out.split("whole rounds")[1].splitlines()
    assert rounds[1].split() == ["fc", "density", "sparse", "round", "s", "train+val", "s", "test", "s", "net-it/s", "x", "off"]
    rows = [line.split() for line in rounds[2:8]]
    assert [r[:2] for r in rows] == [[d, m] for d in ("1.000", "0.135", "0.036") for m in ("off", "auto")]
    for r in rows:
        assert float(r[2]) == pytest.approx(float(r[3]) + float(r[4]), abs=0.011) and float(r[5]) > 0
        assert r[6] == "1.00x" if r[1] == "off" else float(r[6][:-1]) > 0
    assert rounds[8].startswith("paper's full LeNet figure (r0: the 5 dense networks; r1..r20: 15 networks")
    assert "h with train.sparse auto" in rounds[8] and "h off" in rounds[8]
    per_round = " ".join(rounds[12:16]).split()
    assert per_round[::3] == [f"r{k}" for k in range(21)]
    assert all(float(off) > 0 and float(auto) > 0 for off, auto in (c.split("/") for c in per_round[2::3]))



def test_resnet50_benchmark_times_a_masked_training_step(monkeypatch, capsys):
    # in this process (no second torch import), tiny: 32x32 images, batch 2, one timed step
    import runpy

    monkeypatch.setattr(sys, "argv", ["resnet50.py", "--batch", "2", "--image-size", "32", "--steps", "1", "--warmup", "1"])
    runpy.run_path(str(ROOT / "benchmarks/resnet50.py"), run_name="__main__")
    head, rate = capsys.readouterr().out.splitlines()[:2]
    assert head.startswith("resnet-50 training step  CPU") and "float32  batch 2  32x32" in head
    assert float(rate.split()[0].replace(",", "")) > 0 and rate.split()[1] == "images/s"


def test_sparse_step_benchmark_prints_sparse_and_dense_side_by_side(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["sparse_step.py", "--nets", "2", "--steps", "2", "--passes", "1"])
    runpy.run_path(str(ROOT / "benchmarks/sparse_step.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert "2 stacked LeNet-300-100, batch 60" in lines[0]
    assert lines[1].split() == ["fc", "density", "dense", "ms", "sparse", "ms", "auto", "ms", "dense/sparse", "dense/auto",
                                "net-it/s", "dense", "sparse", "auto"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1.000", "0.135", "0.036"]
    for r in rows:
        assert all(float(v) > 0 for v in r[1:4]) and r[4].endswith("x") and r[5].endswith("x")
        assert len(r) == 9 and all(float(v) > 0 for v in r[6:9])  # net-it/s of dense, sparse, auto
