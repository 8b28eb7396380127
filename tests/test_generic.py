"""Any nn.Module stacked with torch.func (lottery.generic): stack == one by one, prunable weights, bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery import generic
from lottery.config import ConfigError, TrainConfig
from lottery.data import TensorData
from lottery.training import train

SHAPE = (3, 4, 4)
SEEDS = [3, 4, 5]


def mlp(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 20), nn.ReLU(), nn.Linear(20, num_classes))


def cnn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * (h // 2) * (w // 2), 8), nn.ReLU(), nn.Linear(8, num_classes))


def bare() -> nn.Module:  # takes no arguments
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 10))


def cumulative_bn() -> nn.Module:  # momentum=None: a cumulative average, which vmap cannot run
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.Flatten(), nn.Linear(16, 10))


def raises() -> nn.Module:
    raise RuntimeError("no GPU here")


def not_a_module(num_classes: int) -> str:
    return "a string"


ONE = nn.Linear(48, 10)


def one_instance() -> nn.Module:
    return ONE


def random_width() -> nn.Module:
    return nn.Linear(48, int(torch.randint(5, 50, ())))


NOT_CALLABLE = 42
FACTORIES = {"mlp": mlp, "cnn": cnn}


def single(name: str, seed: int) -> nn.Module:
    """The plain module, as the factory builds it under torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return mlp(num_classes=10) if name == "mlp" else cnn(num_classes=10, input_shape=SHAPE)



