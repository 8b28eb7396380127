"""Compute accounting (lottery.flops): exact multiply-adds of kept weights, and what each variant cost to reach."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from lottery import flops, generic, models


def _mask_keeping(model: nn.Module, counts: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A mask keeping exactly counts[name][i] weights (the first ones, flattened) of network i's layer `name`."""
    params = dict(model.named_parameters())
    out = {}
    for name, per_net in counts.items():
        m = torch.zeros(params[name].shape, dtype=torch.bool)
        for i, c in enumerate(per_net):
            m[i].view(-1)[:c] = True
        out[name] = m
    return out


def test_lenet_dense_and_masked_multiply_adds():
    model = models.build("lenet-300-100", [0, 1, 2])
    assert flops.forward_macs(model, {}, flops.positions(model, (1, 28, 28))) == [784 * 300 + 300 * 100 + 100 * 10] * 3
    # known kept counts per network; the output layer unmasked counts fully (1000)
    mask = _mask_keeping(model, {"layers.0.weight": [1000, 50, 0], "layers.1.weight": [7, 30000, 123]})
    assert flops.forward_macs(model, mask, flops.positions(model, (1, 28, 28))) == \
        [1000 + 7 + 1000, 50 + 30000 + 1000, 0 + 123 + 1000]
    assert flops.train_flops(266200, 60, 3000) == 3 * 266200 * 60 * 3000


def test_convolutions_count_each_kept_weight_at_each_output_position():
    # conv-2 on 32x32x3: two 3x3 convs (padding 1: 32x32 outputs), a 2x2 max-pool, fc 16384-256-256-10
    model = models.build("conv-2", [0, 1])
    assert flops.positions(model, (3, 32, 32)) == {"convs.0.weight": 1024, "convs.1.weight": 1024, "fcs.0.weight": 1,
                                                   "fcs.1.weight": 1, "fcs.2.weight": 1}
    dense = 64 * 3 * 9 * 32 * 32 + 64 * 64 * 9 * 32 * 32 + 64 * 16 * 16 * 256 + 256 * 256 + 256 * 10
    assert flops.forward_macs(model, {}, flops.positions(model, (3, 32, 32))) == [dense, dense]
    mask = _mask_keeping(model, {"convs.1.weight": [100, 36864]})
    assert flops.forward_macs(model, mask, flops.positions(model, (3, 32, 32))) == [dense - (36864 - 100) * 1024, dense]
    # ResNet-20's strided convolutions and 1x1 shortcuts: 16x16 and 8x8 maps after each stage's first block
    pos = flops.positions(models.build("resnet-20", [0]), (3, 32, 32))
    assert pos["conv.weight"] == 1024 and pos["blocks.3.conv1.weight"] == 256 and pos["blocks.3.shortcut.weight"] == 256
    assert pos["blocks.8.conv2.weight"] == 64 and pos["fc.weight"] == 1


def _own(num_classes: int = 10, input_shape=(1, 28, 28)) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.ConvTranspose2d(4, 2, 2, stride=2), nn.Flatten(), nn.Linear(2 * 28 * 28, num_classes))


def test_your_own_network_is_measured_by_its_layers_output_shapes():
    stack = generic.build(_own, [0, 1], 10, (1, 28, 28))
    stack.train()
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    # stride 2: a 14x14 map; the transposed conv uses each weight at each of its 14x14 *input* positions
    assert flops.positions(stack, (1, 28, 28)) == {"0.weight": 196, "3.weight": 196, "5.weight": 1}
    conv, up, fc = 4 * 1 * 9 * 196, 4 * 2 * 2 * 2 * 196, 2 * 784 * 10
    mask = _mask_keeping(stack, {"0.weight": [36, 5]})  # "3.weight" and "5.weight" unmasked: counted fully
    assert flops.forward_macs(stack, mask, flops.positions(stack, (1, 28, 28))) == [conv + up + fc, 5 * 196 + up + fc]
    assert stack.training and all(torch.equal(v, before[k]) for k, v in stack.state_dict().items())  # untouched
    # a plain MLP runs without vmap (no module call): its layers are measured all the same
    mlp = generic.build(lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10)),
                        [0, 1], 10, (1, 28, 28))
    assert mlp.fast and flops.forward_macs(mlp, {}, flops.positions(mlp, (1, 28, 28))) == [784 * 300 + 300 * 10] * 2


def _costs(prev: dict[str, str], at: str = "trained", rewind: str = "init", k: int = 0, pooled: bool = False,
           dense_flops: int = 0) -> dict:
    variants = ["ticket", "reinit", "random"]
    return {name: {"sources": flops.sources(int(name[1:]), p, at, rewind, pooled, ["ticket"] if name == "r0" else variants),
                   "init": {"iterations": k, "train_flops": dense_flops * k}}
            for name, p in {"r0": "init", **prev}.items()}


def _rows(rounds: int, iterations: int = 10) -> pd.DataFrame:
    """Two trials; network (round k, variant, trial t) trains `iterations` for FLOPs 1000^k x (1, 2, 3 by variant)
    + t: every total identifies the trainings it sums."""
    rows = [{"round": f"r{k}", "variant": v, "trial": t, "iterations": iterations,
             "train_flops": 1000 ** k * (1 + i) + t}
            for k in range(rounds + 1) for i, v in enumerate(["ticket", "reinit", "random"] if k else ["ticket"])
            for t in range(2)]
    return pd.DataFrame(rows)


