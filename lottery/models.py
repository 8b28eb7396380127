"""Model registry. Every model is *stacked*: it holds N independent networks that train together.

Each layer keeps a leading network dimension (weights of shape (N, out, in)); inputs have
shape (N, B, ...) or (1, B, ...) (shared by all networks). Network i's initial weights
depend only on its own seed, so a stack of N equals N networks built one by one.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class StackedLinear(nn.Module):
    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(n, 1, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N|1, B, in) -> (N, B, out)
        if x.shape[0] != self.weight.shape[0]:
            return torch.matmul(x, self.weight.transpose(1, 2)) + self.bias
        return torch.baddbmm(self.bias, x, self.weight.transpose(1, 2))

    def glorot_(self, i: int, gen: torch.Generator) -> None:
        """Glorot (Xavier) normal init of network i, as in the paper; biases start at zero."""
        d_out, d_in = self.weight.shape[1:]
        with torch.no_grad():
            self.weight[i].normal_(0.0, math.sqrt(2.0 / (d_in + d_out)), generator=gen)
            self.bias[i].zero_()


class MLP(nn.Module):
    """Fully-connected ReLU network; the last layer is the output layer."""

    def __init__(self, n: int, sizes: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2)
        for j, layer in enumerate(self.layers):
            x = layer(x)
            if j < len(self.layers) - 1:
                x = torch.relu(x)
        return x

    def init_(self, i: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for layer in self.layers:
            layer.glorot_(i, gen)


REGISTRY = {
    "lenet-300-100": lambda n: MLP(n, [784, 300, 100, 10]),
    "mlp-mnist1d": lambda n: MLP(n, [40, 100, 100, 10]),
}


def build(name: str, seeds: list[int]) -> nn.Module:
    """A stack of len(seeds) networks, network i initialised from seeds[i]."""
    model = REGISTRY[name](len(seeds))
    for i, s in enumerate(seeds):
        model.init_(i, s)
    return model


def prunable(model: nn.Module) -> list[str]:
    """Names of the prunable weights in forward order (biases are never pruned)."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, StackedLinear)]


def output_layer(model: nn.Module) -> str:
    return prunable(model)[-1]


def n_networks(model: nn.Module) -> int:
    return next(model.parameters()).shape[0]