def batches(n: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(steps, n, 8, *SHAPE, generator=gen), torch.randint(0, 10, (steps, n, 8), generator=gen)


def half_mask(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every prunable weight with its first half (flattened) pruned, in every network."""
    params = dict(model.named_parameters())
    mask = {}
    for k in generic.prunable(model):
        m = torch.ones_like(params[k], dtype=torch.bool).flatten(1)
        m[:, : m.shape[1] // 2] = False
        mask[k] = m.view_as(params[k])
    return mask


def train_steps(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, mask: dict, optimizer: str) -> None:
    """Masked training, one step per batch: each network's mean loss, mask multiplied after every step."""
    params = dict(model.named_parameters())
    opt = (torch.optim.Adam(model.parameters(), lr=1e-2) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4))
    model.train()
    with torch.no_grad():
        for k, m in mask.items():
            params[k].mul_(m)
    for x, y in zip(xs, ys):
        out = model(x) if isinstance(model, generic.GenericStack) else model(x[0])[None]  # (N, B, classes)
        loss = F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for k, m in mask.items():
                params[k].mul_(m)


# ---------------------------------------------------------------- building


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_each_copy_is_the_factory_under_its_seed(name):
    factory = FACTORIES[name]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    stack = generic.build(factory, SEEDS, 10, SHAPE)
    assert torch.equal(torch.get_rng_state(), before)  # building leaves the global RNG alone
    stacked = stack.state_dict()
    for i, s in enumerate(SEEDS):
        alone = single(name, s)
        assert list(stacked) == list(alone.state_dict())  # the single module's names
        for k, v in alone.state_dict().items():
            assert stacked[k].shape == (3, *v.shape)
            assert torch.equal(stacked[k][i], v), (s, k)
    assert not torch.equal(stacked[next(iter(stacked))][0], stacked[next(iter(stacked))][1])  # seeds differ


def test_factory_arguments_are_passed_when_taken():
    stack = generic.build(cnn, [0], 7, (3, 6, 6))
    assert stack.state_dict()["7.weight"].shape == (1, 7, 8) and stack.state_dict()["5.weight"].shape == (1, 8, 36)
    assert generic.build(bare, [0, 1], 10, SHAPE).state_dict()["1.weight"].shape == (2, 10, 48)


def test_stack_contract_modes_and_state_dict():
    stack = generic.build(cnn, [0, 1], 10, SHAPE)
    x, _ = batches(2, 1)
    assert stack(x[0]).shape == (2, 8, 10) and stack(x[0][:1]).shape == (2, 8, 10)
    assert all(p.shape[0] == 2 for p in stack.parameters()) and all(b.shape[0] == 2 for b in stack.buffers())
    assert stack.state_dict()["1.num_batches_tracked"].tolist() == [2, 2]  # the two train-mode forwards above
    stack.eval()
    assert not stack.training and not stack.net.training and not stack.get_submodule("1").training
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    stack(x[0])
    assert all(torch.equal(v, stack.state_dict()[k]) for k, v in before.items())  # eval: statistics untouched
    other = generic.build(cnn, [5, 6], 10, SHAPE)
    other.load_state_dict(stack.state_dict())
    other.eval()
    assert torch.equal(other(x[0]), stack(x[0]))


# ---------------------------------------------------------------- stack == one by one


@pytest.mark.parametrize("name,optimizer", [("mlp", "sgd"), ("mlp", "adam"), ("cnn", "sgd"), ("cnn", "adam")])
def test_stack_equals_networks_trained_one_by_one(float64, name, optimizer):
    factory = FACTORIES[name]
    xs, ys = batches(3, 20)
    stack = generic.build(factory, SEEDS, 10, SHAPE)
    start = {k: v.clone() for k, v in stack.state_dict().items()}
    train_steps(stack, xs, ys, half_mask(stack), optimizer)
    stacked = stack.state_dict()
    stack.eval()
    shared = stack(xs[0, :1])  # evaluation: one input for all networks
    loop = generic.build(factory, SEEDS, 10, SHAPE, vectorize=False)
    train_steps(loop, xs, ys, half_mask(loop), optimizer)
    loop.eval()
    for i, s in enumerate(SEEDS):
        alone = generic.build(factory, [s], 10, SHAPE)  # the same kernels, one network
        train_steps(alone, xs[:, i : i + 1], ys[:, i : i + 1], half_mask(alone), optimizer)
        alone.eval()
        for k, v in alone.state_dict().items():
            assert torch.equal(stacked[k][i], v[0]), (s, k)
        assert torch.equal(shared[i], alone(xs[0, :1])[0])
        plain = single(name, s)  # the plain module, trained alone
        train_steps(plain, xs[:, i : i + 1], ys[:, i : i + 1], {k: m[0] for k, m in half_mask(alone).items()}, optimizer)
        plain.eval()
        for k, v in plain.state_dict().items():
            assert torch.equal(loop.state_dict()[k][i], v), (s, k)  # the loop: bit for bit
            if v.is_floating_point():  # vmap's batched kernels round differently in the last bits
                assert torch.allclose(stacked[k][i], v, rtol=0, atol=1e-12), (s, k)
        assert torch.equal(loop(xs[0, :1])[i], plain(xs[0, 0]))
    moved = [k for k, v in start.items() if v.is_floating_point() and not torch.equal(v, stacked[k])]
    assert moved == [k for k, v in start.items() if v.is_floating_point()]  # every tensor trained
    if name == "cnn":
        assert stacked["1.num_batches_tracked"].tolist() == [20, 20, 20]



def no_bias_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 20, bias=False), nn.ReLU(inplace=True), nn.Linear(20, 10))


@pytest.mark.parametrize("factory", [mlp, no_bias_mlp])
def test_a_plain_mlp_skips_vmap_with_the_same_result(float64, factory):
    fast, slow = generic.build(factory, SEEDS, 10, SHAPE), generic.build(factory, SEEDS, 10, SHAPE)
    slow.fast = False  # the vmap path
    assert fast.fast and not generic.build(cnn, SEEDS, 10, SHAPE).fast
    assert not generic.build(factory, SEEDS, 10, SHAPE, vectorize=False).fast
    xs, ys = batches(3, 5)
    for model in (fast, slow):
        train_steps(model, xs, ys, half_mask(model), "adam")
        model.eval()
    for k, v in fast.state_dict().items():
        assert torch.allclose(v, slow.state_dict()[k], rtol=0, atol=1e-12), k
    for x in (xs[0], xs[0, :1]):  # each network its batch, one batch for all
        assert torch.allclose(fast(x), slow(x), rtol=0, atol=1e-12)