def _total(df: pd.DataFrame, costs: dict, what: str = "cumulative_flops") -> dict:
    out = pd.concat([df, flops.cumulative(df, costs)], axis=1)
    return {(r["round"], r["variant"], r["trial"]): r[what] for _, r in out.iterrows()}


def test_cumulative_flops_along_each_variants_chain():
    df = _rows(3)
    it = _total(df, _costs({"r1": "r0", "r2": "r1", "r3": "r2"}))  # iterative, θ0
    # ticket r3: the tickets of r0..r3; reinit: the search (r0..r2) and its own; random: its own alone
    assert it[("r3", "ticket", 1)] == (1 + 1) + (1000 + 1) + (1000 ** 2 + 1) + (1000 ** 3 + 1)
    assert it[("r3", "reinit", 0)] == 1 + 1000 + 1000 ** 2 + 2 * 1000 ** 3
    assert it[("r3", "random", 1)] == 3 * 1000 ** 3 + 1
    assert it[("r0", "ticket", 0)] == 1
    assert _total(df, _costs({"r1": "r0", "r2": "r1", "r3": "r2"}), "cumulative_iterations")[("r3", "ticket", 0)] == 40
    one = _total(df, _costs({"r1": "r0", "r2": "r0", "r3": "r0"}))  # one-shot: r0, then straight to r3
    assert one[("r3", "ticket", 0)] == 1 + 1000 ** 3 and one[("r3", "reinit", 0)] == 1 + 2 * 1000 ** 3
    at_init = _total(df, _costs({"r1": "r0", "r2": "r1", "r3": "r2"}, at="init"))  # no search training
    assert at_init[("r3", "ticket", 0)] == 1000 ** 3 and at_init[("r3", "reinit", 0)] == 2 * 1000 ** 3
    # rewinding to iteration k = 5: θk's 5 dense iterations (7 FLOPs each) counted once in what needs θk
    theta_k = _costs({"r1": "r0", "r2": "r1"}, k=5, dense_flops=7)
    two = _rows(2)
    k = _total(two, theta_k)
    assert k[("r0", "ticket", 0)] == 35 + 1 and k[("r2", "ticket", 0)] == 35 + 1 + 1000 + 1000 ** 2
    assert k[("r2", "reinit", 0)] == 35 + 1 + 1000 + 2 * 1000 ** 2  # its mask needed θk's training too
    assert k[("r2", "random", 0)] == 35 + 3 * 1000 ** 2  # it starts from θk
    assert _total(two, theta_k, "cumulative_iterations")[("r2", "ticket", 0)] == 5 + 3 * 10
    at_init_k = _total(two, _costs({"r1": "r0", "r2": "r1"}, at="init", k=5, dense_flops=7))
    assert at_init_k[("r2", "ticket", 0)] == 35 + 1000 ** 2 and at_init_k[("r2", "reinit", 0)] == 35 + 2 * 1000 ** 2
    # lr rewinding / fine-tuning: every network but reinit starts from the previous round's trained ticket
    lr = _total(two, _costs({"r1": "r0", "r2": "r1"}, rewind="lr"))
    assert lr[("r2", "random", 0)] == 1 + 1000 + 3 * 1000 ** 2
    # global pruning: the random control's per-layer counts come from the search
    assert _total(two, _costs({"r1": "r0", "r2": "r1"}, pooled=True))[("r2", "random", 0)] == 1 + 1000 + 3 * 1000 ** 2


def test_rounds_without_a_compute_record_give_no_total():
    df = _rows(1)
    costs = _costs({"r1": "r0"})
    costs["r0"] = None  # a metrics.json written before compute accounting
    total = flops.cumulative(df, costs)["cumulative_flops"]  # what needs r0 has no total; random needs only its own
    assert total.isna().tolist() == [True] * 6 + [False] * 2 and total.tolist()[6:] == [3000, 3001]
    df.loc[df["round"] == "r0", "train_flops"] = math.nan  # a network without its record: what needs it has none
    total = flops.cumulative(df, _costs({"r1": "r0"}))["cumulative_flops"]
    assert total.isna().tolist() == [True] * 6 + [False] * 2 and total.tolist()[6:] == [3000, 3001]  # random: its own


@pytest.mark.parametrize("args, expect", [
    ((0, "init", "trained", "init", False, ["ticket"]), {"mask": None, "start": "init", "needs": {"ticket": ["mask", "start"]}}),
    ((3, "r2", "trained", "iteration", False, ["ticket", "reinit", "random"]),
     {"mask": "r2", "start": "init", "needs": {"ticket": ["mask", "start"], "reinit": ["mask"], "random": ["start"]}}),
    ((3, "r0", "init", "finetune", True, ["random", "invert", "copy"]),
     {"mask": "init", "start": "r0", "needs": {"random": ["mask", "start"], "invert": ["mask", "start"],
                                               "copy": ["mask", "start"]}}),
    ((2, "r1", "trained", "init", False, ["rigl", "set"]),  # a fresh init at the plan's counts: their own training
     {"mask": "r1", "start": "init", "needs": {"rigl": [], "set": []}}),
    ((2, "r1", "trained", "lr", True, ["rigl", "set"]),  # global: the counts of the layers ranked together
     {"mask": "r1", "start": "r1", "needs": {"rigl": ["mask"], "set": ["mask"]}}),
])
def test_sources_of_a_round(args, expect):
    assert flops.sources(*args) == expect
