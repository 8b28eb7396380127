"""Layer-wise magnitude pruning, the count rule and the random-mask control (lottery.pruning)."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from lottery import masks, models, pruning
from lottery.config import PruneConfig

LENET_SIZES = {"layers.0.weight": 784 * 300, "layers.1.weight": 300 * 100, "layers.2.weight": 100 * 10}


def half_up(rate: float, n: int) -> int:
    """Round-half-up of rate * n in exact rational arithmetic (independent of lottery.pruning)."""
    return math.floor(Fraction(repr(rate)) * n + Fraction(1, 2))


def layer_rates(names: list[str], output: str, rate: float, output_rate: float) -> dict[str, float]:
    """The paper's LeNet rates: hidden layers at `rate`, the output layer at its own rate."""
    return {k: (output_rate if k == output else rate) for k in names}


def magnitude(weights: dict[str, torch.Tensor], mask: masks.Mask, rates: dict[str, float]) -> masks.Mask:
    """Layer-wise magnitude pruning at `rates` (per layer)."""
    return pruning.prune(pruning.scores("magnitude", weights, weights), mask, pruning.Plan(rates))


# ---------------------------------------------------------------- n_to_prune


@pytest.mark.parametrize(
    "rate, remaining, expected",
    [
        (0.2, 235200, 47040),  # the paper's first round of LeNet's first layer
        (0.2, 188160, 37632),
        (0.1, 1000, 100),
        (0.1, 900, 90),
        (0.2, 0, 0),
        (0.5, 1, 1),  # 0.5 rounds up
        (0.5, 5, 3),  # 2.5 -> 3 (Python's round() would give 2)
        (0.5, 3, 2),  # 1.5 -> 2
        (0.35, 90, 32),  # 31.5 in decimal; 0.35 * 90 == 31.499999999999996 in binary floating point
        (0.35, 170, 60),  # 59.5 in decimal; float gives 59.49999999999999
        (0.7, 10, 7),  # float 0.7 * 10 == 7.000000000000001: a ceil() rule would give 8
        (0.2, 7, 1),  # 1.4 -> 1
        (0.2, 8, 2),  # 1.6 -> 2
        (0.05, 10, 1),  # 0.5 -> 1
    ],
)
def test_n_to_prune_exact_round_half_up(rate, remaining, expected):
    assert pruning.n_to_prune(rate, remaining) == expected
    assert isinstance(pruning.n_to_prune(rate, remaining), int)


def test_n_to_prune_matches_rational_rule_everywhere():
    for rate in (0.1, 0.15, 0.2, 0.25, 0.35, 0.45, 0.55, 0.7, 0.9):
        for n in range(0, 1500, 7):
            assert pruning.n_to_prune(rate, n) == half_up(rate, n), (rate, n)


def test_layer_rates_output_layer_has_its_own_rate():
    kinds = {"a.weight": "fc", "b.weight": "fc", "c.weight": "output"}
    assert pruning.plan(PruneConfig(rate=0.2), kinds, 1).rates == {"a.weight": 0.2, "b.weight": 0.2, "c.weight": 0.1}


# ---------------------------------------------------------------- magnitude pruning on LeNet-300-100


def _lenet(seeds=(0, 1)):
    model = models.build("lenet-300-100", list(seeds))
    names = models.prunable(model)
    return model, names


def test_prunable_are_weights_only_and_biases_never_in_a_mask():
    model, names = _lenet()
    assert names == list(LENET_SIZES)
    mask = masks.ones(model, names)
    assert set(mask) == set(LENET_SIZES)
    assert not any("bias" in k for k in mask)
    assert [k for k, kind in models.kinds(model).items() if kind == "output"] == ["layers.2.weight"]
    # shapes: one mask per network in the stack
    params = dict(model.named_parameters())
    for k, m in mask.items():
        assert m.dtype == torch.bool and m.shape == params[k].shape and m.all()
    # pruning keeps the same keys: no bias ever enters a mask
    rates = layer_rates(names, names[-1], 0.2, 0.1)
    new = magnitude({k: params[k].detach() for k in names}, mask, rates)
    assert set(new) == set(mask)


