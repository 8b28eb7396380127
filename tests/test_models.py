"""The paper's networks as stacks (lottery.models): sizes, layer kinds, shapes, stack == one by one, BatchNorm."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery import config, masks, models
from lottery.config import ConfigError, TrainConfig
from lottery.data import TensorData
from lottery.training import train

CIFAR = ["conv-2", "conv-4", "conv-6", "vgg-19", "resnet-20"]

# Prunable weights (conv and linear weights; no biases, no BatchNorm), computed by hand:
#   conv-2: 3*64*9 + 64*64*9 + 16*16*64*256 + 256*256 + 256*10
#   conv-4: + 64*128*9 + 128*128*9, fc in 8*8*128;  conv-6: + 128*256*9 + 256*256*9, fc in 4*4*256
#   vgg-19: 16 convs (20,018,880) + 512*10
#   resnet-20: 3*16*9 + 6*16*16*9 + (16*32*9 + 5*32*32*9 + 16*32) + (32*64*9 + 5*64*64*9 + 32*64) + 64*10
#   resnet-50: 53 convs (23,454,912) + fc 2048*1000; torchvision's 25,557,032 parameters less BatchNorm's
#              53,120 and the fc bias's 1,000 (test_resnet50_equals_torchvision_with_the_same_weights)
COUNTS = {
    "lenet-300-100": 266_200,
    "mlp-mnist1d": 15_000,
    "conv-2": 4_300_992,
    "conv-4": 2_425_024,
    "conv-6": 2_261_184,
    "vgg-19": 20_024_000,
    "resnet-20": 270_896,
    "resnet-50": 25_502_912,
}
# Frankle & Carbin (2019), Figure 2. Conv-6 is listed there as 1.7M, which its own architecture
# (64,64,pool,128,128,pool,256,256,pool; fc 256,256,10 on 4x4x256) does not give: 2.26M. Its
# convolutions alone are 1,144,512 (1.1M).
PAPER = {"lenet-300-100": "266K", "conv-2": "4.3M", "conv-4": "2.4M", "vgg-19": "20.0M", "resnet-20": "271K"}




def n_prunable(model: nn.Module) -> int:
    params = dict(model.named_parameters())
    return sum(params[k][0].numel() for k in models.prunable(model))


def paper_round(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{round(n / 1000)}K"


def silent(*_a, **_k):
    pass


def cifar_data(n_train=32, n_val=16, n_test=16, seed=0, double=False) -> TensorData:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        x = torch.randn(n, 3, 32, 32, generator=gen)
        out[f"x_{split}"] = x.double() if double else x
        out[f"y_{split}"] = torch.randint(0, 10, (n,), generator=gen)
    return TensorData(**out)


def half_mask(model, seed=0) -> masks.Mask:
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {k: torch.rand(params[k].shape, generator=gen) < 0.5 for k in models.prunable(model)}


# ---------------------------------------------------------------- sizes and layer kinds


@pytest.mark.parametrize("name", list(COUNTS))
def test_prunable_counts_are_exact_and_match_the_paper(name):
    model = models.REGISTRY[name](1)  # uninitialised: only shapes matter
    assert n_prunable(model) == COUNTS[name]
    if name in PAPER:
        assert paper_round(COUNTS[name]) == PAPER[name]


def test_conv6_convolutions_and_resnet20_total_parameters():
    m = models.REGISTRY["conv-6"](1)
    params = dict(m.named_parameters())
    assert sum(params[k][0].numel() for k, v in models.kinds(m).items() if v == "conv") == 1_144_512
    # ResNet-20's often quoted 0.27M / 272K counts every parameter (biases and BatchNorm included)
    r = models.REGISTRY["resnet-20"](1)
    assert sum(p[0].numel() for p in r.parameters()) == 272_474


def test_every_registered_model_has_its_datasets_and_config_knows_it():
    assert set(models.REGISTRY) == set(models.INPUTS) == set(config.MODELS)
    assert models.INPUTS["lenet-300-100"] == ("mnist", "fashion-mnist")
    assert models.INPUTS["mlp-mnist1d"] == ("mnist1d",)
    for name in CIFAR + ["conv-2-dropout", "conv-4-dropout", "conv-6-dropout"]:
        assert models.INPUTS[name] == ("cifar10",)
    assert models.INPUTS["resnet-50"] == ("imagenet", "imagefolder")
    assert all(set(v) <= set(config.DATASETS) for v in models.INPUTS.values())


def test_kinds_and_forward_order():
    m = models.REGISTRY["conv-2"](1)
    assert models.kinds(m) == {"convs.0.weight": "conv", "convs.1.weight": "conv", "fcs.0.weight": "fc",
                               "fcs.1.weight": "fc", "fcs.2.weight": "output"}
    assert [k for k, kind in models.kinds(m).items() if kind == "output"] == ["fcs.2.weight"]
    r = models.REGISTRY["resnet-20"](1)
    names, kinds = models.prunable(r), models.kinds(r)
    assert list(kinds) == names
    assert names[:4] == ["conv.weight", "blocks.0.conv1.weight", "blocks.0.conv2.weight", "blocks.1.conv1.weight"]
    assert "blocks.3.shortcut.weight" in names and "blocks.6.shortcut.weight" in names
    assert sum(v == "conv" for v in kinds.values()) == 21 and kinds["fc.weight"] == "output"
    assert [k for k, kind in models.kinds(r).items() if kind == "output"] == [names[-1]] == ["fc.weight"]
    assert not any("bn" in k or "bias" in k for k in names)
    lenet = models.REGISTRY["lenet-300-100"](1)
    assert list(models.kinds(lenet).values()) == ["fc", "fc", "output"]
    for name in ("conv-4", "conv-6"):
        k = models.kinds(models.REGISTRY[name](1))
        assert list(k.values()) == ["conv"] * (len(k) - 3) + ["fc", "fc", "output"]


# ---------------------------------------------------------------- shapes and stack == one by one


@pytest.mark.parametrize("name", ["conv-2", "conv-4", "conv-6", "resnet-20"])
def test_output_shapes_and_networks_do_not_mix(name):
    stack = models.build(name, [0, 1]).eval()
    x = torch.randn(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shared = stack(x)
        per_net = stack(torch.cat([x, 2 * x]))  # (N, B, ...): network 1 sees its own input
        flat = stack(x.flatten(2))
        alone = models.build(name, [1]).eval()(2 * x)
    assert shared.shape == per_net.shape == (2, 3, 10)
    assert torch.allclose(shared[0], per_net[0], atol=1e-5, rtol=0)
    assert torch.allclose(per_net[1], alone[0], atol=1e-5, rtol=0)
    assert torch.equal(flat, shared)


def test_vgg19_light():
    model = models.build("vgg-19", [0])
    assert n_prunable(model) == COUNTS["vgg-19"]
    kinds = models.kinds(model)
    assert sum(v == "conv" for v in kinds.values()) == 16 and kinds["fc.weight"] == "output"
    assert list(kinds)[-1] == "fc.weight"
    w = model.convs[5].weight[0].detach()  # 256 -> 256: Kaiming normal, std sqrt(2 / fan_in)
    assert float(w.std()) == pytest.approx(math.sqrt(2.0 / (256 * 9)), rel=0.02)
    assert model.convs[0].bias is None
    with torch.no_grad():
        out = model(torch.randn(1, 2, 3, 32, 32))
    assert out.shape == (1, 2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["conv-2", "resnet-20"])
def test_stacked_build_equals_networks_built_alone(name):
    stack = models.build(name, [3, 8]).state_dict()
    a, b = models.build(name, [3]).state_dict(), models.build(name, [8]).state_dict()
    assert set(stack) == set(a)
    for k, v in stack.items():
        assert v.shape[0] == 2, k  # every state entry (buffers too) is per network
        assert torch.equal(v[0:1], a[k]), k
        assert torch.equal(v[1:2], b[k]), k
    first = models.prunable(models.build(name, [0]))[0]
    assert not torch.equal(a[first], b[first])


def test_init_scales_and_zero_biases():
    sd = models.build("conv-2", [0]).state_dict()
    w = sd["convs.1.weight"][0]  # Glorot normal with receptive-field fans, as the paper's Conv nets
    assert float(w.std()) == pytest.approx(math.sqrt(2.0 / (64 * 9 + 64 * 9)), rel=0.02)
    assert all(not sd[k].any() for k in sd if k.endswith("bias"))
    r = models.build("resnet-20", [0]).state_dict()
    w = r["blocks.8.conv2.weight"][0]
    assert float(w.std()) == pytest.approx(math.sqrt(2.0 / (64 * 9)), rel=0.02)
    bn_w = r["blocks.8.bn2.weight"]
    assert ((bn_w >= 0) & (bn_w < 1)).all() and bn_w.std() > 0.1  # open_lth's uniform BatchNorm init
    assert not r["blocks.8.bn2.bias"].any() and not r["bn.running_mean"].any() and (r["bn.running_var"] == 1).all()



def _train_stack_and_alone(name: str, data: TensorData, atol: float) -> None:
    seeds = [0, 1]
    cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, iterations=5, eval_every=5, log_every=0, batch_size=8)
    stack = models.build(name, seeds)
    res = train(stack, masks.ones(stack, models.prunable(stack)), data, cfg, order_seeds=seeds, log=silent)
    stacked = stack.state_dict()
    start = models.build(name, seeds).state_dict()
    for i, s in enumerate(seeds):
        alone = models.build(name, [s])
        r = train(alone, masks.ones(alone, models.prunable(alone)), data, cfg, order_seeds=[s], log=silent)
        for k, v in alone.state_dict().items():
            assert torch.allclose(stacked[k][i : i + 1], v, atol=atol, rtol=0), (s, k)
        assert r.min_val_loss[0] == pytest.approx(res.min_val_loss[i], abs=atol)
    moved = [k for k in models.prunable(stack) if not torch.equal(stacked[k], start[k])]
    assert moved == models.prunable(stack)  # training really changed every layer


def test_stacked_training_equals_one_by_one_conv2():
    _train_stack_and_alone("conv-2", cifar_data(), atol=1e-5)


def test_stacked_training_equals_one_by_one_resnet20(float64):
    # In float32 a BatchNorm ResNet on batches of 8 random images amplifies rounding differences
    # (different kernel blockings for 1 vs 2 networks) to ~1e-4 within 5 SGD steps; in float64
    # the stack and the networks trained alone agree to ~1e-18, which is what this checks.
    _train_stack_and_alone("resnet-20", cifar_data(double=True), atol=1e-10)


@pytest.mark.parametrize("name", ["conv-2", "vgg-19", "resnet-20"])  # conv-4/6: conv-2's layers, deeper
def test_masked_training_keeps_pruned_conv_weights_zero(name):
    model = models.build(name, [0, 1])
    mask = half_mask(model)
    cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, iterations=3, eval_every=3,
                      log_every=0, batch_size=8)
    train(model, mask, cifar_data(), cfg, order_seeds=[0, 1], log=silent)
    params = dict(model.named_parameters())
    convs = [k for k, v in models.kinds(model).items() if v == "conv"]
    assert convs
    for k, m in mask.items():
        w = params[k].detach()
        assert (w[~m] == 0).all(), f"{k}: pruned weights revived"
        assert (w[m] != 0).float().mean() > 0.99, k


# ---------------------------------------------------------------- ResNet-50 (ImageNet) against torchvision


def _torchvision_resnet50(num_classes: int = 1000):
    """torchvision's resnet50 with random weights and random BatchNorm statistics (so eval mode tests them)."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet50(num_classes=num_classes)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return tv


