"""Model registry. Every model is *stacked*: it holds N independent networks that train together.

Each layer keeps a leading network dimension (linear weights (N, out, in), conv weights
(N, out, in, k, k)); inputs have shape (N, B, ...) or (1, B, ...) (shared by all networks),
outputs (N, B, classes). Network i's initial weights depend only on its own seed, so a
stack of N equals N networks built one by one (bit for bit) and trained one by one.

Convolutional models keep their activations in a *grouped* layout (B, N*C, H, W) from the
input to the flatten: every convolution is one grouped convolution (groups=N), BatchNorm,
pooling, ReLU and residual additions act per channel, so network i only ever sees its own
channels [i*C, (i+1)*C). Only the entry (N|1, B, C, H, W) -> (B, N*C, H, W) and the flatten
back to (N, B, features) before the fully-connected layers reshape.

The paper's networks (Frankle & Carbin 2019, Figure 2; open_lth for VGG/ResNet):
  lenet-300-100  fc 300, 100, 10                                         Glorot normal
  conv-2/4/6     3x3 convs (64,64,M[,128,128,M[,256,256,M]]), fc 256, 256, 10  Glorot normal
  vgg-19         3x3 conv + BN + ReLU (cfg VGG19), avg-pool, fc 512->10    Kaiming normal
  resnet-20      CIFAR ResNet (the paper's "ResNet-18"): 16 + 3x3 blocks of 16/32/64,
                 1x1 conv + BN shortcut on shape change, avg-pool, fc 64->10  Kaiming normal
Biases start at zero. BatchNorm weights start U(0, 1), biases at zero (open_lth's default
`batchnorm_init='uniform'`); BatchNorm parameters are never pruned.
`conv-N-dropout` is conv-N with dropout p=0.5 after each hidden fc layer (train mode only).
Dropout draws from torch's global RNG, so dropout variants are not stack == one-by-one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import generic
from .config import MODEL_DATASETS, ConfigError, is_import_path

# model name -> datasets it takes (the table lives in config, which must not import torch)
INPUTS: dict[str, tuple[str, ...]] = dict(MODEL_DATASETS)
CIFAR_SHAPE = (3, 32, 32)
DROPOUT = 0.5  # rate of the `-dropout` variants of Conv-2/4/6


def _normal_(w: torch.Tensor, i: int, gen: torch.Generator, scheme: str) -> None:
    """Network i of a stacked weight (N, out, in, *kernel): Glorot, Kaiming (fan-in) or Kaiming fan-out
    (`kaiming_fan_out`, torchvision's ResNet convolutions) normal."""
    rf = math.prod(w.shape[3:])
    fan_in, fan_out = w.shape[2] * rf, w.shape[1] * rf
    std = {"glorot": math.sqrt(2.0 / (fan_in + fan_out)), "kaiming": math.sqrt(2.0 / fan_in),
           "kaiming_fan_out": math.sqrt(2.0 / fan_out)}[scheme]
    with torch.no_grad():
        w[i].normal_(0.0, std, generator=gen)


class StackedLinear(nn.Module):
    # Set by the step engine while it computes a step's losses with this layer sparse (`lottery.sparse`):
    # the forward is then the sparse one, on the kept values that the engine's optimizer steps.
    sparse = None

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(n, 1, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N|1, B, in) -> (N, B, out)
        if self.sparse is not None:
            return self.sparse(x)
        # Computed as W @ x^T, (N, out, B), and returned as a transposed view: the weight
        # gradient then comes out in the weight's own layout (no transpose copy per step,
        # 1.3x faster on LeNet) and the next layer takes x^T without a copy either.
        n, d_out, d_in = self.weight.shape
        if x.shape[0] != n:  # one input for all networks (evaluation): a single GEMM, bias included
            out = torch.addmm(self.bias.reshape(n * d_out, 1), self.weight.reshape(n * d_out, d_in), x[0].t())
            return out.view(n, d_out, -1).transpose(1, 2)
        return torch.baddbmm(self.bias.transpose(1, 2), self.weight, x.transpose(1, 2)).transpose(1, 2)

    def glorot_(self, i: int, gen: torch.Generator) -> None:
        """Glorot (Xavier) normal init of network i, as in the paper; biases start at zero."""
        self.init_(i, gen, "glorot")

    def init_(self, i: int, gen: torch.Generator, scheme: str) -> None:
        """`scheme` glorot or kaiming (normal, bias zero), or torch: nn.Linear's default (torchvision's fc),
        weight and bias U(-1/sqrt(in), 1/sqrt(in))."""
        with torch.no_grad():
            if scheme == "torch":
                bound = 1.0 / math.sqrt(self.weight.shape[2])
                self.weight[i].uniform_(-bound, bound, generator=gen)
                self.bias[i].uniform_(-bound, bound, generator=gen)
                return
            _normal_(self.weight, i, gen, scheme)
            self.bias[i].zero_()


class StackedConv2d(nn.Module):
    """N independent k x k convolutions as one grouped convolution: (B, N*in, H, W) -> (B, N*out, H', W').

    With `loop` set (`to_device` sets it by `conv_loop`), network by network instead: each network's convolution
    on its own channels, made contiguous, then concatenated; bit for bit what the network computes alone, in the
    output and in every gradient (tested), while the grouped convolution may sum in another order."""

    loop = False

    def __init__(self, n: int, c_in: int, c_out: int, k: int, stride: int = 1, padding: int | None = None,
                 bias: bool = True):
        super().__init__()
        self.stride, self.padding = stride, (k // 2 if padding is None else padding)
        self.weight = nn.Parameter(torch.empty(n, c_out, c_in, k, k))
        if bias:
            self.bias = nn.Parameter(torch.zeros(n, c_out))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c_out, c_in, k, _ = self.weight.shape
        if self.loop:
            return torch.cat([F.conv2d(xi.contiguous(), self.weight[i], None if self.bias is None else self.bias[i],
                                       self.stride, self.padding) for i, xi in enumerate(x.split(c_in, 1))], 1)
        w = self.weight.view(n * c_out, c_in, k, k)
        b = None if self.bias is None else self.bias.view(-1)
        return F.conv2d(x, w, b, self.stride, self.padding, groups=n)

    def init_(self, i: int, gen: torch.Generator, scheme: str) -> None:
        _normal_(self.weight, i, gen, scheme)
        if self.bias is not None:
            with torch.no_grad():
                self.bias[i].zero_()


class StackedBatchNorm2d(nn.Module):
    """N independent BatchNorm2d on the grouped layout; train() uses batch statistics, eval() running ones.

    The running statistics are (N, C) buffers; F.batch_norm updates their flat views in place.
    (No `num_batches_tracked`: with a fixed momentum it is unused, and every state entry is per network.)
    """

    def __init__(self, n: int, c: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(n, c))
        self.bias = nn.Parameter(torch.zeros(n, c))
        self.register_buffer("running_mean", torch.zeros(n, c))
        self.register_buffer("running_var", torch.ones(n, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N*C, H, W)
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.view(-1),
                            self.bias.view(-1), self.training, self.momentum, self.eps)

    def init_(self, i: int, gen: torch.Generator, uniform: bool = True) -> None:
        """Weight U(0, 1) (open_lth) or 1 (`uniform=False`, torchvision), bias 0, fresh running statistics."""
        with torch.no_grad():
            if uniform:
                self.weight[i].uniform_(0.0, 1.0, generator=gen)
            else:
                self.weight[i].fill_(1.0)
            self.bias[i].zero_()
            self.running_mean[i].zero_()
            self.running_var[i].fill_(1.0)


def to_grouped(x: torch.Tensor, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(N|1, B, C, H, W) (or flattened (N|1, B, C*H*W)) -> (B, N*C, H, W); a shared input is expanded."""
    x = x.reshape(*x.shape[:2], *shape)
    if x.shape[0] != n:
        x = x.expand(n, *x.shape[1:])
    return x.transpose(0, 1).reshape(x.shape[1], n * shape[0], *shape[1:])


def from_grouped(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N*C, ...) -> (N, B, C*...): per network, features flattened in (C, H, W) order."""
    return x.reshape(x.shape[0], n, -1).transpose(0, 1)


class ConvStack(nn.Module):
    """Base of the convolutional stacks: `grouped` is their entry into the grouped layout, channels-last
    when `channels_last` is set (`to_device` sets it on CUDA: NHWC activations feed cuDNN's tensor-core
    kernels without a transpose; the result is the same up to floating-point order)."""

    n: int
    shape: tuple[int, ...]
    channels_last: bool = False

    def grouped(self, x: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        x = to_grouped(x, self.n, shape or self.shape)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether `model` runs channels-last on `device`: a convolutional stack on CUDA; everything else keeps
    the default layout (on CPU it brings nothing to these stacks)."""
    return device.type == "cuda" and isinstance(model, ConvStack)


# On CPU, a stacked conv layer with at least this many input channels runs network by network (`conv_loop`).
LOOP_MIN_CHANNELS = 256


def conv_loop(layer: StackedConv2d, device: torch.device) -> bool:
    """Whether `layer` runs network by network (`StackedConv2d.loop`) on `device`: on CPU, in a stack of several
    networks, for at least LOOP_MIN_CHANNELS input channels (VGG-19's deep layers, Conv-6's last), where one
    convolution per network was faster than the grouped one in `benchmarks/presets.py`; grouped otherwise, and
    always on CUDA. A fixed rule of the device and the layer's shape, never a timing: a round's results do not
    depend on how busy the machine was."""
    n, _, c_in, _, _ = layer.weight.shape
    return device.type == "cpu" and n > 1 and c_in >= LOOP_MIN_CHANNELS


def one_at_a_time(model: nn.Module, device: torch.device) -> bool:
    """Whether a round with `train.stack: 0` trains `model`'s networks one after another instead of all at once
    (`lottery.rounds.train_groups`): a convolutional stack on CPU, where 6 stacked networks cost 6.1 to 9x one
    network in `benchmarks/presets.py` (the 6-fold working set of the element-wise operations, whichever
    convolution path), so that one after another is never slower than a loop; all at once on CUDA and for
    fully-connected and generic stacks. A fixed rule of the device and the model, never a timing."""
    return device.type == "cpu" and isinstance(model, ConvStack)


def conv_paths(model: nn.Module) -> dict[str, str]:
    """Each stacked conv weight's path as set: 'loop' (network by network) or 'grouped'."""
    return {f"{name}.weight": "loop" if m.loop else "grouped" for name, m in model.named_modules()
            if isinstance(m, StackedConv2d)}


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a stack to the device it trains on, in the memory format it runs best there (`channels_last`),
    with each stacked conv layer on its path there (`conv_loop`).

    Only the activations change layout: the stacked 5-d conv weights keep theirs (cuDNN takes their
    4-d views as they are), so checkpoints, masks and the optimizer state are the same on every device."""
    model.to(device)
    if isinstance(model, ConvStack):
        model.channels_last = channels_last(model, device)
    for m in model.modules():
        if isinstance(m, StackedConv2d):
            m.loop = conv_loop(m, device)
    return model


def _init(model: nn.Module, i: int, seed: int, scheme: str) -> None:
    """Network i from its own generator, layer by layer in registration (= forward) order."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (StackedLinear, StackedConv2d)):
            m.init_(i, gen, scheme)
        elif isinstance(m, StackedBatchNorm2d):
            m.init_(i, gen)


class MLP(nn.Module):
    """Fully-connected ReLU network; the last layer is the output layer."""

    def __init__(self, n: int, sizes: list[int]):
        super().__init__()
        self.layers = _fc_stack(n, sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fc_forward(self.layers, x.flatten(2))

    def init_(self, i: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for layer in self.layers:
            layer.glorot_(i, gen)


def _fc_stack(n: int, sizes: list[int]) -> nn.ModuleList:
    return nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(sizes[:-1], sizes[1:]))


def _fc_forward(layers: nn.ModuleList, x: torch.Tensor, dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """ReLU (and dropout, if any) after every layer but the output layer."""
    for j, layer in enumerate(layers):
        x = layer(x)
        if j < len(layers) - 1:
            x = torch.relu(x)
            if dropout:
                x = F.dropout(x, dropout, training)
    return x


def _conv_plan(x: torch.Tensor, plan: list, block) -> torch.Tensor:
    """Run a VGG-style plan: 'M' = 2x2 max-pool, a number = the next conv block, `block(j, x)`."""
    j = 0
    for spec in plan:
        if spec == "M":
            x = F.max_pool2d(x, 2)
        else:
            x = block(j, x)
            j += 1
    return x


class ConvNet(ConvStack):
    """Conv-2/4/6: 3x3 convs (padding 1) + ReLU, 'M' = 2x2 max-pool, then ReLU fc layers and the output layer."""

    def __init__(self, n: int, plan: list, fc: list[int], dropout: float = 0.0, shape=CIFAR_SHAPE):
        super().__init__()
        self.n, self.plan, self.shape, self.dropout = n, list(plan), tuple(shape), dropout
        convs, c, hw = [], shape[0], shape[1]
        for spec in plan:
            if spec == "M":
                hw //= 2
            else:
                convs.append(StackedConv2d(n, c, spec, 3, padding=1))
                c = spec
        self.convs = nn.ModuleList(convs)
        self.fcs = _fc_stack(n, [c * hw * hw, *fc])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _conv_plan(self.grouped(x), self.plan, lambda j, x: torch.relu(self.convs[j](x)))
        return _fc_forward(self.fcs, from_grouped(x, self.n), self.dropout, self.training)

    def init_(self, i: int, seed: int) -> None:
        _init(self, i, seed, "glorot")


class VGG(ConvStack):
    """CIFAR VGG (open_lth cifar_vgg): 3x3 conv (no bias) + BN + ReLU, 'M' = 2x2 max-pool, average pool, fc."""

    def __init__(self, n: int, plan: list, outputs: int = 10, shape=CIFAR_SHAPE):
        super().__init__()
        self.n, self.plan, self.shape = n, list(plan), tuple(shape)
        convs, bns, c = [], [], shape[0]
        for spec in plan:
            if spec != "M":
                convs.append(StackedConv2d(n, c, spec, 3, padding=1, bias=False))
                bns.append(StackedBatchNorm2d(n, spec))
                c = spec
        self.convs, self.bns = nn.ModuleList(convs), nn.ModuleList(bns)
        self.fc = StackedLinear(n, c, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _conv_plan(self.grouped(x), self.plan, lambda j, x: torch.relu(self.bns[j](self.convs[j](x))))
        x = x.mean((2, 3))  # the final 2x2 -> 1x1 average pool (open_lth: AvgPool2d(2))
        return self.fc(from_grouped(x, self.n))

    def init_(self, i: int, seed: int) -> None:
        _init(self, i, seed, "kaiming")


class Block(nn.Module):
    """A basic residual block: conv-BN-ReLU-conv-BN plus the shortcut (1x1 conv + BN on a shape change), ReLU."""

    def __init__(self, n: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = StackedConv2d(n, c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = StackedBatchNorm2d(n, c_out)
        self.conv2 = StackedConv2d(n, c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = StackedBatchNorm2d(n, c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = StackedConv2d(n, c_in, c_out, 1, stride, 0, bias=False)
            self.shortcut_bn = StackedBatchNorm2d(n, c_out)
        else:
            self.shortcut = self.shortcut_bn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        return torch.relu(out + short)


class ResNet(ConvStack):
    """CIFAR ResNet (He et al. 2016; open_lth cifar_resnet): conv3x3 + BN + ReLU, stages of basic blocks
    (stride 2 at the first block of every stage but the first), global average pool, fc."""

    def __init__(self, n: int, plan: list[tuple[int, int]], outputs: int = 10, shape=CIFAR_SHAPE):
        super().__init__()
        self.n, self.shape = n, tuple(shape)
        c = plan[0][0]
        self.conv = StackedConv2d(n, shape[0], c, 3, 1, 1, bias=False)
        self.bn = StackedBatchNorm2d(n, c)
        blocks = []
        for s, (width, depth) in enumerate(plan):
            for b in range(depth):
                blocks.append(Block(n, c, width, 2 if s > 0 and b == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = StackedLinear(n, c, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(self.grouped(x))))
        x = self.blocks(x).mean((2, 3))
        return self.fc(from_grouped(x, self.n))

    def init_(self, i: int, seed: int) -> None:
        _init(self, i, seed, "kaiming")


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride on the 3x3 conv): 1x1 conv to `width`, 3x3 conv, 1x1
    conv to 4 x `width`, each with BN (ReLU after the first two), plus the shortcut (1x1 conv + BN, `downsample`,
    on a shape change), ReLU. Module names are torchvision's, so are the state-dict keys."""

    expansion = 4

    def __init__(self, n: int, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = StackedConv2d(n, c_in, width, 1, 1, 0, bias=False)
        self.bn1 = StackedBatchNorm2d(n, width)
        self.conv2 = StackedConv2d(n, width, width, 3, stride, 1, bias=False)
        self.bn2 = StackedBatchNorm2d(n, width)
        self.conv3 = StackedConv2d(n, width, c_out, 1, 1, 0, bias=False)
        self.bn3 = StackedBatchNorm2d(n, c_out)
        self.downsample = (nn.Sequential(StackedConv2d(n, c_in, c_out, 1, stride, 0, bias=False),
                                         StackedBatchNorm2d(n, c_out)) if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ImageNetResNet(ConvStack):
    """ImageNet ResNet (He et al. 2016; torchvision's resnet50 = ResNet v1.5, open_lth imagenet_resnet_50):
    7x7/2 conv + BN + ReLU, 3x3/2 max-pool, four stages of bottleneck blocks of widths 64/128/256/512 (x4),
    stride 2 at the first block of every stage but the first, global average pool, fc to the classes.

    The input's channels come from `shape` (the data's example shape); its height and width from the batch
    (any size: the average pool makes the fc independent of it; 224 for ImageNet, 32 or 64 in tests).
    Init as torchvision's: convs Kaiming normal fan-out, BN weight 1 and bias 0, the fc nn.Linear's default.
    (open_lth's imagenet_resnet_50 re-initialises over its torchvision constructor: Kaiming normal fan-in for
    convs and the fc weight, BN weights U(0, 1), as this module's CIFAR networks do.) The last BN of each block
    is not zero-initialised: neither torchvision's default (zero_init_residual=False) nor open_lth does it;
    Goyal et al. need it for batches of 8K, the preset trains at 1024 with a 5-epoch warm-up.
    """

    def __init__(self, n: int, layers: list[int], num_classes: int = 1000, shape=(3, 224, 224)):
        super().__init__()
        self.n, self.shape = n, tuple(shape)
        self.conv1 = StackedConv2d(n, shape[0], 64, 7, 2, 3, bias=False)
        self.bn1 = StackedBatchNorm2d(n, 64)
        c = 64
        for s, depth in enumerate(layers):
            width = 64 * 2**s
            blocks = []
            for b in range(depth):
                blocks.append(Bottleneck(n, c, width, 2 if s > 0 and b == 0 else 1))
                c = width * Bottleneck.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.stages = len(layers)
        self.fc = StackedLinear(n, c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N|1, B, C, H, W)
        x = torch.relu(self.bn1(self.conv1(self.grouped(x, tuple(x.shape[2:]) if x.dim() == 5 else None))))
        x = F.max_pool2d(x, 3, 2, 1)
        for s in range(self.stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(from_grouped(x.mean((2, 3)), self.n))

    def init_(self, i: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, StackedConv2d):
                m.init_(i, gen, "kaiming_fan_out")
            elif isinstance(m, StackedBatchNorm2d):
                m.init_(i, gen, uniform=False)
            elif isinstance(m, StackedLinear):
                m.init_(i, gen, "torch")


CONV_PLANS = {
    "conv-2": [64, 64, "M"],
    "conv-4": [64, 64, "M", 128, 128, "M"],
    "conv-6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}
VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]

REGISTRY = {
    "lenet-300-100": lambda n: MLP(n, [784, 300, 100, 10]),
    "mlp-mnist1d": lambda n: MLP(n, [40, 100, 100, 10]),
    **{name: (lambda n, p=plan: ConvNet(n, p, [256, 256, 10])) for name, plan in CONV_PLANS.items()},
    **{f"{name}-dropout": (lambda n, p=plan: ConvNet(n, p, [256, 256, 10], dropout=DROPOUT))
       for name, plan in CONV_PLANS.items()},
    "vgg-19": lambda n: VGG(n, VGG19),
    "resnet-20": lambda n: ResNet(n, [(16, 3), (32, 3), (64, 3)]),
    "resnet-50": lambda n, num_classes=1000, shape=(3, 224, 224): ImageNetResNet(n, [3, 4, 6, 3], num_classes, shape),
}
SIZED = ("resnet-50",)  # registry networks sized by the data (classes, input channels); the others are fixed


def build(name: str, seeds: list[int], num_classes: int | None = None,
          input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A stack of len(seeds) networks, network i initialised from seeds[i].

    A registry name builds the hand-stacked network: its input and output sizes are fixed, except those of
    `SIZED` (resnet-50), built for `num_classes` and `input_shape` (default ImageNet's: 1000, (3, 224, 224)).
    An import path 'package.module:factory' stacks the factory's module (`lottery.generic`), which is offered
    `num_classes` (default 10) and `input_shape` (one example's shape, e.g. (1, 28, 28)).
    """
    if is_import_path(name):
        return generic.build(generic.load_factory(name), seeds, 10 if num_classes is None else num_classes,
                             tuple(input_shape or ()))
    sizes = {k: v for k, v in (("num_classes", num_classes), ("shape", input_shape)) if v is not None}
    model = REGISTRY[name](len(seeds), **(sizes if name in SIZED else {}))
    for i, s in enumerate(seeds):
        model.init_(i, s)
    return model


def prunable(model: nn.Module, layers: list[str] | None = None, ignore: list[str] | None = None) -> list[str]:
    """Names of the prunable weights (conv and linear) in forward order; biases and BatchNorm never are.

    Your own network (a GenericStack): `layers` / `ignore` (prune.layers / prune.ignore, glob
    patterns) choose otherwise (`lottery.generic.prunable`); config allows them for no other network.
    """
    if isinstance(model, generic.GenericStack):
        try:
            return generic.prunable(model, layers or None, ignore)
        except ConfigError as e:  # name the network too: the user's factory
            raise ConfigError(f"model.name: {model.source!r}: {e}") from None
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (StackedLinear, StackedConv2d))]


def kinds(model: nn.Module, layers: list[str] | None = None, ignore: list[str] | None = None) -> dict[str, str]:
    """Each prunable weight's kind: 'conv', 'fc', or 'output' (the last linear layer)."""
    if isinstance(model, generic.GenericStack):
        return generic.kinds(model, layers or None, ignore)
    convs = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, StackedConv2d)}
    names = prunable(model)
    return {k: "conv" if k in convs else ("output" if k == names[-1] else "fc") for k in names}


def n_networks(model: nn.Module) -> int:
    """Networks in a stack: the leading dimension of every parameter."""
    return next(model.parameters()).shape[0]