def test_apply_zeroes_pruned_weights_and_leaves_biases():
    model, names = _lenet()
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    mask = {k: torch.rand(before[k].shape, generator=gen) < 0.5 for k in names}
    masks.apply(model, mask)
    after = model.state_dict()
    for k in names:
        assert torch.equal(after[k][~mask[k]], torch.zeros(int((~mask[k]).sum())))
        assert torch.equal(after[k][mask[k]], before[k][mask[k]])
    for j in range(3):
        assert torch.equal(after[f"layers.{j}.bias"], torch.full_like(after[f"layers.{j}.bias"], 0.5))


def _expected_kept_counts(rounds: int, rate: float, output_rate: float) -> list[dict[str, int]]:
    """Independent schedule: each round every layer loses round_half_up(rate * remaining)."""
    kept = dict(LENET_SIZES)
    out = []
    for _ in range(rounds):
        kept = {
            k: n - half_up(output_rate if k == "layers.2.weight" else rate, n) for k, n in kept.items()
        }
        out.append(dict(kept))
    return out


def test_expected_schedule_sanity():
    sched = _expected_kept_counts(5, 0.2, 0.1)
    assert sched[0] == {"layers.0.weight": 188160, "layers.1.weight": 24000, "layers.2.weight": 900}
    assert sched[1] == {"layers.0.weight": 150528, "layers.1.weight": 19200, "layers.2.weight": 810}
    assert sched[2]["layers.2.weight"] == 729  # 810 - 81
    assert sched[3]["layers.2.weight"] == 656  # 729 - round_half_up(72.9) = 729 - 73


def test_layerwise_magnitude_over_five_rounds():
    model, names = _lenet(seeds=(0, 1))
    n_nets = 2
    rates = layer_rates(names, names[-1], 0.2, 0.1)
    mask = masks.ones(model, names)
    expected = _expected_kept_counts(5, 0.2, 0.1)
    gen = torch.Generator().manual_seed(1234)
    for r in range(5):
        # new weights every round (as after training): pruning must look at these magnitudes only
        weights = {k: torch.randn(mask[k].shape, generator=gen) for k in names}
        weights_copy = {k: v.clone() for k, v in weights.items()}
        mask_copy = {k: v.clone() for k, v in mask.items()}
        new = magnitude(weights, mask, rates)

        # never in place
        assert all(torch.equal(mask[k], mask_copy[k]) for k in names)
        assert all(torch.equal(weights[k], weights_copy[k]) for k in names)
        # exact kept counts, per layer and per network
        kept = masks.kept(new)
        for k in names:
            assert kept[k].tolist() == [expected[r][k]] * n_nets, (r, k)
            assert new[k].dtype == torch.bool and new[k].shape == mask[k].shape
        # masks only shrink
        assert masks.is_subset(new, mask)
        # the pruned ones are exactly the smallest |w| among the remaining ones
        for k in names:
            for i in range(n_nets):
                w = weights[k][i].abs()
                dropped = mask[k][i] & ~new[k][i]
                assert int(dropped.sum()) == int(mask[k][i].sum()) - expected[r][k]
                assert w[dropped].max() < w[new[k][i]].min(), (r, k, i)
                # equivalently: the survivors are the top-|w| among the previously kept
                n_keep = expected[r][k]
                scores = torch.where(mask[k][i], w, torch.full_like(w, -1.0)).flatten()
                top = torch.zeros(w.numel(), dtype=torch.bool)
                top[torch.topk(scores, n_keep).indices] = True
                assert torch.equal(top.view_as(w), new[k][i])
        mask = new

    remaining = masks.percent_remaining(mask)
    total = sum(LENET_SIZES.values())
    want = 100.0 * sum(expected[-1].values()) / total
    assert remaining.tolist() == pytest.approx([want] * n_nets, abs=1e-12)
    # networks are pruned independently: their masks differ
    assert not torch.equal(mask["layers.0.weight"][0], mask["layers.0.weight"][1])