def test_resnet50_equals_torchvision_with_the_same_weights():
    """One network of the stack holding torchvision's weights computes torchvision's function: outputs in train
    mode (batch statistics) and eval mode (running ones), gradients, and the running-statistics update. Same
    module names, so the same state-dict keys; 25,557,032 parameters for 1000 classes."""
    tv = _torchvision_resnet50()
    ours = models.build("resnet-50", [0], 1000, (3, 64, 64))
    theirs = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(ours.state_dict()) == set(theirs)
    assert sum(p[0].numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters()) == 25_557_032
    ours.load_state_dict({k: v.reshape(ours.state_dict()[k].shape) for k, v in theirs.items()})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    out_tv, out = tv(x), ours(x[None])
    assert out.shape == (1, 2, 1000)
    torch.testing.assert_close(out[0], out_tv, rtol=1e-4, atol=1e-4)
    out_tv.square().sum().backward()
    out.square().sum().backward()
    for k in ("conv1.weight", "layer2.0.downsample.0.weight", "layer4.2.bn3.weight", "fc.weight"):
        g_tv, g = dict(tv.named_parameters())[k].grad, dict(ours.named_parameters())[k].grad[0]
        torch.testing.assert_close(g.reshape(g_tv.shape), g_tv, rtol=1e-3, atol=1e-3 * float(g_tv.abs().max()))
    for k in ("bn1.running_mean", "layer3.5.bn2.running_var"):  # one momentum step from the same statistics
        torch.testing.assert_close(ours.state_dict()[k][0], tv.state_dict()[k], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x[None])[0], tv.eval()(x), rtol=1e-4, atol=1e-4)


