"""The masked training loop (lottery.training) and stacked model construction (lottery.models)."""
from __future__ import annotations

import pytest
import torch

from lottery import masks, models, step
from lottery.runtime import configure_runtime
from lottery.config import ConfigError, TrainConfig
from lottery.data import TensorData
from lottery.step import stop_pruned_updates
from lottery.runtime import resolve_device
from lottery.training import NumericalError, Result, train

MODEL = "mlp-mnist1d"  # 40 -> 100 -> 100 -> 10


def synthetic_data(n_train=240, n_val=60, n_test=60, seed=0, device="cpu") -> TensorData:
    """A learnable 10-class problem on 40 features: labels from a fixed random linear map."""
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(40, 10, generator=gen)
    out = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        x = torch.randn(n, 40, generator=gen)
        out[f"x_{split}"] = x
        out[f"y_{split}"] = (x @ proj).argmax(1)
    return TensorData(**{k: v.to(device) for k, v in out.items()})


def half_mask(model, seed=0) -> masks.Mask:
    """About 50 % of every layer pruned, independently per network."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {k: torch.rand(params[k].shape, generator=gen) < 0.5 for k in models.prunable(model)}


def cfg(**kw) -> TrainConfig:
    base = dict(optimizer="adam", lr=1e-3, batch_size=20, iterations=200, eval_every=50, log_every=0)
    base.update(kw)
    return TrainConfig(**base)


def silent(*_a, **_k):
    pass




# ---------------------------------------------------------------- masks stay applied


@pytest.mark.parametrize(
    "train_cfg",
    [
        dict(optimizer="adam"),
        dict(optimizer="adam", weight_decay=0.01),
        dict(optimizer="sgd", lr=0.05, momentum=0.9),
        dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
    ],
    ids=["adam", "adam-wd", "sgd-momentum", "sgd-momentum-wd"],
)
def test_pruned_weights_stay_exactly_zero(train_cfg):
    model = models.build(MODEL, [0, 1])
    mask = half_mask(model)
    for k, m in mask.items():  # sanity: really about half pruned in every layer and network
        frac = m.flatten(1).float().mean(1)
        assert ((frac > 0.4) & (frac < 0.6)).all(), k
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert all((before[k][~m] != 0).all() for k, m in mask.items())  # pruned weights start non-zero

    result = train(model, mask, synthetic_data(), cfg(**train_cfg), order_seeds=[0, 1], log=silent)

    after = dict(model.named_parameters())
    for k, m in mask.items():
        w = after[k].detach()
        assert (w[~m] == 0).all(), f"{k}: pruned weights revived"
        changed = (w[m] != before[k][m]).float().mean()
        assert changed > 0.9, f"{k}: only {float(changed):.2%} of the surviving weights moved"
    for j in range(3):  # biases are trained, never masked
        b = f"layers.{j}.bias"
        assert not torch.equal(after[b].detach(), before[b])
    # the mask itself is not modified by training
    assert all(m.dtype == torch.bool for m in mask.values())
    assert isinstance(result, Result) and len(result.early_stop_iteration) == 2
    # it did learn something: better than chance (10 %) on the test set
    assert min(result.final_test_accuracy) > 0.3


def test_result_fields_and_early_stop_is_argmin_of_validation_loss():
    model = models.build(MODEL, [0, 1, 2])
    data = synthetic_data()
    result = train(model, masks.ones(model, models.prunable(model)), data, cfg(iterations=120, eval_every=30),
                   order_seeds=[0, 1, 2], log=silent)
    assert [row["iteration"] for row in result.curve] == [30, 60, 90, 120]
    for i in range(3):
        losses = [row["val_loss"][i] for row in result.curve]
        best = min(range(len(losses)), key=lambda j: losses[j])
        assert result.early_stop_iteration[i] == result.curve[best]["iteration"]
        assert result.min_val_loss[i] == pytest.approx(losses[best], abs=0)
        assert 0.0 <= result.test_accuracy[i] <= 1.0
        assert 0.0 <= result.final_test_accuracy[i] <= 1.0


def test_final_iteration_is_evaluated_even_if_not_a_multiple():
    model = models.build(MODEL, [0])
    result = train(model, masks.ones(model, models.prunable(model)), synthetic_data(), cfg(iterations=25, eval_every=10),
                   order_seeds=[0], log=silent)
    assert [row["iteration"] for row in result.curve] == [10, 20, 25]


def test_model_holds_final_weights_not_early_stop_weights():
    data = synthetic_data()
    # unlearnable validation labels: the validation loss rises as the network grows confident,
    # so the early-stop iteration comes well before the end
    data.val.y = torch.randint(0, 10, data.val.y.shape, generator=torch.Generator().manual_seed(9))
    model = models.build(MODEL, [0])
    res = train(model, masks.ones(model, models.prunable(model)), data, cfg(lr=5e-3, iterations=100, eval_every=5),
                order_seeds=[0], log=silent)
    assert res.early_stop_iteration[0] < 100  # precondition of this test
    # reference: the same training evaluated only at the end (evaluation consumes no randomness)
    ref = models.build(MODEL, [0])
    ref_res = train(ref, masks.ones(ref, models.prunable(ref)), data, cfg(lr=5e-3, iterations=100, eval_every=100),
                    order_seeds=[0], log=silent)
    assert ref_res.early_stop_iteration == [100]
    for (k, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), k
    assert res.final_test_accuracy == ref_res.final_test_accuracy


# ---------------------------------------------------------------- stacked == one by one


def test_models_build_stack_equals_networks_built_alone():
    for name in ("mlp-mnist1d", "lenet-300-100"):
        stack = models.build(name, [3, 8]).state_dict()
        a = models.build(name, [3]).state_dict()
        b = models.build(name, [8]).state_dict()
        for k in stack:
            assert torch.equal(stack[k][0:1], a[k]), (name, k)
            assert torch.equal(stack[k][1:2], b[k]), (name, k)
        assert not torch.equal(a["layers.0.weight"], b["layers.0.weight"])
    # same seed twice: identical networks
    twin = models.build(MODEL, [4, 4]).state_dict()
    assert torch.equal(twin["layers.1.weight"][0], twin["layers.1.weight"][1])


def test_glorot_init_scale_and_zero_bias():
    sd = models.build("lenet-300-100", [0]).state_dict()
    w = sd["layers.0.weight"][0]
    assert w.shape == (300, 784)
    assert float(w.std()) == pytest.approx((2.0 / (784 + 300)) ** 0.5, rel=0.02)
    assert all(not sd[f"layers.{j}.bias"].any() for j in range(3))


def test_stacked_training_equals_one_by_one():
    seeds = [0, 1, 2]
    data = synthetic_data()
    train_cfg = cfg(iterations=150, eval_every=25)
    stack = models.build(MODEL, seeds)
    stack_mask = half_mask(stack, seed=42)
    res = train(stack, stack_mask, data, train_cfg, order_seeds=seeds, log=silent)
    stacked = stack.state_dict()
    for i, s in enumerate(seeds):
        alone = models.build(MODEL, [s])
        alone_mask = {k: m[i : i + 1].clone() for k, m in stack_mask.items()}
        r = train(alone, alone_mask, data, train_cfg, order_seeds=[s], log=silent)
        for k, v in alone.state_dict().items():
            assert torch.allclose(stacked[k][i : i + 1], v, atol=1e-5, rtol=0), (s, k)
        assert r.early_stop_iteration == [res.early_stop_iteration[i]]
        assert r.min_val_loss[0] == pytest.approx(res.min_val_loss[i], abs=1e-5)
        assert r.final_test_accuracy[0] == pytest.approx(res.final_test_accuracy[i], abs=1e-9)


@pytest.mark.parametrize(
    "train_cfg",
    [dict(), dict(weight_decay=0.01, warmup=30, lr_drops=[60, 120], lr_gamma=0.5),
     dict(optimizer="sgd", lr=0.05, momentum=0.9)],
    ids=["adam", "adam-wd-schedule", "sgd-momentum"],
)
def test_fast_path_equals_plain_optimizer_steps_bit_for_bit(train_cfg):
    # fast=True calls the fused Adam kernel directly (lottery.step.direct_step) and holds
    # pruned weights at zero through Adam's state (stop_pruned_updates); fast=False steps
    # through torch.optim's Optimizer.step and multiplies by the mask after every step
    out = {}
    for fast in (True, False):
        model = models.build(MODEL, [0, 1, 2])
        result = train(model, half_mask(model, seed=3), synthetic_data(), cfg(iterations=150, **train_cfg),
                       order_seeds=[0, 1, 0], log=silent, fast=fast)
        out[fast] = result, model.state_dict()
    assert out[True][0] == out[False][0]
    for k, v in out[True][1].items():
        assert torch.equal(v, out[False][1][k]), k


def test_fused_adam_signature_mismatch_falls_back_to_optimizer_step_with_one_note(monkeypatch):
    assert step.fused_adam_matches()  # this torch's private kernel takes what direct_step passes
    runs = {}
    for mismatch in (False, True):
        if mismatch:  # as if a torch upgrade had renamed an argument of torch._fused_adam_
            monkeypatch.setattr(step, "FUSED_ADAM_ARGS", step.FUSED_ADAM_ARGS[:-1] + ("found_infs",))
            assert not step.fused_adam_matches()
        lines = []
        model = models.build(MODEL, [0, 1])
        res = train(model, half_mask(model), synthetic_data(), cfg(iterations=60, eval_every=20, log_every=30),
                    order_seeds=[0, 1], log=lines.append)
        runs[mismatch] = res, model.state_dict(), [line for line in lines if not line.startswith("[train] it ")]
    assert runs[False][2] == []
    assert runs[True][2] == ["note: torch._fused_adam_ has an unexpected signature; using Optimizer.step "
                             "(slower, same results)"]
    assert runs[True][0] == runs[False][0]
    for k, v in runs[True][1].items():
        assert torch.equal(v, runs[False][1][k]), k


@pytest.mark.parametrize("opt_cfg", [dict(), dict(weight_decay=0.1), dict(amsgrad=True)], ids=["adam", "l2", "amsgrad"])
def test_stop_pruned_updates_keeps_pruned_weights_zero_without_a_mask_multiply(opt_cfg):
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(50, 40, generator=g))
    keep = (torch.rand(50, 40, generator=g) > 0.5).float()
    with torch.no_grad():
        w.mul_(keep)
    opt = torch.optim.Adam([w], lr=0.5, fused=True, **opt_cfg)
    assert not stop_pruned_updates(opt, [w], [keep])  # no state before the first step
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    assert not stop_pruned_updates(sgd, [w], [keep])  # momentum SGD has no such lever: keeps the multiply

    def step():
        opt.zero_grad()
        (w.sin() * torch.randn(50, 40, generator=g)).sum().backward()  # gradients everywhere, pruned too
        opt.step()

    step()
    with torch.no_grad():
        w.mul_(keep)
    assert stop_pruned_updates(opt, [w], [keep])
    for _ in range(20):
        step()
    assert (w[keep == 0] == 0).all()
    assert (w[keep == 1] != 0).all()
    assert torch.isinf(opt.state[w]["exp_avg_sq"][keep == 0]).all()


def test_networks_sharing_an_order_seed_share_batches():
    # two identical networks (same init seed, same mask) with the same order seed stay identical;
    # with a different order seed they diverge
    data = synthetic_data()
    model = models.build(MODEL, [5, 5, 5])
    mask = masks.ones(model, models.prunable(model))
    train(model, mask, data, cfg(iterations=40, eval_every=20), order_seeds=[7, 7, 8], log=silent)
    w = model.state_dict()["layers.0.weight"]
    assert torch.allclose(w[0], w[1], atol=1e-6, rtol=0)
    assert not torch.allclose(w[0], w[2], atol=1e-3)


# ---------------------------------------------------------------- errors


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: 'cuda' is a valid device here")
def test_resolve_device_cuda_without_cuda_raises():
    with pytest.raises(ConfigError, match="train.device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


def test_tf32_on_cpu_raises_naming_precision():
    with pytest.raises(ConfigError, match=r"train.precision: 'tf32' is not allowed on cpu"):
        resolve_device("cpu", "tf32")
    with pytest.raises(ConfigError, match=r"train.precision: 'tf32' is not allowed on cpu"):
        configure_runtime("cpu", "tf32")


def test_configure_runtime_checks_like_resolve_device_and_returns_the_device():
    # the process-wide settings: glibc's mallopt always (no observable result), CUDA's only on CUDA
    before = torch.are_deterministic_algorithms_enabled()
    assert configure_runtime("cpu") == torch.device("cpu")
    assert configure_runtime("auto") == resolve_device("auto")
    if not torch.cuda.is_available():
        assert torch.are_deterministic_algorithms_enabled() == before
        with pytest.raises(ConfigError, match="train.device"):
            configure_runtime("cuda")


def test_bfloat16_trains_in_bfloat16_and_keeps_float32_masked_weights():
    data = synthetic_data()
    results, weights = {}, {}
    for precision in ("float32", "bfloat16"):
        model = models.build(MODEL, [0, 1])
        mask = half_mask(model)
        results[precision] = train(model, mask, data, cfg(precision=precision), order_seeds=[0, 1], log=silent)
        weights[precision] = model.state_dict()["layers.0.weight"]
        assert weights[precision].dtype == torch.float32
        assert (weights[precision][~mask["layers.0.weight"]] == 0).all()
    # bfloat16 matmuls really ran (other weights), and learned as well (within 10 pp; chance is 10%)
    assert not torch.allclose(weights["float32"], weights["bfloat16"], atol=1e-4)
    for a, b in zip(results["float32"].final_test_accuracy, results["bfloat16"].final_test_accuracy):
        assert b > 0.3 and abs(a - b) < 0.1


def test_batch_size_larger_than_training_set_raises():
    model = models.build(MODEL, [0])
    with pytest.raises(ConfigError, match="train.batch_size"):
        train(model, masks.ones(model, models.prunable(model)), synthetic_data(n_train=10), cfg(batch_size=11),
              order_seeds=[0], log=silent)


def test_nan_weight_raises_numerical_error_naming_iteration_and_network():
    model = models.build(MODEL, [0, 1])
    with torch.no_grad():
        model.layers[1].weight[1, 3, 4] = float("nan")  # network 1 only
    mask = masks.ones(model, models.prunable(model))
    with pytest.raises(NumericalError) as e:
        train(model, mask, synthetic_data(), cfg(iterations=20, eval_every=3), order_seeds=[0, 1],
              label="r3", log=silent)
    msg = str(e.value)
    assert "iteration 3" in msg  # the first check
    assert "[1]" in msg and "[0, 1]" not in msg
    assert "r3" in msg


def test_exploding_learning_rate_raises_numerical_error():
    model = models.build(MODEL, [0])
    mask = masks.ones(model, models.prunable(model))
    with pytest.raises(NumericalError, match=r"iteration \d+"):
        train(model, mask, synthetic_data(), cfg(optimizer="sgd", lr=1e30, iterations=50, eval_every=1),
              order_seeds=[0], log=silent)


@pytest.mark.parametrize("iterations, log_every, at", [(100, 20, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]),
                                                      (200, 10, list(range(10, 201, 10))),
                                                      (25, 500, [3, 6, 9, 12, 15, 18, 21, 24, 25])])
def test_progress_lines_every_log_every_and_at_least_every_tenth_of_the_round(iterations, log_every, at):
    """A round shorter than train.log_every still reports progress (issue 24: 133 s of silence before)."""
    lines = []
    model = models.build(MODEL, [0])
    train(model, masks.ones(model, models.prunable(model)), synthetic_data(), cfg(iterations=iterations, eval_every=5,
          log_every=log_every), order_seeds=[0], label="rX", log=lines.append)
    assert all(line.startswith("[rX] it ") for line in lines)
    assert [int(line.split()[2].split("/")[0]) for line in lines] == at


def test_progress_lines_at_least_every_progress_seconds(monkeypatch):
    """The time rule: with PROGRESS_SECONDS at 0 every iteration is overdue, so every one prints (log_every=0: none)."""
    from lottery import training

    monkeypatch.setattr(training, "PROGRESS_SECONDS", 0.0)
    for log_every, want in ((500, list(range(1, 13))), (0, [])):
        lines = []
        model = models.build(MODEL, [0])
        train(model, masks.ones(model, models.prunable(model)), synthetic_data(), cfg(iterations=12, eval_every=4,
              log_every=log_every), order_seeds=[0], label="rX", log=lines.append)
        assert [int(line.split()[2].split("/")[0]) for line in lines] == want


# ---------------------------------------------------------------- CUDA (run where a GPU is present)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _train_on(device: str, seeds, order_seeds, train_cfg, fast=True, mask=None):
    dev = configure_runtime(device, train_cfg.precision)  # deterministic kernels on CUDA
    data = synthetic_data(device=dev)
    model = models.build(MODEL, seeds)
    mask = half_mask(model, seed=42) if mask is None else mask
    model.to(dev)
    res = train(model, {k: m.to(dev) for k, m in mask.items()}, data, train_cfg, order_seeds=order_seeds,
                log=silent, fast=fast)
    return res, {k: v.cpu() for k, v in model.state_dict().items()}


@cuda
def test_resolve_device_changes_nothing_and_configure_runtime_makes_cuda_deterministic():
    torch.use_deterministic_algorithms(False)
    assert resolve_device("cuda", "tf32") == torch.device("cuda")
    assert not torch.are_deterministic_algorithms_enabled()
    assert configure_runtime("cuda", "tf32") == torch.device("cuda")
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cuda.matmul.allow_tf32
    configure_runtime("cuda", "float32")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


@cuda
@pytest.mark.parametrize("train_cfg", [dict(), dict(optimizer="sgd", lr=0.05, momentum=0.9, warmup=20, lr_drops=[100])],
                         ids=["adam", "sgd-schedule"])
def test_cuda_graph_replay_equals_eager_steps_bit_for_bit(train_cfg):
    c = cfg(iterations=150, eval_every=25, **train_cfg)
    graph, eager = (_train_on("cuda", [0, 1, 2], [0, 1, 0], c, fast=g) for g in (True, False))
    assert graph[0] == eager[0]
    for k, v in graph[1].items():
        assert torch.equal(v, eager[1][k]), k


@cuda
def test_cuda_matches_cpu_and_stacked_matches_one_by_one():
    # Different kernels round differently and Adam amplifies it, so: the same weights pruned
    # (exactly zero), weights within 1% (relative norm), and the same accuracies within 5 pp.
    c = cfg(iterations=150, eval_every=25)
    res, sd = _train_on("cuda", [0, 1, 2], [0, 1, 2], c)
    cpu_res, cpu_sd = _train_on("cpu", [0, 1, 2], [0, 1, 2], c)

    def close(a, b):
        return (a.double() - b.double()).norm() <= 0.01 * b.double().norm()

    for k, v in sd.items():
        assert close(v, cpu_sd[k]), k
        assert torch.equal(v == 0, cpu_sd[k] == 0) or "bias" in k, k
    for a, b in zip(res.final_test_accuracy, cpu_res.final_test_accuracy):
        assert abs(a - b) <= 0.05
    stack_mask = half_mask(models.build(MODEL, [0, 1, 2]), seed=42)
    for i, s in enumerate([0, 1, 2]):
        _, alone = _train_on("cuda", [s], [s], c, mask={k: m[i : i + 1].clone() for k, m in stack_mask.items()})
        for k, v in alone.items():
            assert close(sd[k][i : i + 1], v), (s, k)
