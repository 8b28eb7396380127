"""Your own network through the pipeline's functions: model.name 'package.module:factory' on prepared data."""
from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import idx_bytes, make_images, write_gz

from lottery import artifacts, config, data, generic, masks, models, pruning, rounds, ticket
from lottery.config import ConfigError, LotteryError

EXAMPLE = "examples.my_network:build"


def fashion(root: Path, n_train: int = 60, n_test: int = 20) -> Path:
    """A tiny Fashion-MNIST in its real IDX (gzip) format under root/fashion-mnist/."""
    folder = root / "fashion-mnist"
    write_gz(folder / "train-images-idx3-ubyte.gz", idx_bytes(make_images(n_train, 0, seed=1)))
    write_gz(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(n_train) % 10))
    write_gz(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(make_images(n_test, 100, seed=2)))
    write_gz(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.arange(n_test) % 10))
    return root


def make_cfg(root: Path, name: str = EXAMPLE, prune: dict | None = None, **train) -> config.Config:
    return config.from_dict({
        "trials": 2, "data": {"dataset": "fashion-mnist", "validation": 10, "root": str(root)},
        "model": {"name": name},
        "train": {"iterations": 4, "eval_every": 2, "batch_size": 8, "log_every": 0, **train},
        "prune": {"rounds": 1, "chain": config.chain(1), **(prune or {})}})


@pytest.fixture
def prepared(tmp_path) -> Path:
    cfg = make_cfg(fashion(tmp_path / "raw"))
    path = tmp_path / "prepared.pt"
    data.save_prepared(data.prepare(cfg), path, data.prepared_params(cfg))
    return path


def test_config_takes_an_import_path_and_checks_only_its_syntax():
    def cfg(name: str) -> config.Config:
        return config.from_dict({"model": {"name": name}, "prune": {"chain": config.chain(15)}})

    assert cfg("no.such.module:build").model.name == "no.such.module:build"
    for bad in ("examples.my_network:", ":build", "examples/my_network.py:build", "a b:c"):
        with pytest.raises(ConfigError, match=r"model.name: .*'package.module:factory'"):
            cfg(bad)
    with pytest.raises(ConfigError, match="model.name: 'lenet-30'"):
        cfg("lenet-30")


def test_models_dispatch_to_the_generic_stack_with_the_dataset_sizes():
    model = models.build(EXAMPLE, [3, 4], 10, (1, 28, 28))
    assert isinstance(model, generic.GenericStack)
    assert models.prunable(model) == ["0.weight", "4.weight", "9.weight", "11.weight"]
    assert models.kinds(model) == {"0.weight": "conv", "4.weight": "conv", "9.weight": "fc", "11.weight": "output"}
    from examples.my_network import build

    torch.manual_seed(4)
    alone = build(10, (1, 28, 28))
    assert torch.equal(model.state_dict()["9.weight"][1], alone.state_dict()["9.weight"])
    assert models.n_networks(model) == 2 and model(torch.zeros(1, 5, 1, 28, 28)).shape == (2, 5, 10)


def test_init_and_rounds_train_your_network_and_export_its_ticket(tmp_path, prepared):
    cfg = make_cfg(tmp_path / "raw")
    runs = tmp_path / "runs"
    rounds.init(cfg, runs / "init", prepared, log=lambda *a: None)
    theta0, meta = artifacts.load(runs / "init" / "model.pt", "weights")
    assert meta["model"] == EXAMPLE and meta["num_classes"] == 10 and meta["input_shape"] == [1, 28, 28]
    for name, prev in [("r0", "init"), ("r1", "r0")]:
        rounds.run_round(cfg, name, prev, runs, prepared, log=lambda *a: None)
    mask, _ = artifacts.load(runs / "r1" / "mask.pt", "mask")
    kept = masks.kept(mask)
    dense = {k: m[0].numel() for k, m in mask.items()}
    assert kept["0.weight"].tolist() == [dense["0.weight"] - round(0.2 * dense["0.weight"])] * 2
    assert kept["11.weight"].tolist() == [dense["11.weight"] - round(0.1 * dense["11.weight"])] * 2
    trained, _ = artifacts.load(runs / "r1" / "model.pt", "weights")
    assert (trained["0.weight"][~mask["0.weight"]] == 0).all()
    assert not torch.equal(trained["1.running_mean"], theta0["1.running_mean"])  # BatchNorm trained
    ticket.export(runs, "r1", tmp_path / "ticket.pt", prepared)
    net = ticket.load_ticket(tmp_path / "ticket.pt")
    x, _ = artifacts.load(prepared, "prepared")
    assert net(x["x_test"]).shape == (20, 10)  # raw uint8 images: the ticket normalises them


