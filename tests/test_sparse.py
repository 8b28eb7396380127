"""Sparse execution of masked linear layers (`train.sparse`, lottery.sparse): same results as dense up to
floating-point summation order, pruned weights exactly zero, the dense weights current at every read."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lottery import models, pruning, sparse
from lottery.config import ConfigError, PruneConfig, TrainConfig
from lottery.step import Step
from lottery.training import train
from test_training import MODEL, half_mask, silent, synthetic_data

OPTIMIZERS = [dict(optimizer="adam"), dict(optimizer="adam", weight_decay=0.01),
              dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01)]


def _train(setting: str, mask_of=half_mask, seeds=(0, 1, 2), **kw):
    model = models.build(MODEL, list(seeds))
    mask = mask_of(model)
    cfg = TrainConfig(**{**dict(lr=1e-3, batch_size=20, iterations=120, eval_every=40, log_every=0), **kw},
                      sparse=setting)
    return model, mask, train(model, mask, synthetic_data(), cfg, list(seeds), log=silent)


@pytest.mark.parametrize("train_cfg", OPTIMIZERS, ids=["adam", "adam-wd", "sgd-momentum-wd"])
def test_sparse_equals_dense_in_float64(float64, train_cfg):
    dense_model, mask, dense = _train("off", **train_cfg)
    model, _, result = _train("on", **train_cfg)
    assert result.early_stop_iteration == dense.early_stop_iteration
    assert result.test_accuracy == dense.test_accuracy and result.final_test_accuracy == dense.final_test_accuracy
    assert result.min_val_loss == pytest.approx(dense.min_val_loss, abs=1e-12, rel=0)
    for row, ref in zip(result.curve, dense.curve):
        assert row["val_loss"] == pytest.approx(ref["val_loss"], abs=1e-12, rel=0)
    for (k, w), ref in zip(model.state_dict().items(), dense_model.state_dict().values()):
        assert torch.allclose(w, ref, rtol=0, atol=1e-12), k
        if k in mask:
            assert bool((w[~mask[k]] == 0).all()), k  # pruned weights exactly zero
    assert all(m.sparse is None for m in model.modules() if isinstance(m, models.StackedLinear))  # dense again


def test_float32_round_matches_dense_and_prunes_the_same_next_mask():
    # A full tiny round in float32 (6 networks: 2 trials x ticket + 2 controls, the r2 density of TINY, 64 %),
    # then the next round's magnitude pruning from each. Observed: weights within 1.2e-7, validation losses within
    # 2.4e-7, accuracies equal (asserted: 1e-5).
    def mask_64(model):
        gen = torch.Generator().manual_seed(1)
        return {k: torch.rand(model.get_parameter(k).shape, generator=gen) < 0.64 for k in models.prunable(model)}

    seeds = range(6)
    dense_model, mask, dense = _train("off", mask_64, seeds, iterations=200, eval_every=50)
    model, _, result = _train("on", mask_64, seeds, iterations=200, eval_every=50)
    assert result.early_stop_iteration == dense.early_stop_iteration
    assert result.test_accuracy == dense.test_accuracy and result.final_test_accuracy == dense.final_test_accuracy
    assert result.min_val_loss == pytest.approx(dense.min_val_loss, abs=1e-5, rel=0)
    for (k, w), ref in zip(model.state_dict().items(), dense_model.state_dict().values()):
        assert torch.allclose(w, ref, rtol=0, atol=1e-5), k
    kinds = models.kinds(model)
    plan = pruning.plan(PruneConfig(), kinds, 1)
    trained = {k: model.get_parameter(k).detach() for k in kinds}
    trained_dense = {k: dense_model.get_parameter(k).detach() for k in kinds}
    new = pruning.prune(pruning.scores("magnitude", trained, {}), mask, plan)
    new_dense = pruning.prune(pruning.scores("magnitude", trained_dense, {}), mask, plan)
    for k in kinds:
        assert torch.equal(new[k], new_dense[k]), k


def test_step_runs_the_masked_linear_layers_sparse_and_steps_only_kept_values():
    model = models.build(MODEL, [0, 1])
    mask = half_mask(model)
    x, y = torch.randn(2, 20, 40), torch.randint(0, 10, (2, 20))
    losses = lambda idx: F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(1)  # noqa: E731
    step = Step(model, mask, TrainConfig(sparse="on"), losses, log=silent)
    assert list(step.sparse) == models.prunable(model)
    kept = sum(int(m.sum()) for m in mask.values())
    stepped = sum(p.numel() for p in step.opt.param_groups[0]["params"] if p.dim() == 1)
    assert stepped == kept  # the optimizer holds the kept values, not the dense weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step(torch.zeros(1))
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in mask)  # not written until sync
    step.sync()
    for k, m in mask.items():
        w = model.get_parameter(k)
        assert not torch.equal(w, before[k]) and bool((w[~m] == 0).all()), k



def test_auto_runs_sparse_only_large_layers_below_the_crossover_density():
    lenet = models.build("lenet-300-100", [0])  # 784x300, 300x100 and the 100x10 output layer
    cpu = torch.device("cpu")

    def at(density):
        return {k: torch.rand(lenet.get_parameter(k).shape) < density for k in models.prunable(lenet)}

    thin, thick = at(sparse.AUTO_DENSITY * 0.8), at(min(1.0, sparse.AUTO_DENSITY * 1.5))
    auto, on = TrainConfig(sparse="auto"), TrainConfig(sparse="on")
    assert list(sparse.plan(lenet, thin, auto, cpu)) == ["layers.0.weight", "layers.1.weight"]
    assert sparse.plan(lenet, thick, auto, cpu) == {}
    assert list(sparse.plan(lenet, thick, on, cpu)) == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    assert sparse.plan(lenet, thin, TrainConfig(sparse="off"), cpu) == {}
    assert sparse.plan(lenet, thin, TrainConfig(sparse="auto", precision="bfloat16"), cpu) == {}
    assert sparse.plan(lenet, thin, TrainConfig(sparse="auto", world_size=2), cpu) == {}
    assert sparse.plan(lenet, thin, auto, torch.device("cuda")) == {}  # CUDA keeps the dense path
    with pytest.raises(ConfigError, match="^train.sparse: on has no sparse path with a CUDA device"):
        sparse.plan(lenet, thin, on, torch.device("cuda"))


def test_sparse_on_without_a_sparse_path_names_the_layer_before_training(tmp_path):
    from lottery import config, rounds

    raw = {"prune": {"rounds": 1, "chain": config.chain(1)}, "model": {"name": "conv-2"},
           "data": {"dataset": "cifar10"}, "train": {"sparse": "on"}}
    with pytest.raises(ConfigError, match=r"^train.sparse: on has no sparse path for layer convs.0.weight "
                                          r"\(StackedConv2d\); use auto or off$"):
        rounds.init(config.from_dict(raw), tmp_path / "init")  # the init stage: before any training
    assert not (tmp_path / "init").exists() or not any((tmp_path / "init").iterdir())
    model = models.build("conv-2", [0])
    mask = {k: torch.ones_like(model.get_parameter(k), dtype=torch.bool) for k in models.prunable(model)}
    with pytest.raises(ConfigError, match=r"^train.sparse: on has no sparse path for layer convs.0.weight "):
        Step(model, mask, TrainConfig(sparse="on"), lambda idx: None, log=silent)
    lenet = models.build(MODEL, [0])
    ones = {k: torch.ones_like(lenet.get_parameter(k), dtype=torch.bool) for k in models.prunable(lenet)}
    with pytest.raises(ConfigError, match="^train.sparse: on has no sparse path with train.precision bfloat16"):
        Step(lenet, ones, TrainConfig(sparse="on", precision="bfloat16"), lambda idx: None, log=silent)


def test_train_sparse_is_validated_naming_the_key():
    from lottery import config

    raw = {"prune": {"rounds": 1, "chain": config.chain(1)}}
    assert config.from_dict({**raw, "train": {"sparse": "on"}}).train.sparse == "on"
    assert config.from_dict(raw).train.sparse == "auto"
    with pytest.raises(ConfigError, match=r"^train.sparse: 'always' is not allowed \(one of auto, on, off\)$"):
        config.from_dict({**raw, "train": {"sparse": "always"}})


def test_artifacts_digest_counts_train_sparse_unless_off():
    # `off` records the digest artifacts had before train.sparse existed (their bytes are unchanged)
    from lottery import config

    raw = {"prune": {"rounds": 1, "chain": config.chain(1)}}
    keys = config.STAGE_PARAMS["round"]
    off, auto = (config.from_dict({**raw, "train": {"sparse": s}}) for s in ("off", "auto"))
    assert "train.sparse" in keys
    assert off.digest(keys) == off.digest([k for k in keys if k != "train.sparse"]) != auto.digest(keys)


def test_a_sparse_layer_carries_values_over_a_change_of_mask():
    # (for a step engine whose mask changes during training: the optimizer state of the kept weights moves along)
    layer = models.StackedLinear(2, 5, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(30.0).view(2, 3, 5) + 1)
    old_keep, new_keep = torch.rand(2, 3, 5) < 0.5, torch.rand(2, 3, 5) < 0.5
    old, new = sparse.SparseLinear(layer, old_keep), sparse.SparseLinear(layer, new_keep)
    assert torch.equal(old.vals.detach(), layer.weight.detach()[old_keep])  # the CSR order is the weight's flat order
    carried = new.take(old, old.vals.detach())
    assert torch.equal(carried, torch.where(old_keep, layer.weight.detach(), 0.0)[new_keep])


def test_a_non_finite_loss_names_the_first_non_finite_weight_of_a_sparse_layer():
    from lottery.training import NumericalError

    with pytest.raises(NumericalError, match=r"first non-finite parameter: layers.0.weight. No checkpoint written.$"):
        _train("on", optimizer="sgd", lr=1e30, iterations=50, eval_every=50, log_every=1)


def test_evaluation_inside_sparse_forward_reads_the_kept_values_and_equals_dense_in_float64(float64):
    # evaluate() of a stepped stack: inside Step.sparse_forward the sparse layers run on their kept values (the
    # first layer's one input for all networks through SparseLinear.shared, the next one through the CSR product)
    from lottery.training import evaluate

    model = models.build(MODEL, [0, 1, 2])
    mask = half_mask(model)
    data = synthetic_data()
    step = Step(model, mask, TrainConfig(sparse="on", lr=0.05), lambda idx: _losses(model, data, idx), log=silent)
    step(torch.arange(20))  # the kept values move; the dense weights keep the old ones until sync
    stale = evaluate(model, data.val)
    with step.sparse_forward():
        loss, acc = evaluate(model, data.val)
    assert not torch.equal(loss, stale[0])  # not the dense weights: the kept values
    step.sync()
    dense = evaluate(model, data.val)
    assert torch.allclose(loss, dense[0], rtol=0, atol=1e-12) and torch.equal(acc, dense[1])
    assert all(m.sparse is None for m in model.modules() if isinstance(m, models.StackedLinear))  # dense again


def _losses(model, data, idx):
    out = model(data.train.x[idx].expand(3, -1, -1))
    return F.cross_entropy(out.transpose(1, 2), data.train.y[idx].expand(3, -1), reduction="none").mean(1)


def test_training_evaluates_validation_and_test_through_the_sparse_layers(monkeypatch):
    # every evaluation of train() (validation at 40, 80, 120; the test set twice) runs the first layer's shared
    # forward, one call per chunk; with train.sparse off, none
    calls = []
    shared = sparse.SparseLinear.shared
    monkeypatch.setattr(sparse.SparseLinear, "shared", lambda self, x: calls.append(x.shape) or shared(self, x))
    _train("off")
    assert calls == []
    _train("on")
    assert calls == [(1, 60, 40)] * 5


def test_float32_sparse_evaluation_gives_the_round_that_dense_evaluation_gave(monkeypatch):
    # The same sparse training (6 networks at 10%) evaluated sparse, as train() does, and dense on the synced
    # weights, as it did before: the trained weights are identical (evaluation changes nothing: the next round's
    # masks are the same), accuracies and early-stop iterations equal; validation losses observed identical here
    # (LeNet-300-100 at 3.5%: logits within 1.7e-8, mean losses identical; allowed: 1e-6).
    from lottery import training

    def mask_10(model):
        gen = torch.Generator().manual_seed(2)
        return {k: torch.rand(model.get_parameter(k).shape, generator=gen) < 0.1 for k in models.prunable(model)}

    def dense_evaluate(model, *args, **kw):
        layers = [m for m in model.modules() if isinstance(m, models.StackedLinear)]
        running = [m.sparse for m in layers]
        for m in layers:
            m.sparse = None
        try:
            return evaluate(model, *args, **kw)
        finally:
            for m, s in zip(layers, running):
                m.sparse = s

    seeds, evaluate = range(6), training.evaluate
    model, mask, result = _train("on", mask_10, seeds, iterations=200, eval_every=20)
    monkeypatch.setattr(training, "evaluate", dense_evaluate)
    ref_model, _, ref = _train("on", mask_10, seeds, iterations=200, eval_every=20)
    for (k, w), r in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(w, r), k
    assert result.early_stop_iteration == ref.early_stop_iteration
    assert result.test_accuracy == ref.test_accuracy and result.final_test_accuracy == ref.final_test_accuracy
    assert [r["val_acc"] for r in result.curve] == [r["val_acc"] for r in ref.curve]
    diff = max(abs(a - b) for r, q in zip(result.curve, ref.curve) for a, b in zip(r["val_loss"], q["val_loss"]))
    assert diff <= 1e-6
