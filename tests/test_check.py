"""The check stage, end to end: the whole params.yaml is validated before any stage runs, and
data/raw.json (the raw files prepare reads, digested) makes prepare rerun when they change."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import yaml
from conftest import ran
from lottery import artifacts
from test_data import idx_bytes, make_images, write_gz

ROUND_FILES = ("mask.pt", "model.pt", "controls.pt", "metrics.json")


def test_check_runs_first_on_every_repro_without_torch(repo):
    out = repo.dvc("repro").stdout
    assert out.startswith("Running stage 'check'") and ran(out) == []
    record = json.loads((repo.path / "data/raw.json").read_text())
    assert record["dataset"] == "mnist1d" and record["generator"]["args"]["seed"] == 42
    imports = repo.run(sys.executable, "-X", "importtime", "-m", "stages.check").stderr
    assert "lottery.config" in imports and not [line for line in imports.splitlines() if line.endswith("| torch")]


def test_bad_value_fails_in_check_and_the_workspace_keeps_every_round(repo):
    repo.set_params({"prune": {"rate": 1.5}})
    p = repo.dvc("repro", check=False)
    assert p.returncode != 0 and "prune.rate: 1.5" in p.stderr, p.stdout + p.stderr
    assert ran(p.stdout) == []
    for r in ("r0", "r1", "r2"):
        for f in ROUND_FILES:
            assert (repo.path / "runs" / r / f).is_file(), f"runs/{r}/{f}"


def test_keys_no_stage_lists_are_validated_when_everything_is_up_to_date(repo):
    for over, key in [({"prune": {"rat": 0.3}}, "prune.rat"),
                      ({"train": {"checkpoint_seconds": 0}}, "train.checkpoint_seconds"),
                      ({"train": {"log_every": -5}}, "train.log_every"),
                      ({"train": {"lr": math.inf}}, "train.lr")]:
        repo.run("git", "checkout", "params.yaml")
        repo.set_params(over)
        p = repo.dvc("repro", check=False)
        assert p.returncode != 0 and key in p.stderr, (key, p.stdout, p.stderr)
        assert ran(p.stdout) == [], key
    repo.run("git", "checkout", "params.yaml")
    assert ran(repo.dvc("repro").stdout) == []


def test_unknown_key_in_conf_fails_exp_run_and_make_params(repo):
    p = repo.dvc("exp", "run", "-S", "+prune.rat=0.3", check=False)
    assert p.returncode != 0 and "unknown key 'prune.rat'" in p.stderr, p.stdout + p.stderr
    assert ran(p.stdout) == []
    p = repo.run(sys.executable, "-m", "lottery.params", "+prune.rat=0.3", check=False)
    assert p.returncode != 0 and "unknown key 'prune.rat'" in p.stderr
    conf = repo.path / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("\nprune:\n", "\nprune:\n  rat: 0.3\n"))
    repo.commit("a typo in conf/")
    p = repo.dvc("exp", "run", check=False)
    assert p.returncode != 0 and "unknown key 'prune.rat'" in p.stderr, p.stdout + p.stderr
    assert ran(p.stdout) == []


def test_shell_in_a_hand_edited_round_name_never_reaches_a_shell(repo):
    params = repo.params()
    params["prune"]["chain"] = {("r1$(touch pwned)" if k == "r1" else k): v for k, v in params["prune"]["chain"].items()}
    (repo.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = repo.dvc("repro", check=False)
    assert p.returncode != 0 and "r<digits>" in p.stderr, p.stdout + p.stderr
    assert not (repo.path / "pwned").exists()


def test_a_changed_raw_file_reruns_prepare(repo):
    # a tiny Fashion-MNIST in IDX format where prepare looks first, data/raw/fashion-mnist/
    folder = repo.path / "data" / "raw" / "fashion-mnist"
    write_gz(folder / "train-images-idx3-ubyte.gz", idx_bytes(make_images(100, 0, seed=1)))
    write_gz(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(100) % 10))
    write_gz(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(make_images(20, 150, seed=2)))
    write_gz(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.arange(20) % 10))
    repo.set_params({"data": {"dataset": "fashion-mnist", "validation": 10}, "model": {"name": "lenet-300-100"}})
    assert ran(repo.dvc("repro", "prepare").stdout) == ["prepare"]
    assert ran(repo.dvc("repro", "prepare").stdout) == []
    write_gz(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes((np.arange(20) + 3) % 10))  # an edited raw file
    assert ran(repo.dvc("repro", "prepare").stdout) == ["prepare"]
    prepared, _ = artifacts.load(repo.path / "data/prepared.pt", "prepared")
    assert prepared["y_test"].tolist() == [(i + 3) % 10 for i in range(20)]
    # a file changed between check and prepare stops prepare, naming it
    write_gz(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.arange(20) % 10))
    p = repo.run(sys.executable, "-m", "stages.prepare", check=False)
    assert p.returncode == 2 and "data/raw/fashion-mnist/t10k-labels-idx1-ubyte.gz: changed" in p.stderr, p.stderr