def tied() -> nn.Module:  # two layers sharing one weight (as tied embeddings do)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 10))
    net[3].weight = net[1].weight
    return net


@pytest.mark.parametrize("vectorize", [True, False])
def test_tied_weights_stay_tied(float64, vectorize):
    stack = generic.build(tied, SEEDS, 10, SHAPE, vectorize=vectorize)
    assert stack.get_submodule("3").weight is stack.get_submodule("1").weight
    assert "3.weight" not in dict(stack.named_parameters()) and "3.weight" in stack.state_dict()  # as in the module
    xs, ys = batches(3, 5)
    train_steps(stack, xs, ys, {}, "adam")
    for i, s in enumerate(SEEDS):
        torch.manual_seed(s)
        plain = tied()
        train_steps(plain, xs[:, i : i + 1], ys[:, i : i + 1], {}, "adam")
        for k, v in plain.state_dict().items():
            same = torch.equal(stack.state_dict()[k][i], v)
            assert same if not vectorize else torch.allclose(stack.state_dict()[k][i], v, rtol=0, atol=1e-12), k


def dropout_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 64), nn.Dropout(0.5), nn.Linear(64, 10))


def test_dropout_draws_its_own_mask_per_network_in_train_mode_only():
    stack = generic.build(dropout_net, [0, 0], 10, SHAPE)  # two identical networks
    assert not stack.fast  # Dropout is not in the fast path's layers
    x = torch.randn(1, 8, *SHAPE)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    generic.check(stack, x[0], torch.arange(8), 10)
    assert torch.equal(torch.get_rng_state(), before)  # the dry forward leaves the global RNG alone
    out = stack(x)
    assert not torch.equal(out[0], out[1])  # randomness="different": one dropout mask per network
    stack.eval()
    out = stack(x)
    assert torch.equal(out[0], out[1])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("path,expected", [
    ("torch.nn", "is not an import path; expected 'package.module:factory'"),
    (":mlp", "is not an import path"),
    ("torch.nn:", "is not an import path"),
    ("no_such_package.models:net", "module 'no_such_package.models' does not import (ModuleNotFoundError: No module "
                                   "named 'no_such_package')"),
    (f"{__name__}:no_such_factory", f"module '{__name__}' has no attribute 'no_such_factory'"),
    (f"{__name__}:NOT_CALLABLE", "is a int, not a callable returning an nn.Module"),
])
def test_load_factory_errors_name_the_key_and_the_path(path, expected):
    with pytest.raises(ConfigError) as e:
        generic.load_factory(path)
    assert str(e.value).startswith(f"model.name: {path!r}") and expected in str(e.value)
    assert "\n" not in str(e.value)


def test_load_factory_finds_the_callable():
    assert generic.load_factory(f"{__name__}:cnn") is cnn
    assert generic.load_factory("torch.nn:Linear", key="k") is nn.Linear


def test_build_errors_name_the_factory():
    with pytest.raises(ConfigError, match=rf"^model.name: {__name__}:raises\(\) raised RuntimeError: no GPU here$"):
        generic.build(raises, [0], 10, SHAPE)
    with pytest.raises(ConfigError, match=rf"^model.name: {__name__}:not_a_module\(num_classes=10\) returned a str, "
                                          "expected a torch.nn.Module$"):
        generic.build(not_a_module, [0], 10, SHAPE)
    for factory in (one_instance, random_width):
        with pytest.raises(ConfigError, match=rf"^model.name: {__name__}:{factory.__name__}\(\) returned a different or the "
                                              "same network for seeds 0 and 1; expected a new network of one "
                                              "architecture per call$"):
            generic.build(factory, [0, 1], 10, SHAPE)


def test_check_passes_a_good_model_and_leaves_it_untouched():
    stack = generic.build(cnn, [0, 1], 10, SHAPE)
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    generic.check(stack, torch.randn(8, *SHAPE), torch.arange(8), 10)
    assert stack.training and all(torch.equal(v, stack.state_dict()[k]) for k, v in before.items())