def test_resnet50_takes_its_sizes_from_the_data_and_is_initialised_like_torchvision():
    small = models.build("resnet-50", [0], 10, (1, 32, 32))  # classes and channels from the data
    assert small.conv1.weight.shape == (1, 64, 1, 7, 7) and small.fc.weight.shape == (1, 10, 2048)
    with torch.no_grad():
        assert small(torch.randn(1, 2, 1, 32, 32)).shape == (1, 2, 10)
        assert small(torch.randn(1, 2, 1, 48, 40)).shape == (1, 2, 10)  # any image size: global average pool
    names, kinds = models.prunable(small), models.kinds(small)
    assert len(names) == 54 and list(kinds.values()) == ["conv"] * 53 + ["output"] and names[-1] == "fc.weight"
    assert "layer1.0.downsample.0.weight" in names and not any("bn" in k or "bias" in k for k in names)
    sd = models.build("resnet-50", [0]).state_dict()  # no sizes given: ImageNet's
    assert sd["fc.weight"].shape == (1, 1000, 2048) and sd["conv1.weight"].shape == (1, 64, 3, 7, 7)
    w = sd["layer3.0.conv2.weight"][0]  # 256 -> 256, 3x3: Kaiming normal fan-out, std sqrt(2 / (256 * 9))
    assert float(w.std()) == pytest.approx(math.sqrt(2.0 / (256 * 9)), rel=0.02)
    w = sd["layer4.0.conv1.weight"][0]  # 1024 -> 512, 1x1: the fan-out (512), not the fan-in (1024)
    assert float(w.std()) == pytest.approx(math.sqrt(2.0 / 512), rel=0.02)
    bn = [k for k in sd if "bn" in k or "downsample.1" in k]
    assert all((sd[k] == 1).all() for k in bn if k.endswith(("weight", "running_var")))
    assert not any(sd[k].any() for k in bn if k.endswith(("bias", "running_mean")))  # no zero-init of bn3
    bound = 1 / math.sqrt(2048)  # nn.Linear's default
    assert sd["fc.weight"].abs().max() <= bound and sd["fc.bias"].abs().max() <= bound and sd["fc.bias"].std() > 0