def test_output_layer_pruned_at_its_own_rate():
    model, names = _lenet(seeds=(0,))
    params = dict(model.named_parameters())
    weights = {k: params[k].detach() for k in names}
    mask = masks.ones(model, names)
    new = magnitude(weights, mask, layer_rates(names, names[-1], 0.2, 0.1))
    kept = masks.kept(new)
    assert int(kept["layers.2.weight"][0]) == 900  # 10%, not 20%
    assert int(kept["layers.1.weight"][0]) == 24000
    same_rate = magnitude(weights, mask, layer_rates(names, names[-1], 0.2, 0.2))
    assert int(masks.kept(same_rate)["layers.2.weight"][0]) == 800


def test_already_pruned_weights_are_not_resurrected_even_if_large():
    # weights outside the mask are huge: a pruning that ignored the old mask would keep them
    w = torch.tensor([[[100.0, 100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]]])
    old = {"w": torch.tensor([[[False, False] + [True] * 10]])}
    new = magnitude({"w": w}, old, {"w": 0.2})
    assert new["w"].tolist() == [[[False, False, False, False] + [True] * 8]]


def test_negative_weights_pruned_by_magnitude_not_sign():
    w = torch.tensor([[[-9.0, 0.1, -0.2, 8.0, -0.05, 7.0, 6.0, -5.0, 4.0, 3.0]]])
    mask = {"w": torch.ones(1, 1, 10, dtype=torch.bool)}
    new = magnitude({"w": w}, mask, {"w": 0.3})
    # the three smallest |w| are -0.05, 0.1, -0.2 (positions 4, 1, 2)
    assert new["w"][0, 0].tolist() == [True, False, False, True, False, True, True, True, True, True]


def test_ties_broken_deterministically_by_position():
    w = torch.ones(2, 4, 5)  # every magnitude ties
    w[1] = -1.0
    mask = {"w": torch.ones(2, 4, 5, dtype=torch.bool)}
    mask["w"][1, 0, 0] = False
    a = magnitude({"w": w}, mask, {"w": 0.25})
    b = magnitude({"w": w.clone()}, {"w": mask["w"].clone()}, {"w": 0.25})
    assert torch.equal(a["w"], b["w"])
    # network 0: 20 kept -> prune 5, the first 5 positions in flat order
    flat0 = a["w"][0].flatten()
    assert flat0.tolist() == [False] * 5 + [True] * 15
    # network 1: 19 kept -> prune round_half_up(4.75) = 5 of the kept, the first ones after position 0
    flat1 = a["w"][1].flatten()
    assert flat1.tolist() == [False] * 6 + [True] * 14
    # repeated runs on the real model agree too
    model, names = _lenet(seeds=(5,))
    params = dict(model.named_parameters())
    weights = {k: params[k].detach().sign() for k in names}  # massive ties: all |w| == 1
    rates = layer_rates(names, names[-1], 0.2, 0.1)
    m1 = magnitude(weights, masks.ones(model, names), rates)
    m2 = magnitude(weights, masks.ones(model, names), rates)
    assert all(torch.equal(m1[k], m2[k]) for k in names)
    assert [int(v[0]) for v in masks.kept(m1).values()] == [188160, 24000, 900]


def test_pruning_a_layer_to_zero_raises():
    mask = {"w": torch.tensor([[[True, False, False]]])}
    with pytest.raises(ValueError, match="'w'"):
        magnitude({"w": torch.ones(1, 1, 3)}, mask, {"w": 0.5})  # round_half_up(0.5) = 1 of 1
    # on LeNet: an output layer left with 2 weights at rate 0.75 would lose both
    model, names = _lenet(seeds=(0,))
    params = dict(model.named_parameters())
    mask = masks.ones(model, names)
    out = mask["layers.2.weight"]
    out.zero_()
    out[0, 0, :2] = True
    rates = layer_rates(names, names[-1], 0.2, 0.75)
    with pytest.raises(ValueError, match="layers.2.weight"):
        magnitude({k: params[k].detach() for k in names}, mask, rates)


def test_a_layer_with_one_weight_left_at_small_rate_is_fine():
    mask = {"w": torch.tensor([[[True, False, False]]])}
    new = magnitude({"w": torch.ones(1, 1, 3)}, mask, {"w": 0.2})  # round_half_up(0.2) = 0
    assert torch.equal(new["w"], mask["w"])


# ---------------------------------------------------------------- random_like


def _pruned_lenet_mask(rounds=3):
    model, names = _lenet(seeds=(0, 1))
    params = dict(model.named_parameters())
    weights = {k: params[k].detach() for k in names}
    mask = masks.ones(model, names)
    rates = layer_rates(names, names[-1], 0.2, 0.1)
    for _ in range(rounds):
        mask = magnitude(weights, mask, rates)
    return mask, names


def test_random_like_keeps_counts_and_differs():
    mask, names = _pruned_lenet_mask()
    snapshot = {k: v.clone() for k, v in mask.items()}
    rnd = pruning.random_like(mask, [7, 8])
    assert all(torch.equal(mask[k], snapshot[k]) for k in names)  # not in place
    assert set(rnd) == set(mask)
    kept, kept_rnd = masks.kept(mask), masks.kept(rnd)
    for k in names:
        assert rnd[k].dtype == torch.bool and rnd[k].shape == mask[k].shape
        assert torch.equal(kept_rnd[k], kept[k]), k
        for i in range(2):
            assert not torch.equal(rnd[k][i], mask[k][i]), (k, i)
    assert torch.equal(masks.percent_remaining(rnd), masks.percent_remaining(mask))
    # the two networks get different random masks
    assert not torch.equal(rnd["layers.0.weight"][0], rnd["layers.0.weight"][1])
    # overlap with the ticket mask is about what chance gives (fraction kept), far from 100 %
    k = "layers.0.weight"
    frac = float(kept[k][0]) / mask[k][0].numel()
    overlap = float((rnd[k][0] & mask[k][0]).sum()) / float(kept[k][0])
    assert abs(overlap - frac) < 0.02


def test_random_like_is_a_function_of_each_networks_seed():
    mask, names = _pruned_lenet_mask(rounds=1)
    a = pruning.random_like(mask, [11, 12])
    b = pruning.random_like(mask, [11, 12])
    c = pruning.random_like(mask, [11, 13])
    assert all(torch.equal(a[k], b[k]) for k in names)
    assert all(torch.equal(a[k][0], c[k][0]) for k in names)  # network 0 does not depend on network 1's seed
    assert not all(torch.equal(a[k][1], c[k][1]) for k in names)
    # nor on the stack: network 1 alone, with its seed, draws the same mask
    alone = pruning.random_like({k: m[1:] for k, m in mask.items()}, [12])
    assert all(torch.equal(alone[k][0], a[k][1]) for k in names)


def test_random_like_with_uneven_counts_per_network():
    mask = {"w": torch.zeros(3, 4, 6, dtype=torch.bool)}
    mask["w"][0, :, :1] = True  # 4 kept
    mask["w"][1, :2] = True  # 12 kept
    mask["w"][2] = True  # 24 kept
    rnd = pruning.random_like(mask, [0, 1, 2])
    assert masks.kept(rnd)["w"].tolist() == [4, 12, 24]
    assert rnd["w"][2].all()


# ---------------------------------------------------------------- the plan of a round

LENET_KINDS = {"layers.0.weight": "fc", "layers.1.weight": "fc", "layers.2.weight": "output"}


