"""Instability analysis (lottery.instability): the line between two trained copies, its error curve, BatchNorm."""
from __future__ import annotations

import pytest
import torch

from lottery import instability as ins
from lottery import models
from lottery.config import ConfigError, TrainConfig
from lottery.data import TensorData
from lottery.training import evaluate, train

MODEL = "mlp-mnist1d"  # 40 -> 100 -> 100 -> 10


def synthetic_data(n_train=600, n_test=300, shape=(40,), seed=0) -> TensorData:
    """A learnable 10-class problem: labels from a fixed random linear map of the inputs."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.Size(shape).numel()
    proj = torch.randn(d, 10, generator=gen)
    out = {}
    for split, n in (("train", n_train), ("val", 60), ("test", n_test)):
        x = torch.randn(n, *shape, generator=gen)
        out[f"x_{split}"], out[f"y_{split}"] = x, (x.reshape(n, d) @ proj).argmax(1)
    return TensorData(**out)


def half_mask(model, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {k: torch.rand(params[k].shape, generator=gen) < 0.5 for k in models.prunable(model)}


def silent(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def trained():
    """Two pairs from the same start (seed 0) and mask, each network trained 100 iterations:
    pair 0 with data orders 10 and 11, pair 1 with order 10 twice. Returns (stack, mask, data, a, b)."""
    data = synthetic_data()
    model = models.build(MODEL, [0, 0, 0, 0])
    mask = half_mask(models.build(MODEL, [0]))
    mask = {k: m.expand(4, *m.shape[1:]).clone() for k, m in mask.items()}
    cfg = TrainConfig(optimizer="adam", lr=1e-2, batch_size=20, iterations=100, eval_every=50, log_every=0)
    train(model, mask, data, cfg, order_seeds=[10, 11, 10, 10], log=silent)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = {k: v[[0, 2]] for k, v in state.items()}
    b = {k: v[[1, 3]] for k, v in state.items()}
    return model, mask, data, a, b


def test_same_data_order_gives_identical_endpoints_and_instability_exactly_zero(trained):
    model, _, data, a, b = trained
    assert all(torch.equal(a[k][1], b[k][1]) for k in a)  # pair 1: same order -> identical networks
    assert not torch.equal(a["layers.0.weight"][0], b["layers.0.weight"][0])  # pair 0 differs
    c = ins.curve(MODEL, a, b, data, ins.train_subset(600, 300))
    for split in ("test", "train"):
        same = c[f"{split}_error"][1]
        assert same == [same[0]] * ins.POINTS  # every point is the same network
        assert c[f"{split}_instability"][1] == 0.0
    line = ins.line(a, b, c["alphas"])
    for k in a:  # every point of the same-order pair is bit for bit the trained network
        assert torch.equal(line[k][ins.POINTS:], a[k][1:2].expand(ins.POINTS, *a[k].shape[1:]))


def test_endpoints_equal_the_evaluation_of_the_two_trained_networks(trained):
    model, _, data, a, b = trained
    subset = ins.train_subset(600, 300)
    c = ins.curve(MODEL, a, b, data, subset)
    splits = {"test": data.test, "train": data.train.subset(subset)}
    for split, s in splits.items():
        err = ins.percent_error(evaluate(model, s)[1], len(s)).tolist()  # networks: a0, b0, a1, b1
        curves = c[f"{split}_error"]
        assert [curves[0][0], curves[0][-1], curves[1][0], curves[1][-1]] == err
    assert c["test_error"][0][0] != c["test_error"][0][-1]  # the two orders really gave different networks


def test_curve_has_the_configured_points_and_chunking_does_not_change_it(trained):
    _, _, data, a, b = trained
    subset = ins.train_subset(600, 300)
    c = ins.curve(MODEL, a, b, data, subset, points=7, stack=3)  # 14 networks in stacks of 3, 3, 3, 3, 2
    assert c["alphas"] == torch.linspace(0, 1, 7, dtype=torch.float64).tolist()
    assert c["alphas"][0] == 0.0 and c["alphas"][-1] == 1.0
    assert [len(e) for e in c["test_error"] + c["train_error"]] == [7] * 4
    assert c == ins.curve(MODEL, a, b, data, subset, points=7)  # one stack of 14: the same numbers
    assert len(ins.curve(MODEL, a, b, data, subset)["test_error"][0]) == 30


def test_mlp_points_share_the_ends_first_layer_and_equal_the_interpolated_networks(trained):
    _, _, data, a, b = trained
    alphas = torch.linspace(0, 1, 5, dtype=torch.float64)
    plain = models.build(MODEL, [0] * 10)
    plain.load_state_dict(ins.line(a, b, alphas))
    fast = ins.MLPLine(plain, a, b, torch.arange(2).repeat_interleave(5), alphas.repeat(2))
    with torch.no_grad():
        want, got = plain(data.test.x[None]), fast(data.test.x[None])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    ends = [0, 4, 5, 9]  # α = 0 and 1 of both pairs: bit for bit
    assert torch.equal(got[ends], want[ends])
    assert torch.equal(got[5:], got[5:6].expand(5, -1, -1))  # the same-order pair: one network five times


def test_instability_is_max_minus_mean_of_endpoints_and_never_below_half_their_gap(trained):
    assert ins.instability([10.0, 30.0, 20.0]).item() == 15.0
    assert ins.instability([10.0, 12.0, 20.0]).item() == 5.0  # monotone: exactly half the gap
    assert ins.instability([[1.0, 1.0], [4.0, 2.0]]).tolist() == [0.0, 1.0]  # one per row (pair)
    _, _, data, a, b = trained
    c = ins.curve(MODEL, a, b, data, ins.train_subset(600, 300))
    for split in ("test", "train"):
        for e, value in zip(c[f"{split}_error"], c[f"{split}_instability"]):
            assert value == ins.instability(e).item()
            assert value >= abs(e[0] - e[-1]) / 2


def test_line_interpolates_pair_major_and_keeps_pruned_weights_zero(trained):
    _, mask, _, a, b = trained
    alphas = [0.0, 0.25, 0.5, 1.0]
    two = {k: m[:2] for k, m in mask.items()}
    line = ins.line(a, b, alphas, two)
    for k in a:
        assert line[k].shape == (8, *a[k].shape[1:])
        for t in range(2):
            assert torch.equal(line[k][4 * t], a[k][t]) and torch.equal(line[k][4 * t + 3], b[k][t])
            assert torch.allclose(line[k][4 * t + 1], 0.75 * a[k][t] + 0.25 * b[k][t], atol=1e-6)
    for k, m in two.items():
        assert (a[k][~m] == 0).all() and (a[k][m] != 0).all()  # the mask really prunes
        assert (line[k][~m.repeat_interleave(4, 0)] == 0).all()  # and every point keeps them zero
    bad = {k: v.clone() for k, v in b.items()}
    bad["layers.1.weight"][~two["layers.1.weight"]] = 1.0
    with pytest.raises(ValueError, match="layers.1.weight of state b has non-zero pruned weights"):
        ins.line(a, bad, alphas, two)


def test_line_takes_integer_buffers_from_a_and_rejects_mismatched_states():
    a = {"w": torch.zeros(1, 3), "count": torch.tensor([[5]])}
    b = {"w": torch.ones(1, 3), "count": torch.tensor([[9]])}
    line = ins.line(a, b, [0.0, 0.5, 1.0])
    assert line["count"].tolist() == [[5], [5], [5]]
    assert line["w"].tolist() == [[0.0] * 3, [0.5] * 3, [1.0] * 3]
    with pytest.raises(ValueError, match="w has shape"):
        ins.line(a, {"w": torch.ones(1, 4), "count": b["count"]}, [0.0, 1.0])
    with pytest.raises(ValueError, match="count is in only one"):
        ins.line(a, {"w": b["w"]}, [0.0, 1.0])


def test_bad_settings_name_the_key(trained):
    _, _, data, a, b = trained
    subset = ins.train_subset(600, 300)
    with pytest.raises(ConfigError, match="instability.bn: 'mean' is not allowed"):
        ins.curve(MODEL, a, b, data, subset, bn="mean")
    with pytest.raises(ConfigError, match="instability.points: 1"):
        ins.curve(MODEL, a, b, data, subset, points=1)
    with pytest.raises(ConfigError, match="instability.bn_batches"):
        ins.curve(MODEL, a, b, data, subset, bn="recompute", bn_batches=3, batch_size=128)
    with pytest.raises(ConfigError, match="instability.train_subset: 601"):
        ins.train_subset(600, 601)


def test_train_subset_depends_on_the_seed_only():
    s = ins.train_subset(1000, 100, seed=3)
    assert len(s) == len(set(s.tolist())) == 100 and s.max() < 1000
    assert torch.equal(s, ins.train_subset(1000, 100, seed=3))
    assert not torch.equal(s, ins.train_subset(1000, 100, seed=4))


# ---------------------------------------------------------------- BatchNorm


@pytest.fixture(scope="module")
def resnet_pair():
    """Two ResNet-20s from one start, 8 iterations each with different data orders (CIFAR-shaped noise)."""
    data = synthetic_data(n_train=128, n_test=32, shape=(3, 32, 32))
    model = models.build("resnet-20", [0, 0])
    mask = {k: torch.ones_like(p, dtype=torch.bool) for k, p in model.named_parameters() if k in models.prunable(model)}
    cfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, iterations=8, eval_every=8, log_every=0)
    train(model, mask, data, cfg, order_seeds=[1, 2], log=silent)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return model, data, {k: v[:1] for k, v in state.items()}, {k: v[1:] for k, v in state.items()}


def test_batchnorm_interpolate_and_recompute(resnet_pair):
    model, data, a, b = resnet_pair
    subset = ins.train_subset(128, 64)
    bn_mean = "blocks.0.bn1.running_mean"
    assert not torch.equal(a[bn_mean], b[bn_mean])
    line = ins.line(a, b, [0.0, 0.5, 1.0])  # interpolate: running statistics move with the weights
    assert torch.allclose(line[bn_mean][1], (a[bn_mean][0] + b[bn_mean][0]) / 2, atol=1e-6)

    kw = dict(points=4, stack=3, batch_size=16, bn_batches=3)  # 4 points in stacks of 3, then 1
    inter = ins.curve("resnet-20", a, b, data, subset, **kw)
    recomputed = ins.curve("resnet-20", a, b, data, subset, bn="recompute", **kw)
    assert inter["bn"] == "interpolate" and recomputed["bn"] == "recompute"
    assert len(inter["test_error"][0]) == len(recomputed["test_error"][0]) == 4

    splits = {"test": data.test, "train": data.train.subset(subset)}
    for split, s in splits.items():  # interpolate: the ends are the trained networks as they are
        err = ins.percent_error(evaluate(model, s)[1], len(s)).tolist()
        assert [inter[f"{split}_error"][0][0], inter[f"{split}_error"][0][-1]] == err

    # recompute: the ends equal the trained networks evaluated after the same re-estimation
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = torch.arange(3 * 16).view(3, 16)
    ins.recompute_bn(model, data.train.x[subset][rows])
    assert not torch.equal(model.state_dict()[bn_mean], before[bn_mean])
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, models.StackedBatchNorm2d))
    with torch.no_grad():  # the first BatchNorm's mean is the plain mean over all 48 examples (cumulative average)
        x = data.train.x[subset][:48]
        conv = model.conv(models.to_grouped(x[None], 2, models.CIFAR_SHAPE))
        assert torch.allclose(model.bn.running_mean, conv.mean((0, 2, 3)).view(2, -1), atol=1e-5)
    for split, s in splits.items():
        err = ins.percent_error(evaluate(model, s)[1], len(s)).tolist()
        assert [recomputed[f"{split}_error"][0][0], recomputed[f"{split}_error"][0][-1]] == err
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(before)
    with torch.no_grad():  # the re-estimate does not depend on the statistics it replaces
        for m in model.modules():
            if isinstance(m, models.StackedBatchNorm2d):
                m.running_mean.fill_(7.0)
    ins.recompute_bn(model, data.train.x[subset][rows])
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())
    model.load_state_dict(before)


def test_batchnorm_same_network_is_flat_in_both_modes(resnet_pair):
    """A line from a network to itself: every point is that network, in both modes, so instability is exactly 0."""
    _, data, a, _ = resnet_pair
    subset = ins.train_subset(128, 64)
    for bn in ("interpolate", "recompute"):
        c = ins.curve("resnet-20", a, a, data, subset, bn=bn, points=4, stack=3, batch_size=16, bn_batches=3)
        for split in ("test", "train"):
            assert c[f"{split}_error"][0] == [c[f"{split}_error"][0][0]] * 4
            assert c[f"{split}_instability"] == [0.0]


def test_recompute_bn_reaches_the_batchnorm_of_your_own_network():
    """lottery.generic stacks torch's nn.BatchNorm1d: one batch, momentum 1 -> each network's statistics are
    exactly that batch's (after its own first layer)."""
    from lottery import generic

    def build():
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))

    torch.manual_seed(0)
    stack = generic.GenericStack([build() for _ in range(2)]).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    ins.recompute_bn(stack, [x[:8]])
    for i in range(2):
        h = x[:8] @ stack.state_dict()["0.weight"][i].T + stack.state_dict()["0.bias"][i]
        assert torch.allclose(stack.state_dict()["1.running_mean"][i], h.mean(0), atol=1e-12)
        assert torch.allclose(stack.state_dict()["1.running_var"][i], h.var(0), atol=1e-12)
