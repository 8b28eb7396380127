"""A small CNN with BatchNorm, written the way you would write any PyTorch model.

    dvc exp run -S model.name=examples.my_network:build

The pipeline calls `build(num_classes=..., input_shape=...)` once per network (under that
network's seed), stacks the copies and prunes every nn.Conv2d and nn.Linear weight
(BatchNorm and biases are never pruned; the last Linear is the output layer, at half the rate).
"""
from torch import nn


def build(num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )
