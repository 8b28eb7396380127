"""Pruning at initialization (lottery.saliency): SNIP, GraSP and SynFlow scores checked against
independent computations on tiny stacked networks, exact counts, the `invert` control."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery import masks, models, pruning, saliency
from lottery.config import PruneConfig
from lottery.saliency import Target


def mlp(sizes: list[int], seeds: list[int]) -> models.MLP:
    m = models.MLP(len(seeds), sizes)
    for i, s in enumerate(seeds):
        m.init_(i, s)
    return m


def tiny_vgg(seeds: list[int]) -> models.VGG:
    """Conv (no bias) + BatchNorm + ReLU, max-pool, average pool, fc: 2x4x4 inputs, 3 classes."""
    m = models.VGG(len(seeds), [4, "M", 6], outputs=3, shape=(2, 4, 4))
    for i, s in enumerate(seeds):
        m.init_(i, s)
    return m


def batches(shape: tuple[int, ...], n: int = 1, count: int = 2, b: int = 7, classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, b, *shape, generator=gen), torch.randint(0, classes, (1, b), generator=gen))
            for _ in range(count)]


def random_mask(model: nn.Module, density: float = 0.7, seed: int = 1) -> masks.Mask:
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {k: torch.rand(params[k].shape, generator=gen) < density for k in models.prunable(model)}


def imp_counts(model: nn.Module, rate: float, rounds: int, **prune) -> Target:
    """saliency.target of IMP's round `rounds` at `rate` for every layer (the output layer too)."""
    dense = {k: p[0].numel() for k, p in model.named_parameters() if k in models.prunable(model)}
    cfg = PruneConfig(rate=rate, output_rate=rate, **prune)
    return saliency.target(cfg, models.kinds(model), dense, rounds, models.n_networks(model))


def kept_part(score: dict[str, torch.Tensor], mask: masks.Mask) -> dict[str, torch.Tensor]:
    return {k: s[mask[k]] for k, s in score.items()}


# ---------------------------------------------------------------- SNIP


def test_snip_equals_backprop_by_hand():
    """|g ⊙ w| against a hand-written backward pass of a 2-layer ReLU MLP, with a partial mask."""
    model = mlp([5, 4, 3], [11, 12])
    names = models.prunable(model)
    mask = random_mask(model)
    data = batches((5,), n=2)
    got = saliency.snip(model, mask, names, data)

    w1 = model.layers[0].weight.detach().double() * mask[names[0]]
    w2 = model.layers[1].weight.detach().double() * mask[names[1]]
    b1, b2 = model.layers[0].bias.detach().double(), model.layers[1].bias.detach().double()
    g1, g2 = torch.zeros_like(w1), torch.zeros_like(w2)
    for x, y in data:
        for i in range(2):
            xi = x[i].double()  # (B, 5)
            z1 = xi @ w1[i].T + b1[i]
            h = z1.clamp(min=0)
            out = h @ w2[i].T + b2[i]
            d = (out.softmax(1) - F.one_hot(y[0], 3).double()) / len(xi)  # dL/dout of the mean loss
            g2[i] += d.T @ h / len(data)
            g1[i] += ((d @ w2[i]) * (z1 > 0)).T @ xi / len(data)
    for k, g, w in [(names[0], g1, w1), (names[1], g2, w2)]:
        assert got[k].dtype == torch.float64
        torch.testing.assert_close(got[k][mask[k]], (g * w).abs()[mask[k]], rtol=1e-12, atol=1e-15)
        assert (got[k][~mask[k]] == float("-inf")).all()  # pruned weights never come back


# ---------------------------------------------------------------- GraSP


def test_grasp_equals_w_times_finite_difference_hessian_vector_product():
    """GraSP returns w ⊙ (H g) = −(the paper's S), L the loss of the logits / 200 (the authors' temperature):
    checked against (∇L(w + εg) − ∇L(w − εg)) / 2ε."""
    model = mlp([6, 5, 4, 3], [3, 4])
    names = models.prunable(model)
    mask = random_mask(model, 0.8)
    data = batches((6,), n=1, count=2)
    got = saliency.grasp(model, mask, names, data)

    ref = copy.deepcopy(model).double()
    base = {k: p.detach().clone() for k, p in ref.named_parameters()}
    for k in names:
        base[k] *= mask[k]

    def grad_at(weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Mean gradient over the batches (first order only) at the given prunable weights."""
        ws = [weights[k].clone().requires_grad_(True) for k in names]
        total = [torch.zeros_like(w) for w in ws]
        for x, y in data:
            out = torch.func.functional_call(ref, {**base, **dict(zip(names, ws))}, (x.double(),)) / 200
            loss = F.cross_entropy(out.transpose(1, 2), y.expand(2, -1), reduction="none").mean(1).sum()
            for t, g in zip(total, torch.autograd.grad(loss, ws)):
                t += g / len(data)
        return total

    g = [gi * mask[k] for gi, k in zip(grad_at(base), names)]
    eps = 1e-6
    plus = grad_at({k: base[k] + eps * gi for k, gi in zip(names, g)})
    minus = grad_at({k: base[k] - eps * gi for k, gi in zip(names, g)})
    for k, p, m in zip(names, plus, minus):
        hg = (p - m) / (2 * eps)
        expected = base[k] * hg
        torch.testing.assert_close(got[k][mask[k]], expected[mask[k]], rtol=1e-5, atol=1e-12)  # scores ~1e-6 at T=200
        assert (got[k][~mask[k]] == float("-inf")).all()
    assert any((s[mask[k]] < 0).any() for k, s in got.items())  # signed, not |.|


# ---------------------------------------------------------------- SynFlow


def synflow_by_hand(ws: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Bias-free linear chain on |W|: ∂R/∂W_l[a, b] = (1ᵀ|W_L|…|W_l+1|)[a] · (|W_l-1|…|W_1| 1)[b]."""
    a = [w.abs().double() for w in ws]
    scores = []
    for l, w in enumerate(a):
        right = torch.ones(a[0].shape[1], dtype=torch.float64)
        for v in a[:l]:
            right = v @ right
        left = torch.ones(a[-1].shape[0], dtype=torch.float64)
        for v in reversed(a[l + 1 :]):
            left = left @ v
        scores.append(w * torch.outer(left, right))
    r = torch.ones(a[0].shape[1], dtype=torch.float64)
    for v in a:
        r = v @ r
    return scores, r.sum()


def test_synflow_scores_by_hand_and_conserved_across_layers():
    """Biases are zero at init (models' rule): every layer's SynFlow scores sum to the same R."""
    model = mlp([6, 5, 4, 3], [7, 8])
    names = models.prunable(model)
    assert all((layer.bias == 0).all() for layer in model.layers)
    got = saliency.synflow_scores(model, masks.ones(model, names), names, (6,))
    for i in range(2):
        expected, r = synflow_by_hand([model.layers[j].weight[i].detach() for j in range(3)])
        for k, e in zip(names, expected):
            assert got[k].dtype == torch.float64
            torch.testing.assert_close(got[k][i], e, rtol=1e-12, atol=0)
            torch.testing.assert_close(got[k][i].sum(), r, rtol=1e-12, atol=0)


def test_synflow_conservation_through_conv_batchnorm_and_pooling():
    """Conv (no bias), BatchNorm (eval, identity-like statistics, β = 0 at init), max- and average-pool:
    all positively homogeneous, so the per-layer sums are equal here too."""
    model = tiny_vgg([5, 6])
    names = models.prunable(model)
    got = saliency.synflow_scores(model, masks.ones(model, names), names, (2, 4, 4))
    for i in range(2):
        sums = torch.stack([got[k][i].sum() for k in names])
        assert sums[0] > 0
        torch.testing.assert_close(sums, sums[0].expand(len(names)), rtol=1e-12, atol=0)


def deep_chain(scale: float, layers: int = 12) -> models.MLP:
    model = mlp([4] * layers + [2], [0])
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.fill_(scale)
    return model


def test_synflow_is_float64_where_float32_overflows():
    model = deep_chain(1e4)  # R = 4^12 * 2 * 1e48: beyond float32's 3.4e38
    names = models.prunable(model)
    with torch.no_grad():
        assert not torch.isfinite(model(torch.ones(1, 1, 4)).sum())
    got = saliency.synflow_scores(model, masks.ones(model, names), names, (4,))
    sums = torch.stack([got[k].sum() for k in names])
    assert sums.dtype == torch.float64 and torch.isfinite(sums).all()
    torch.testing.assert_close(sums, torch.full_like(sums, 2 * 4.0**12 * 1e48), rtol=1e-12, atol=0)


def test_synflow_bad_models_give_clear_errors():
    model = deep_chain(1e30)  # 1e360 overflows even float64
    names = models.prunable(model)
    with pytest.raises(ValueError, match=r"synflow: layer 'layers.0.weight' has non-finite scores"):
        saliency.synflow_scores(model, masks.ones(model, names), names, (4,))

    class Unused(nn.Module):  # a prunable layer that the forward never reaches
        def __init__(self):
            super().__init__()
            self.used, self.spare = models.StackedLinear(1, 4, 3), models.StackedLinear(1, 4, 3)

        def forward(self, x):
            return self.used(x)

    model = Unused()
    names = models.prunable(model)
    with pytest.raises(ValueError, match=r"synflow: layer 'spare.weight' gets no gradient"):
        saliency.synflow(model, masks.ones(model, names), names, (4,), Target({k: torch.tensor([6]) for k in names}), 3)
    with pytest.raises(ValueError, match=r"prune.synflow_iterations"):
        saliency.synflow(model, masks.ones(model, names), names, (4,), Target({k: torch.tensor([6]) for k in names}), 0)


def test_synflow_leaves_the_model_untouched():
    model = tiny_vgg([1, 2]).train()
    with torch.no_grad():  # signs, non-trivial running statistics
        for bn in model.bns:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    names = models.prunable(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = masks.ones(model, names)
    target = imp_counts(model, 0.2, 3)
    got = saliency.synflow(model, mask, names, (2, 4, 4), target, 10)
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert {k: v.tolist() for k, v in masks.kept(got).items()} == {k: v.tolist() for k, v in target.layers.items()}


def test_iterative_synflow_never_empties_a_layer_where_one_shot_does():
    """Global ranking over a 10000/200/8-weight chain down to 20 weights: one-shot SynFlow prunes the
    big first layer to zero (its per-weight scores are the smallest, the layer sums being equal);
    100 iterations keep every layer alive, at exactly the target count."""
    model = mlp([100, 100, 2, 4], [0])
    names = models.prunable(model)
    mask = masks.ones(model, names)
    target = Target({}, names, torch.tensor([20]))
    one_shot = saliency.prune_to(saliency.synflow_scores(model, mask, names, (100,)), mask, target)
    assert int(masks.kept(one_shot)[names[0]][0]) == 0
    collapse = r"after 1 steps network 0 has no path from input to output \(layer collapse; empty: layers.0.weight\)"
    with pytest.raises(ValueError, match=collapse):
        saliency.synflow(model, mask, names, (100,), target, 1)
    with torch.no_grad():  # rewound past init, biases are not zero: R > 0 without any path, still a collapse
        for layer in model.layers:
            layer.bias.fill_(0.5)
    with pytest.raises(ValueError, match=collapse):
        saliency.synflow(model, mask, names, (100,), target, 1)
    got = saliency.synflow(model, mask, names, (100,), target, 100)
    kept = masks.kept(got)
    assert all(int(kept[k][0]) > 0 for k in names)
    assert sum(int(kept[k][0]) for k in names) == 20


def test_synflow_keeps_the_resnet_shortcut():
    """The public code's bug: 1x1 shortcut convolutions pruned to zero. Global over every layer to 2%."""
    model = models.ResNet(1, [(4, 1), (8, 1)], outputs=3, shape=(3, 8, 8))
    model.init_(0, 0)
    names = models.prunable(model)
    assert "blocks.1.shortcut.weight" in names
    mask = masks.ones(model, names)
    total = sum(int(m.sum()) for m in mask.values())
    target = Target({}, names, torch.tensor([total // 50]))
    got = saliency.synflow(model, mask, names, (3, 8, 8), target, 100)
    kept = masks.kept(got)
    assert int(kept["blocks.1.shortcut.weight"][0]) > 0, {k: int(v[0]) for k, v in kept.items()}
    assert sum(int(v[0]) for v in kept.values()) == total // 50


# ---------------------------------------------------------------- stacks and determinism


@pytest.mark.parametrize("build, shape", [(lambda s: mlp([6, 5, 4, 3], s), (6,)), (tiny_vgg, (2, 4, 4))])
def test_stacked_scores_equal_each_network_alone(build, shape):
    seeds = [3, 4, 5]
    stack = build(seeds)
    names = models.prunable(stack)
    mask = random_mask(stack, 0.8)
    data = batches(shape, n=3)
    target = imp_counts(stack, 0.3, 2)
    scored = {f: f(stack, mask, names, data) for f in (saliency.snip, saliency.grasp)}
    flow = saliency.synflow(stack, mask, names, shape, target, 5)
    for i, s in enumerate(seeds):
        alone = build([s])
        one = {k: m[i : i + 1] for k, m in mask.items()}
        own = [(x[i : i + 1], y) for x, y in data]
        for f, got in scored.items():
            for k, v in f(alone, one, names, own).items():
                torch.testing.assert_close(got[k][i : i + 1], v, rtol=1e-10, atol=1e-14)
        one_target = Target({k: c[i : i + 1] for k, c in target.layers.items()})
        for k, v in saliency.synflow(alone, one, names, shape, one_target, 5).items():
            assert torch.equal(flow[k][i : i + 1], v), k


def test_scores_are_deterministic_for_a_seed_even_with_dropout():
    """Dropout draws from torch's global RNG: scoring forks it, so neither the scores nor the RNG move."""
    def build():
        m = models.ConvNet(2, [4, "M"], [8, 3], dropout=0.5, shape=(1, 4, 4))
        for i, s in enumerate([9, 10]):
            m.init_(i, s)
        return m

    names = models.prunable(build())
    data = batches((1, 4, 4))
    mask = masks.ones(build(), names)
    for f in (saliency.snip, saliency.grasp):
        state = torch.get_rng_state()
        first = f(build(), mask, names, data)
        assert torch.equal(torch.get_rng_state(), state)
        torch.rand(5)  # a different global RNG state
        second = f(build(), mask, names, data)
        assert all(torch.equal(first[k], second[k]) for k in names)
    target = imp_counts(build(), 0.5, 2)
    a = saliency.synflow(build(), mask, names, (1, 4, 4), target, 7)
    b = saliency.synflow(build(), mask, names, (1, 4, 4), target, 7)
    assert all(torch.equal(a[k], b[k]) for k in names)


# ---------------------------------------------------------------- counts, prune_to, invert


def tied_scores(mask: masks.Mask, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, 4, m.shape, generator=gen).double() for k, m in mask.items()}  # many ties


@pytest.mark.parametrize("pooled", [[], ["layers.0.weight", "layers.1.weight"]])
def test_prune_to_makes_pruning_prunes_choice(pooled):
    """Same mask as pruning.prune at the rates giving the same counts, ties included (by position)."""
    model = mlp([9, 8, 7, 3], [0, 1])
    names = models.prunable(model)
    mask = random_mask(model, 0.6, seed=3)
    score = tied_scores(mask)
    rates = {k: 0.35 for k in names}
    expected = pruning.prune(score, mask, pruning.Plan(rates, pooled, 0.35))
    kept = masks.kept(expected)
    target = Target({k: kept[k] for k in names if k not in pooled}, pooled,
                    sum(kept[k] for k in pooled) if pooled else None)
    got = saliency.prune_to(score, mask, target)
    assert all(torch.equal(got[k], expected[k]) for k in names)


@pytest.mark.parametrize("strategy", ["layerwise", "global"])
def test_pruning_at_init_to_round_k_keeps_imp_round_k_counts(strategy):
    """LeNet-300-100, rates 0.2 (output 0.1), K = 15: IMP prunes 15 times; PaI once, to the same counts."""
    model = models.build("lenet-300-100", [0])
    names = models.prunable(model)
    rates = {k: 0.1 if k == names[-1] else 0.2 for k in names}  # the output layer at half the rate
    pooled = names[:2] if strategy == "global" else []
    gen = torch.Generator().manual_seed(0)
    imp = masks.ones(model, names)
    for _ in range(15):
        imp = pruning.prune({k: torch.rand(m.shape, generator=gen, dtype=torch.float64) for k, m in imp.items()},
                            imp, pruning.Plan(rates, pooled, 0.2))
    target = saliency.target(PruneConfig(strategy=strategy, global_kinds=["fc"]), models.kinds(model),
                             {k: m[0].numel() for k, m in imp.items()}, 15, 1)
    score = {k: torch.rand(m.shape, generator=gen, dtype=torch.float64) for k, m in imp.items()}
    pai = saliency.prune_to(score, masks.ones(model, names), target)
    want, got = masks.kept(imp), masks.kept(pai)
    for k in names:
        if k not in pooled:
            assert int(got[k][0]) == int(want[k][0]) == int(target.layers[k][0]), k
    if pooled:
        assert sum(int(got[k][0]) for k in pooled) == sum(int(want[k][0]) for k in pooled) == int(target.pooled_total[0])
    else:
        assert int(want[names[0]][0]) == 8275  # 235,200 after 15 rounds at 20%, rounded half up each round


def test_invert_keeps_the_lowest_scores_at_the_same_counts():
    model = mlp([9, 8, 7, 3], [0, 1])
    names = models.prunable(model)
    mask = random_mask(model, 0.8, seed=4)
    gen = torch.Generator().manual_seed(5)
    score = {k: torch.where(m, torch.rand(m.shape, generator=gen, dtype=torch.float64), float("-inf"))
             for k, m in mask.items()}
    kept = masks.kept(mask)
    counts = {k: (n + 1) // 2 for k, n in kept.items()}
    normal = saliency.prune_to(score, mask, Target(counts))
    inverted = saliency.invert(score, mask, counts)
    assert {k: v.tolist() for k, v in masks.kept(inverted).items()} == {k: v.tolist() for k, v in counts.items()}
    assert masks.is_subset(inverted, mask)
    for k in names:
        for i in range(2):
            s, m = score[k][i][mask[k][i]], inverted[k][i][mask[k][i]]
            lowest = torch.zeros_like(m)
            lowest[torch.argsort(s)[: int(counts[k][i])]] = True
            assert torch.equal(m, lowest)  # exactly the lowest-ranked kept weights
            if int(kept[k][i]) % 2 == 0:  # half and half: the exact complement of the normal ranking
                assert torch.equal(inverted[k][i], mask[k][i] & ~normal[k][i])


def test_bad_counts_give_clear_errors():
    model = mlp([4, 3, 2], [0])
    names = models.prunable(model)
    mask = masks.ones(model, names)
    score = tied_scores(mask)
    with pytest.raises(ValueError, match=r"layer 'layers.0.weight': cannot keep 13 of its 12 weights"):
        saliency.prune_to(score, mask, Target({"layers.0.weight": torch.tensor([13]), "layers.1.weight": torch.tensor([6])}))
    with pytest.raises(ValueError, match=r"layer 'layers.1.weight': cannot keep 0 of its 6 weights"):
        saliency.prune_to(score, mask, Target({"layers.0.weight": torch.tensor([3]), "layers.1.weight": torch.tensor([0])}))
    with pytest.raises(ValueError, match=r"prune.score_batches: no batch to score on"):
        saliency.snip(model, mask, names, [])
    with pytest.raises(ValueError, match=r"pruning layer 'layers.1.weight' at rate 0.5 would remove all its 1 weights at round 3"):
        imp_counts(model, 0.5, 3)