def test_channels_last_on_cuda_for_conv_stacks_only_and_same_function():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert models.channels_last(models.build("resnet-50", [0], 10, (3, 32, 32)), cuda)
    assert all(models.channels_last(models.REGISTRY[n](1), cuda) for n in CIFAR)
    assert not models.channels_last(models.build("lenet-300-100", [0]), cuda)
    net = models.to_device(models.build("resnet-20", [0, 1]), cpu)  # CPU: unchanged
    assert not net.channels_last and not models.channels_last(net, cpu)
    x = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = []
    net.blocks[0].conv1.register_forward_hook(
        lambda m, args, out: seen.append(out.is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        plain = net(x)
        net.channels_last = True  # what to_device sets on CUDA; the layout works on CPU too
        nhwc = net(x)
    assert seen == [False, True]
    torch.testing.assert_close(nhwc, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resnet50_runs_channels_last_in_bfloat16_on_cuda():
    """What a round does on a GPU (models.to_device, bfloat16 autocast): NHWC activations, the default layout's
    function within bfloat16's precision, and masked SGD steps (CUDA graph) that keep pruned weights zero."""
    from lottery.runtime import configure_runtime
    from lottery.training import autocast

    dev = configure_runtime("cuda", "bfloat16")
    model = models.build("resnet-50", [0], 10, (3, 64, 64))
    plain = copy.deepcopy(model).to(dev).eval()
    models.to_device(model, dev).eval()
    assert model.channels_last and not plain.channels_last
    seen = []
    model.layer3[0].conv2.register_forward_hook(
        lambda m, args, out: seen.append(out.is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(1, 4, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad(), autocast(dev, "bfloat16"):
        nhwc, nchw = model(x).float(), plain(x).float()
    assert seen == [True]
    torch.testing.assert_close(nhwc, nchw, rtol=0.05, atol=0.05 * float(nchw.abs().max()))
    gen, splits = torch.Generator().manual_seed(1), {}
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        splits[f"x_{split}"] = torch.randn(n, 3, 64, 64, generator=gen).to(dev)
        splits[f"y_{split}"] = torch.randint(0, 10, (n,), generator=gen).to(dev)
    data = TensorData(**splits)
    mask = {k: m.to(dev) for k, m in half_mask(model).items()}
    cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, iterations=6, eval_every=3,
                      log_every=0, batch_size=4, precision="bfloat16")
    res = train(model, mask, data, cfg, order_seeds=[0], log=silent)
    params = dict(model.named_parameters())
    assert all((params[k].detach()[~m] == 0).all() for k, m in mask.items())
    assert all(math.isfinite(v) for v in res.min_val_loss)


# ---------------------------------------------------------------- the stacked layers against torch.nn


def test_stacked_conv2d_equals_conv2d_per_network():
    conv = models.StackedConv2d(3, 4, 5, 3, stride=2)
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        conv.init_(i, gen, "glorot")
    with torch.no_grad():
        conv.bias.normal_(generator=gen)
        x = torch.randn(3, 2, 4, 9, 9, generator=gen)
        out = models.from_grouped(conv(models.to_grouped(x, 3, (4, 9, 9))), 3)
        for i in range(3):
            ref = F.conv2d(x[i], conv.weight[i], conv.bias[i], stride=2, padding=1)
            assert torch.allclose(out[i], ref.flatten(1), atol=1e-5, rtol=0)


def test_stacked_batchnorm_equals_batchnorm_per_network():
    n, c = 2, 4
    bn = models.StackedBatchNorm2d(n, c)
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        bn.init_(i, gen)
    refs = []
    for i in range(n):
        r = nn.BatchNorm2d(c)
        with torch.no_grad():
            r.weight.copy_(bn.weight[i])
            r.bias.copy_(bn.bias[i])
        refs.append(r)
    x = torch.randn(n, 6, c, 5, 5, generator=gen) * 3 + 1
    for step in range(2):
        out = models.from_grouped(bn(models.to_grouped(x + step, n, (c, 5, 5))), n)
        for i in range(n):
            assert torch.allclose(out[i], refs[i](x[i] + step).flatten(1), atol=1e-5, rtol=0)
    for i in range(n):
        assert torch.allclose(bn.running_mean[i], refs[i].running_mean, atol=1e-6)
        assert torch.allclose(bn.running_var[i], refs[i].running_var, atol=1e-5)
    bn.eval()
    out = models.from_grouped(bn(models.to_grouped(x, n, (c, 5, 5))), n)
    for i in range(n):
        assert torch.allclose(out[i], refs[i].eval()(x[i]).flatten(1), atol=1e-5, rtol=0)


def test_batchnorm_running_stats_per_network_and_only_in_train_mode():
    model = models.build("resnet-20", [0, 1])
    bns = [m for m in model.modules() if isinstance(m, models.StackedBatchNorm2d)]
    assert len(bns) == 21
    x = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) + 0.5
    model.eval()
    with torch.no_grad():
        model(x)
    assert all(not b.running_mean.any() and (b.running_var == 1).all() for b in bns)
    model.train()
    with torch.no_grad():
        model(x)
    after = copy.deepcopy(model.state_dict())
    for b in bns:
        assert b.running_mean.any()
        assert not torch.equal(b.running_mean[0], b.running_mean[1])  # same input, different networks
        assert not torch.equal(b.running_var[0], b.running_var[1])
    model.eval()
    with torch.no_grad():
        a, b_ = model(x), model(x)
    assert torch.equal(a, b_)
    for k, v in model.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_dropout_variant_is_conv2_with_dropout_in_train_mode_only():
    plain, drop = models.build("conv-2", [0]), models.build("conv-2-dropout", [0])
    sd = drop.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in plain.state_dict().items())
    assert models.prunable(drop) == models.prunable(plain)
    x = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(drop.eval()(x), plain(x), atol=1e-6)
        torch.manual_seed(0)
        assert not torch.allclose(drop.train()(x), plain(x), atol=1e-4)


# ---------------------------------------------------------------- config: model and dataset must fit


def _cfg(model: str, dataset: str) -> dict:
    return {"data": {"dataset": dataset, "validation": 500}, "model": {"name": model},
            "prune": {"rounds": 1, "chain": config.chain(1)}}


def test_config_rejects_a_model_on_the_wrong_dataset():
    with pytest.raises(ConfigError) as e:
        config.from_dict(_cfg("conv-2", "mnist1d"))
    msg = str(e.value)
    assert "model.name" in msg and "mnist1d" in msg and "cifar10" in msg
    with pytest.raises(ConfigError, match="model.name.*cifar10.*mnist, fashion-mnist"):
        config.from_dict(_cfg("lenet-300-100", "cifar10"))
    for model, dataset in [("conv-2", "cifar10"), ("resnet-20", "cifar10"), ("vgg-19", "cifar10"),
                           ("conv-6-dropout", "cifar10"), ("lenet-300-100", "mnist"), ("mlp-mnist1d", "mnist1d")]:
        cfg = config.from_dict(_cfg(model, dataset))
        assert cfg.model.name == model and cfg.data.dataset == dataset


def test_stacked_conv2d_network_by_network_is_each_network_alone_bit_for_bit():
    """`loop`: every network's convolution on its own channels; the output and all gradients equal the plain
    convolution of that network alone exactly (shapes where the grouped convolution sums in another order)."""
    for n, c_in, c_out, stride, hw in [(3, 4, 5, 2, 9), (2, 8, 8, 1, 8), (2, 256, 16, 1, 4)]:
        conv = models.StackedConv2d(n, c_in, c_out, 3, stride=stride)
        gen = torch.Generator().manual_seed(0)
        for i in range(n):
            conv.init_(i, gen, "glorot")
        with torch.no_grad():
            conv.bias.normal_(generator=gen)
        x = torch.randn(4, n * c_in, hw, hw, generator=gen, requires_grad=True)
        conv.loop = True
        out = conv(x)
        g = torch.randn(out.shape, generator=gen)
        dx, dw, db = torch.autograd.grad(out, [x, conv.weight, conv.bias], g)
        for i in range(n):
            xi = x.detach()[:, i * c_in:(i + 1) * c_in].contiguous().requires_grad_()
            w, b = conv.weight.detach()[i].requires_grad_(), conv.bias.detach()[i].requires_grad_()
            ref = F.conv2d(xi, w, b, stride, 1)
            o = slice(i * c_out, (i + 1) * c_out)
            assert torch.equal(out[:, o], ref), (n, c_in, i)
            rx, rw, rb = torch.autograd.grad(ref, [xi, w, b], g[:, o].contiguous())
            assert torch.equal(dx[:, i * c_in:(i + 1) * c_in], rx) and torch.equal(dw[i], rw) and torch.equal(db[i], rb)
        conv.loop = False  # the grouped convolution: the same function up to summation order
        torch.testing.assert_close(conv(x), out, rtol=1e-5, atol=1e-5)


def test_conv_layers_loop_on_cpu_by_a_fixed_rule_of_their_shape():
    """`to_device`: network by network on CPU for stacked conv layers of >= 256 input channels in stacks of
    several networks (Conv-6's last conv), grouped for the others, for one network and on CUDA."""
    cpu = torch.device("cpu")
    six = models.to_device(models.build("conv-6", [0, 1]), cpu)
    assert models.conv_paths(six) == {f"convs.{j}.weight": "loop" if j == 5 else "grouped" for j in range(6)}
    assert set(models.conv_paths(models.to_device(models.build("conv-6", [0]), cpu)).values()) == {"grouped"}
    assert set(models.conv_paths(models.to_device(models.build("resnet-20", [0, 1]), cpu)).values()) == {"grouped"}
    assert models.conv_loop(six.convs[5], cpu) and not models.conv_loop(six.convs[5], torch.device("cuda"))
    x = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the same function as the all-grouped stack
        looped = six(x)
        six.convs[5].loop = False
        torch.testing.assert_close(six(x), looped, rtol=1e-5, atol=1e-5)


def test_a_round_trains_a_conv_stack_on_cpu_one_network_at_a_time():
    """`train.stack: 0` on CPU: a round trains a conv stack network after network (and says so), the same as all
    at once (`train.stack: 4`) up to summation order; fully-connected stacks and CUDA keep the whole stack."""
    from lottery import rounds

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert models.one_at_a_time(models.build("conv-2", [0, 1]), cpu)
    assert not models.one_at_a_time(models.build("conv-2", [0, 1]), cuda)
    assert not models.one_at_a_time(models.build("lenet-300-100", [0, 1]), cpu)
    cfg = config.from_dict({"trials": 2, "controls": ["reinit"], "data": {"dataset": "cifar10"},
                            "model": {"name": "conv-2"},
                            "train": {"iterations": 2, "eval_every": 2, "batch_size": 4, "log_every": 0,
                                      "optimizer": "sgd", "lr": 0.01},  # (Adam's first step is lr * sign(g))
                            "prune": {"rounds": 1, "chain": config.chain(1)}})
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32, generator=gen), torch.randint(0, 10, (24,), generator=gen)
    data = TensorData(x[:16], y[:16], x[16:20], y[16:20], x[20:], y[20:])

    def run(size: int):
        cfg.train.stack = size
        model = models.build("conv-2", [0, 1, 2, 3])
        mask = masks.ones(model, models.prunable(model))
        stack = rounds.Stack(["ticket", "reinit"], 2, ["a", "b", "c", "d"], mask, model, mask, [0, 1, 2, 3],
                             [None] * 4, [10, 11, 10, 11])
        lines = []
        result = rounds.train_groups(cfg, stack, {k: m.clone() for k, m in mask.items()}, data, "r1", log=lines.append)
        return model.state_dict(), result, [line for line in lines if "networks" in line]

    state, result, lines = run(0)
    assert lines == [f"[r1] networks {i}-{i} of 4 (train.stack=0: one at a time, a conv stack on CPU)" for i in range(4)]
    whole, whole_result, whole_lines = run(4)
    assert whole_lines == []
    for k, v in state.items():
        torch.testing.assert_close(v, whole[k], rtol=1e-3, atol=1e-5)
    assert result.early_stop_iteration == whole_result.early_stop_iteration == [2] * 4