def test_prune_layers_ignore_and_layer_rates_choose_what_a_round_prunes(tmp_path, prepared):
    cfg = make_cfg(tmp_path / "raw", prune={"layers": ["*.weight"], "ignore": ["1.*", "5.*", "0.*"],
                                            "layer_rates": {"4.*": 0.5, "*": 0.3}})
    runs = tmp_path / "runs"
    rounds.init(cfg, runs / "init", prepared, log=lambda *a: None)
    rounds.run_round(cfg, "r0", "init", runs, prepared, log=lambda *a: None)
    stack = rounds.build_stack(cfg, "r1", "r0", runs)
    assert stack.names == ["4.weight", "9.weight", "11.weight"]  # BatchNorm weights 1, 5 and the first conv ignored
    dense = {k: m[0].numel() for k, m in stack.ticket_mask.items()}
    kept = {k: v.tolist() for k, v in masks.kept(stack.ticket_mask).items()}
    assert kept == {"4.weight": [dense["4.weight"] // 2] * 2,  # 4,608 weights: 2,304 pruned at 0.5
                    "9.weight": [dense["9.weight"] - round(0.3 * dense["9.weight"])] * 2,
                    "11.weight": [dense["11.weight"] - round(0.3 * dense["11.weight"])] * 2}


def test_prune_layers_and_rates_are_validated_naming_the_key(tmp_path, prepared):
    with pytest.raises(ConfigError, match=r"prune.layers: \['fc\*'\] is not allowed \(\[\] unless model.name is your own"):
        config.from_dict({"prune": {"layers": ["fc*"], "chain": config.chain(15)}})
    with pytest.raises(ConfigError, match=r"prune.layer_rates.fc\*: 1.0 is not allowed"):
        config.from_dict({"prune": {"layer_rates": {"fc*": 1.0}, "chain": config.chain(15)}})
    with pytest.raises(ConfigError, match=r"prune.ignore: pattern 'nope\*' matches no parameter"):
        rounds.init(make_cfg(tmp_path / "raw", prune={"ignore": ["nope*"]}), tmp_path / "init", prepared)
    cfg = make_cfg(tmp_path / "raw", prune={"layer_rates": {"nope*": 0.1}})
    with pytest.raises(ConfigError, match=r"prune.layer_rates: pattern 'nope\*' matches no prunable weight"):
        pruning.plan(cfg.prune, models.kinds(models.build(EXAMPLE, [0], 10, (1, 28, 28))), 1)


def test_layer_rates_apply_to_the_built_in_networks_too():
    cfg = config.from_dict({"prune": {"layer_rates": {"layers.1.*": 0.5}, "chain": config.chain(15)}}).prune
    kinds = models.kinds(models.build("lenet-300-100", [0]))
    assert pruning.plan(cfg, kinds, 1).rates == {"layers.0.weight": 0.2, "layers.1.weight": 0.5,
                                                 "layers.2.weight": 0.1}


def write_module(tmp_path: Path, body: str) -> str:
    """A user's module, importable under a name of its own (one per test: sys.modules keeps modules)."""
    name = f"usernet_{tmp_path.name.replace('-', '_').replace('[', '_').replace(']', '_')}"
    (tmp_path / f"{name}.py").write_text("from torch import nn\n" + textwrap.dedent(body))
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    return name


@pytest.mark.parametrize("body, attr, expect", [
    ("", "build", "has no attribute 'build'"),
    ("def build():\n    raise RuntimeError('boom')\n", "build", "raised RuntimeError: boom"),
    ("def build():\n    return 3\n", "build", "returned a int, expected a torch.nn.Module"),
    ("def build():\n    return nn.Sequential(nn.ReLU())\n", "build", "no prunable weights"),
    ("def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 7))\n", "build", "expected (8, 10)"),
    ("def build():\n    return nn.Sequential(nn.Linear(5, 10))\n", "build", "the forward fails on the dataset's input"),
])
def test_bad_networks_stop_init_before_any_training_naming_the_key_and_path(tmp_path, prepared, body, attr, expect):
    name = f"{write_module(tmp_path, body)}:{attr}"
    with pytest.raises(ConfigError) as e:
        rounds.init(make_cfg(tmp_path / "raw", name), tmp_path / "runs" / "init", prepared, log=lambda *a: None)
    assert str(e.value).startswith("model.name: ") and expect in str(e.value), str(e.value)
    assert not (tmp_path / "runs" / "init" / "model.pt").exists()


def test_a_module_that_does_not_import_is_named(tmp_path, prepared):
    with pytest.raises(ConfigError, match=r"model.name: 'no_such_pkg.mod:build': module 'no_such_pkg.mod' does not import"):
        rounds.init(make_cfg(tmp_path / "raw", "no_such_pkg.mod:build"), tmp_path / "init", prepared)


# ---------------------------------------------------------------- end to end: real git + real DVC

def test_dvc_exp_run_of_the_example_network_and_editing_it_reruns_exactly_what_builds_it(repo):
    import shutil

    from conftest import ROOT, ran

    shutil.copytree(ROOT / "examples", repo.path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    repo.commit("the example network")
    fashion(repo.path / "data" / "raw", n_train=80, n_test=20)  # the real IDX format, where check looks first
    sets = ["model.name=examples.my_network:build", "data.dataset=fashion-mnist", "data.validation=20",
            "train.iterations=10", "train.eval_every=5", "train.batch_size=8", "trials=1"]
    out = repo.dvc("exp", "run", *[a for s in sets for a in ("-S", s)]).stdout
    rounds_ran = [s for s in ran(out) if s not in ("prepare", "init", "summarize")]
    assert ran(out)[:2] == ["prepare", "init"] and ran(out)[-1] == "summarize" and len(rounds_ran) == 3, out
    code = json.loads((repo.path / "data" / "code.json").read_text())
    assert code["model.name"] == "examples.my_network:build" and set(code["files"]) == {"examples/my_network.py"}
    metrics = json.loads((repo.path / "runs" / "r2" / "metrics.json").read_text())
    assert [n["variant"] for n in metrics["networks"]] == ["ticket", "reinit", "random"]
    assert (repo.path / "metrics" / "accuracy.png").is_file()

    assert ran(repo.dvc("repro").stdout) == []
    with open(repo.path / "examples" / "my_network.py", "a") as f:
        f.write("\n# edited: a new version of the network\n")
    out = repo.dvc("repro").stdout
    # not prepare; summarize reruns only if the rounds' outputs changed (a comment changes no weight)
    assert set(ran(out)) - {"summarize"} == {"init", *rounds_ran}, out
    assert "Restored stage" not in out, out


# ---------------------------------------------------------------- your own dataset

LOADER = """
import numpy as np
import torch

def arrays():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 3, 8, 8), dtype=np.uint8)
    return x, np.arange(40) % 4, torch.from_numpy(x[:12].copy()), torch.arange(12) % 4

def datasets():
    x = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return [(x[i], i % 4) for i in range(24)], [(x[i], i % 4) for i in range(24, 30)]

def mismatched():
    return np.zeros((5, 2)), np.arange(4), np.zeros((2, 2)), np.arange(2)

def float_labels():
    return np.zeros((4, 2)), np.ones(4) / 2, np.zeros((2, 2)), np.arange(2)

def unseen_test_label():  # train labels 0-9, one test label 50: it would make a 51-way network
    return np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 10, np.zeros((3, 3)), np.array([1, 50, 2])

def nan_pixel():
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[7, 2] = np.nan
    return x, np.arange(40) % 10, np.zeros((3, 3)), np.arange(3)

def shapes():
    return np.zeros((40, 3)), np.arange(40) % 10, np.zeros((3, 4)), np.arange(3)

def strings():
    return np.array([["a"]] * 40), np.arange(40) % 10, np.array([["b"]] * 3), np.arange(3)

def constant():
    return np.ones((40, 3)), np.arange(40) % 10, np.ones((3, 3)), np.arange(3)
"""


@pytest.mark.parametrize("loader", ["arrays", "datasets"])
def test_your_own_loader_feeds_your_own_network(tmp_path, loader):
    module = write_module(tmp_path, LOADER)
    cfg = config.from_dict({
        "trials": 1, "data": {"dataset": f"{module}:{loader}", "validation": 6}, "model": {"name": EXAMPLE},
        "train": {"iterations": 2, "eval_every": 1, "batch_size": 4, "log_every": 0},
        "prune": {"rounds": 1, "chain": config.chain(1)}})
    tensors = data.prepare(cfg)
    n_train = 34 if loader == "arrays" else 18
    assert tensors["x_train"].shape == (n_train, 3, 8, 8) and tensors["y_test"].tolist()[:4] == [0, 1, 2, 3]
    assert tensors["x_train"].dtype == (torch.uint8 if loader == "arrays" else torch.float32)
    data.save_prepared(tensors, tmp_path / "prepared.pt", data.prepared_params(cfg))
    runs = tmp_path / "runs"
    rounds.init(cfg, runs / "init", tmp_path / "prepared.pt", log=lambda *a: None)
    _, meta = artifacts.load(runs / "init" / "model.pt", "weights")
    assert meta["num_classes"] == 4 and meta["input_shape"] == [3, 8, 8]
    rounds.run_round(cfg, "r0", "init", runs, tmp_path / "prepared.pt", log=lambda *a: None)
    trained, _ = artifacts.load(runs / "r0" / "model.pt", "weights")
    assert trained["11.weight"].shape == (1, 4, 128)  # the output layer has the loader's 4 classes


@pytest.mark.parametrize("loader, expect", [
    ("mismatched", "train split: 5 examples but labels of shape (4,): expected one label per example"),
    ("float_labels", "train split: labels are float64, expected integers"),
    ("nothing", "has no attribute 'nothing'"),
    ("unseen_test_label", "test split: label 50 does not occur in the training split (1 such label(s); training labels 0..9)"),
    ("nan_pixel", "train split: example 7 holds nan (non-finite inputs at 1 positions)"),
    ("shapes", "test split: examples of shape (4,), the training split's are (3,)"),
    ("strings", "train split: examples are <U1 (40, 1), expected numbers, one example per row"),
    ("constant", "train split: constant inputs (standard deviation 0): normalisation would divide by zero"),
])
def test_a_bad_loader_stops_prepare_naming_the_key_the_split_and_path(tmp_path, loader, expect):
    """Bad data stops `prepare`, before any training, in one line naming data.dataset and the split."""
    module = write_module(tmp_path, LOADER)
    cfg = config.from_dict({"data": {"dataset": f"{module}:{loader}", "validation": 1},
                            "model": {"name": EXAMPLE}, "prune": {"chain": config.chain(15)}})
    with pytest.raises(LotteryError) as e:
        data.prepare(cfg)
    assert str(e.value).startswith(f"data.dataset: {module}:{loader}") or loader == "nothing", str(e.value)
    assert expect in str(e.value) and module in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_check_records_your_loaders_source_so_prepare_reruns_when_it_changes(tmp_path, monkeypatch):
    from lottery import raw

    module = write_module(tmp_path, LOADER)
    monkeypatch.chdir(tmp_path)
    record = raw.describe(f"{module}:arrays", "data/raw")
    assert record["dataset"] == f"{module}:arrays" and list(record["code"]) == [f"{module}.py"]
    before = record["code"][f"{module}.py"]["sha256"]
    with open(tmp_path / f"{module}.py", "a") as f:
        f.write("# edited\n")
    assert raw.describe(f"{module}:arrays", "data/raw")["code"][f"{module}.py"]["sha256"] != before
