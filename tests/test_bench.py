"""The benchmark runs in quick mode and prints its table (it never asserts a speed)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_prints_its_table():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_step.py"), "--quick"],
                       capture_output=True, text=True, check=True, cwd=ROOT)
    out = p.stdout
    assert "matmul ceiling" in out and "GFLOP/s" in out
    names = ["plain", "ours-1", "ours-2", "ours-6", "ours-10", "ours-10-bf16"]
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in [[n] for n in names]]
    assert [r[0] for r in rows] == names
    for r in rows:
        assert float(r[2]) > 0 and r[3].endswith("%") and r[4].endswith("x")
    assert rows[0][4] == "1.00x"  # the plain loop is the baseline
    assert "paper's full LeNet figure" in out and "of validation" in out and "stage start-up" in out