def test_check_errors():
    x, y = torch.randn(8, *SHAPE), torch.arange(8)
    where = f"model.name: {__name__}"
    wrong_input = generic.build(cnn, [0], 10, (3, 8, 8))  # its first Linear expects 4*4*4 features
    with pytest.raises(ConfigError, match=rf"^{where}:cnn: the forward fails on the dataset's input, one network's "
                                          r"batch of shape \(8, 3, 4, 4\) \(RuntimeError: .*\)$"):
        generic.check(wrong_input, x, y, 10)
    with pytest.raises(ConfigError, match=rf"^{where}:mlp: on a batch of shape \(8, 3, 4, 4\) the output is \(8, 7\), "
                                          r"expected \(8, 10\): one score per class of the dataset \(10 classes\)$"):
        generic.check(generic.build(mlp, [0], 7, SHAPE), x, y, 10)
    with pytest.raises(ConfigError, match=rf"^{where}:mlp: label 7 in the data, expected labels below 7$"):
        generic.check(generic.build(mlp, [0], 7, SHAPE), x, y, 7)


def test_a_module_that_vmap_cannot_run_is_reported_and_runs_as_a_loop():
    x = torch.randn(8, *SHAPE)
    stack = generic.build(cumulative_bn, [0, 1], 10, SHAPE)
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    with pytest.raises(ConfigError, match=rf"^model.name: {__name__}:cumulative_bn: the forward fails on the dataset's "
                                          r"input, .*; it runs one network at a time: build it with vectorize=False$"):
        generic.check(stack, x, torch.arange(8), 10)  # eval mode runs under vmap; training does not
    assert stack.training and all(torch.equal(v, stack.state_dict()[k]) for k, v in before.items())
    assert stack.vectorize
    loop = generic.build(cumulative_bn, [0, 1], 10, SHAPE, vectorize=False)
    generic.check(loop, x, torch.arange(8), 10)
    loop(torch.stack([x, x + 1]))
    torch.manual_seed(1)
    plain = cumulative_bn()
    plain(x + 1)
    assert torch.equal(loop.state_dict()["1.running_mean"][1], plain.state_dict()["1.running_mean"])
    assert loop.state_dict()["1.num_batches_tracked"].tolist() == [1, 1]


# ---------------------------------------------------------------- what is prunable


def test_prunable_by_default_every_linear_and_conv_weight():
    stack = generic.build(cnn, [0, 1], 10, SHAPE)
    assert generic.prunable(stack) == ["0.weight", "5.weight", "7.weight"]
    assert generic.kinds(stack) == {"0.weight": "conv", "5.weight": "fc", "7.weight": "output"}
    assert generic.prunable(single("cnn", 0)) == ["0.weight", "5.weight", "7.weight"]  # a plain module too


def test_prunable_globs():
    stack = generic.build(cnn, [0, 1], 10, SHAPE)
    assert generic.prunable(stack, layers=["*.weight"]) == ["0.weight", "1.weight", "5.weight", "7.weight"]
    assert generic.prunable(stack, layers=["[05].*"]) == ["0.weight", "5.weight", "5.bias"]
    assert generic.prunable(stack, ignore=["7.*"]) == ["0.weight", "5.weight"]
    assert generic.kinds(stack, ignore=["0.weight"]) == {"5.weight": "fc", "7.weight": "output"}
    assert generic.kinds(stack, layers=["5.*"]) == {"5.weight": "fc", "5.bias": "fc"}


def test_prunable_errors_name_the_key_and_the_pattern():
    stack = generic.build(cnn, [0, 1], 10, SHAPE)
    with pytest.raises(ConfigError, match=r"^prune.layers: pattern 'fc\*' matches no parameter; parameters: 0.weight, "):
        generic.prunable(stack, layers=["*.weight", "fc*"])
    with pytest.raises(ConfigError, match=r"^prune.ignore: pattern '9.\*' matches no parameter; parameters: 0.weight, "
                                          r"5.weight, 7.weight$"):
        generic.prunable(stack, ignore=["9.*"])
    with pytest.raises(ConfigError, match=r"^prune.layers: the model has no prunable weights \(nothing left after "
                                          r"prune.ignore\)"):
        generic.prunable(stack, ignore=["*"])
    no_weights = generic.GenericStack([nn.Sequential(nn.BatchNorm1d(3)), nn.Sequential(nn.BatchNorm1d(3))])
    with pytest.raises(ConfigError, match=r"^prune.layers: the model has no prunable weights \(no nn.Linear or nn.Conv\* "
                                          r"weight\); parameters: 0.weight, 0.bias$"):
        generic.prunable(no_weights)


