"""Any nn.Module stacked with torch.func (lottery.generic): stack == one by one, prunable weights, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery import generic
from lottery.config import ConfigError, TrainConfig
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


NOT_CALLABLE = 42
FACTORIES = {"mlp": mlp, "cnn": cnn}


def single(name: str, seed: int) -> nn.Module:
    """The plain module, as the factory builds it under torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return mlp(num_classes=10) if name == "mlp" else cnn(num_classes=10, input_shape=SHAPE)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


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