def test_plan_layerwise_global_and_oneshot():
    p = pruning.plan(PruneConfig(rate=0.2), LENET_KINDS, 1)
    assert p == pruning.Plan({"layers.0.weight": 0.2, "layers.1.weight": 0.2, "layers.2.weight": 0.1}, [], 0.2)
    # an iterative round prunes at exactly the configured rates, every round (not 1 - (1 - r) in floating point)
    assert pruning.plan(PruneConfig(rate=0.2, output_rate=0.1), LENET_KINDS, 7).rates["layers.2.weight"] == 0.1
    assert pruning.plan(PruneConfig(), LENET_KINDS, 0).rates == dict.fromkeys(LENET_KINDS, 0.0)  # r0 prunes nothing
    g = pruning.plan(PruneConfig(strategy="global", global_kinds=["fc"], output_rate=0.3), LENET_KINDS, 2)
    assert g.rates == {"layers.2.weight": 0.3} and g.pooled == ["layers.0.weight", "layers.1.weight"]
    assert g.pooled_rate == 0.2
    assert g.groups() == [(["layers.2.weight"], 0.3), (["layers.0.weight", "layers.1.weight"], 0.2)]
    conv = {"c": "conv", "f": "fc", "o": "output"}
    assert pruning.plan(PruneConfig(rate=0.2, conv_rate=0.15), conv, 1).rates == {"c": 0.15, "f": 0.2, "o": 0.1}
    one = pruning.plan(PruneConfig(rate=0.2, schedule="oneshot"), LENET_KINDS, 3)
    assert one.rates["layers.0.weight"] == pytest.approx(1 - 0.8 ** 3)
    assert one.rates["layers.2.weight"] == pytest.approx(1 - 0.9 ** 3)
    assert pruning.plan(PruneConfig(rate=0.2, schedule="oneshot"), LENET_KINDS, 1).rates["layers.0.weight"] == 0.2


def test_planned_kept_follows_the_count_rule_round_by_round():
    dense = dict(LENET_SIZES)
    expected = _expected_kept_counts(17, 0.2, 0.1)
    for k in (0, 1, 5, 17):
        want = dense if k == 0 else expected[k - 1]
        got = pruning.planned_kept(PruneConfig(rate=0.2), LENET_KINDS, dense, k)
        assert got == [([layer], n) for layer, n in want.items()], k
    # one-shot: a single step from the dense counts
    got = pruning.planned_kept(PruneConfig(rate=0.2, schedule="oneshot"), LENET_KINDS, dense, 3)
    assert got[2] == (["layers.2.weight"], 1000 - half_up(1 - 0.9 ** 3, 1000))
    # global: the pooled layers count as one group
    cfg = PruneConfig(rate=0.2, strategy="global", global_kinds=["fc"])
    assert pruning.planned_kept(cfg, LENET_KINDS, dense, 2) == [
        (["layers.2.weight"], 810), (["layers.0.weight", "layers.1.weight"], 265200 - 53040 - 42432)]


def test_check_catches_revived_weights_and_wrong_counts():
    old = {"w": torch.tensor([[True, True, False, True]])}
    revived = {"w": torch.tensor([[True, False, True, False]])}
    plan = pruning.Plan({"w": 0.5})
    with pytest.raises(pruning.PruningError, match="revived"):
        pruning.check(plan, revived, old)
    as_planned = {"w": torch.tensor([[True, False, False, False]])}
    pruning.check(plan, as_planned, old)  # round_half_up(0.5 * 3) = 2 pruned: 1 kept
    with pytest.raises(pruning.PruningError, match="kept 2 weights, planned 1"):
        pruning.check(plan, {"w": torch.tensor([[True, True, False, False]])}, old)
    pooled = pruning.Plan({}, ["a", "b"], 0.5)
    old = {"a": torch.ones(1, 2, dtype=torch.bool), "b": torch.ones(1, 2, dtype=torch.bool)}
    pruning.check(pooled, {"a": torch.tensor([[False, False]]), "b": torch.tensor([[True, True]])}, old)
    with pytest.raises(pruning.PruningError, match="global pruning kept 3 weights, planned 2"):
        pruning.check(pooled, {"a": torch.tensor([[False, True]]), "b": torch.tensor([[True, True]])}, old)


def test_pruning_errors_are_pruning_errors():
    with pytest.raises(pruning.PruningError, match="would remove all"):
        magnitude({"w": torch.ones(1, 1, 3)}, {"w": torch.tensor([[[True, False, False]]])}, {"w": 0.5})