def test_pattern_rates_override_the_kind_rates_by_pattern():
    stack = generic.build(cnn, [0, 1], 10, SHAPE)
    kinds = generic.kinds(stack)
    per_kind = {"conv": 0.15, "fc": 0.2, "output": 0.1}  # the output layer at half the rate by default
    assert generic.pattern_rates(kinds, per_kind) == {"0.weight": 0.15, "5.weight": 0.2, "7.weight": 0.1}
    assert generic.pattern_rates(kinds, per_kind, {"[57].weight": 0.5, "7.*": 0.0}) == {
        "0.weight": 0.15, "5.weight": 0.5, "7.weight": 0.5}  # the first matching pattern wins
    with pytest.raises(ConfigError, match=r"^prune.layer_rates: pattern 'fc\*' matches no prunable weight; "
                                          r"prunable: 0.weight, 5.weight, 7.weight$"):
        generic.pattern_rates(kinds, per_kind, {"fc*": 0.3})
    with pytest.raises(ConfigError, match=r"^prune.layer_rates: '0.weight': rate 1.5 is not allowed, expected a "
                                          r"number in \[0, 1\)$"):
        generic.pattern_rates(kinds, per_kind, {"0.weight": 1.5})


# ---------------------------------------------------------------- with the training loop


def test_trains_with_the_training_loop_and_keeps_pruned_weights_zero():
    gen = torch.Generator().manual_seed(0)
    data = {}
    for split, n in [("train", 200), ("val", 50), ("test", 50)]:
        data[f"x_{split}"] = torch.randn(n, *SHAPE, generator=gen)
        data[f"y_{split}"] = torch.randint(0, 10, (n,), generator=gen)
    stack = generic.build(cnn, [0, 1], 10, SHAPE)
    generic.check(stack, data["x_train"][:16], data["y_train"], 10)
    data = TensorData(**data)
    start = {k: v.clone() for k, v in stack.state_dict().items()}
    names = generic.prunable(stack)
    mask = {k: torch.ones_like(dict(stack.named_parameters())[k], dtype=torch.bool) for k in names}
    mask["5.weight"] = half_mask(stack)["5.weight"]
    cfg = TrainConfig(iterations=50, eval_every=25, log_every=0, batch_size=16)
    res = train(stack, mask, data, cfg, order_seeds=[0, 1], log=lambda *a: None)
    w = stack.state_dict()["5.weight"]
    assert (w[~mask["5.weight"]] == 0).all() and (w[mask["5.weight"]] != 0).all()
    assert all(not torch.equal(start[k], stack.state_dict()[k]) for k in names)
    assert stack.state_dict()["1.num_batches_tracked"].tolist() == [50, 50]
    assert len(res.test_accuracy) == 2 and [c["iteration"] for c in res.curve] == [25, 50]


def test_the_benchmark_prints_its_tables():  # it never asserts a speed
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "benchmarks/generic.py"), "--smoke", "--threads", "1"],
                       capture_output=True, text=True, check=True, cwd=root)
    rows = [line.split("|")[1:-1] for line in p.stdout.splitlines() if line.startswith("| lenet") or line.startswith("| resnet")]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (f"lenet-300-100 {k}", n) for n in "16" for k in ("builtin", "generic", "vmap")] + [("resnet18 generic", "1"),
                                                                                             ("resnet18 generic", "2"),
                                                                                             ("resnet18 generic loop", "2")]
    assert all(float(r[2]) > 0 for r in rows) and rows[1][3].strip().endswith("x")
