"""Dynamic sparse training (lottery.dst): RigL and SET updates against the papers' rules written here, the step
engine's mask change (lottery.step.Step.set_mask), layer densities, params, and one round through DVC."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from lottery import artifacts, config, dst, masks, models
from lottery.config import DSTConfig, TrainConfig
from lottery.rounds import derived_seed
from lottery.step import Step

N_IN, HIDDEN, OUT = 6, 5, 3


class Tiny(nn.Module):
    """Two stacked linear layers, N networks: 6 -> 5 -> 3."""

    def __init__(self, n: int, seed: int = 0):
        super().__init__()
        self.a, self.b = models.StackedLinear(n, N_IN, HIDDEN), models.StackedLinear(n, HIDDEN, OUT)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in (self.a.weight, self.b.weight):
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 8, N_IN, generator=gen)
    x[..., -1] = 50.0  # the last input is large: its weights' gradients are the largest of the first layer
    return x, torch.randint(0, OUT, (3, 8), generator=gen)


def setup(optimizer: str = "adam", fast: bool = True, sparse: str = "auto"):
    """3 networks (rigl, set, an untouched control), the first layer's last input column pruned in every network."""
    model = Tiny(3)
    gen = torch.Generator().manual_seed(2)
    mask = {"a.weight": torch.rand(3, HIDDEN, N_IN, generator=gen) < 0.6, "b.weight": torch.rand(3, OUT, HIDDEN, generator=gen) < 0.6}
    mask["a.weight"][:, :, -1] = False
    x, y = batch()

    def losses(idx):
        return nn.functional.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(1)

    cfg = TrainConfig(optimizer=optimizer, lr=0.01, momentum=0.9 if optimizer == "sgd" else 0.0, sparse=sparse)
    return model, Step(model, mask, cfg, losses, fast=fast), x, y


def dense_gradient(model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    """The gradient of every network's loss at its current weights, no mask anywhere (an independent copy)."""
    twin = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(twin(x).transpose(1, 2), y, reduction="none").mean(1).sum()
    loss.backward()
    return {k: p.grad.clone() for k, p in twin.named_parameters() if k.endswith("weight")}


def paper_rule(w: torch.Tensor, keep: torch.Tensor, fraction: float, score: torch.Tensor) -> tuple[set, set]:
    """RigL's Algorithm 1 on one layer of one network, in plain Python: (dropped, grown) flat positions. Drop the
    floor(fraction·kept) kept weights of smallest |w|; grow as many of largest score among the positions not kept
    after the drop; ties: the lower index first."""
    w, keep, score = w.flatten().tolist(), keep.flatten().tolist(), score.flatten().tolist()
    kept = [i for i, k in enumerate(keep) if k]
    n = math.floor(fraction * len(kept))
    dropped = sorted(kept, key=lambda i: (abs(w[i]), i))[:n]
    candidates = [i for i in range(len(w)) if not keep[i] or i in dropped]
    grown = sorted(candidates, key=lambda i: (-abs(score[i]), i))[:n]
    return set(dropped), set(grown)


@pytest.mark.parametrize("optimizer,fast", [("adam", True), ("adam", False), ("sgd", True)])
def test_one_update_is_the_papers_rule_on_the_dense_gradient(optimizer, fast):
    model, step, x, y = setup(optimizer, fast)
    cfg, iterations, it = DSTConfig(update_every=100, fraction=0.3, stop_at=0.75), 1000, 200
    idx = torch.arange(8)
    step(idx)
    grads = dense_gradient(model, x, y)  # the gradient of the next step, at the weights it starts from, no mask
    step(idx)  # Adam's state exists; on the fast CPU path it now holds pruned weights at zero (+inf)
    before_w = {k: p.detach().clone() for k, p in step.params.items()}
    old = {k: m.clone() for k, m in step.mask.items()}
    state = {k: {s: v.clone() for s, v in step.opt.state[p].items() if s != "step"} for k, p in step.params.items()}
    updater = dst.Updater(cfg, ["rigl", "set", None], [11, 12, None], iterations)
    updater(it, step)

    f_rigl = 0.3 / 2 * (1 + math.cos(math.pi * it / 750))
    gen = torch.Generator().manual_seed(12 * 2**24 + it)  # SET's draws: the network's seed and the iteration
    draws = {k: torch.rand(m[1].shape, generator=gen) for k, m in old.items()}  # layer after layer
    for k, m in step.mask.items():
        assert masks.kept(step.mask)[k].tolist() == masks.kept(old)[k].tolist()  # counts conserved exactly
        for i, (method, f) in enumerate([("rigl", f_rigl), ("set", 0.3)]):
            score = grads[k][i] if method == "rigl" else draws[k]
            dropped, grown = paper_rule(before_w[k][i], old[k][i], f, score)
            assert dropped and len(grown) == len(dropped)
            flat_new, flat_old = m[i].flatten(), old[k][i].flatten()
            assert set(torch.nonzero(flat_old & ~flat_new).flatten().tolist()) == dropped - grown
            assert set(torch.nonzero(flat_new & ~flat_old).flatten().tolist()) == grown - dropped
            w = step.params[k][i].detach().flatten()
            assert (w[list(grown)] == 0).all()  # grown weights start at exactly zero
            assert (w[~flat_new] == 0).all()
            fresh = torch.zeros_like(flat_new)
            fresh[list(grown)] = True
            untouched = flat_new & ~fresh
            assert torch.equal(w[untouched], before_w[k][i].flatten()[untouched])
            for s, v in step.opt.state[step.params[k]].items():
                if s == "step":
                    continue
                assert (v[i].flatten()[fresh] == 0).all(), s  # optimizer state of grown positions reset
                assert torch.equal(v[i].flatten()[untouched], state[k][s][i].flatten()[untouched]), s
                if s == "exp_avg_sq" and fast:  # newly pruned positions: +inf (Adam holds them at zero)
                    assert torch.isinf(v[i].flatten()[~flat_new]).all()
        assert torch.equal(m[2], old[k][2]) and torch.equal(step.params[k][2], before_w[k][2])  # the control: untouched
    # RigL used the dense gradient: the pruned last input column (largest gradients) grows back in network 0
    assert step.mask["a.weight"][0, :, -1].any() and not old["a.weight"][0, :, -1].any()
    for _ in range(5):  # pruned weights stay exactly zero after later steps; grown ones train
        step(idx)
        for k, m in step.mask.items():
            assert (step.params[k][~m] == 0).all()
    assert (step.params["a.weight"][0, :, -1][step.mask["a.weight"][0, :, -1]] != 0).all()


@pytest.mark.parametrize("setting", ["auto", "on"])  # (Tiny's layers: dense under auto, sparse with on)
def test_the_step_keeps_the_dense_gradient(setting):
    """The gradient the hook reads after a step is the unmasked one at the weights the step started from."""
    model, step, x, y = setup(sparse=setting)
    assert len(step.sparse) == (2 if setting == "on" else 0)
    step(torch.arange(8))
    step.sync()
    start = copy.deepcopy(model)
    expected = dense_gradient(start, x, y)
    step(torch.arange(8))
    for k in step.mask:
        assert torch.allclose(step.grad(k), expected[k], rtol=1e-5, atol=1e-6)
        assert (expected[k][~step.mask[k]].abs() > 0).any()  # nonzero where the weights are pruned


def _moving_masks(setting: str, train_cfg: dict):
    """14 steps of 4 mlp-mnist1d networks (rigl, set, an untouched control, rigl) at about 10 % density, a batch of
    20 drawn per step, masks updated every 3 steps: the model, the step engine and the masks it started from."""
    from test_training import silent

    model = models.build("mlp-mnist1d", [0, 1, 2, 3])
    gen = torch.Generator().manual_seed(4)
    mask = {k: torch.rand(model.get_parameter(k).shape, generator=gen) < 0.1 for k in models.prunable(model)}
    start = {k: m.clone() for k, m in mask.items()}
    x, y = torch.randn(4, 100, 40, generator=gen), torch.randint(0, 10, (4, 100), generator=gen)

    def losses(idx):
        return nn.functional.cross_entropy(model(x[:, idx]).transpose(1, 2), y[:, idx], reduction="none").mean(1)

    step = Step(model, mask, TrainConfig(**{"lr": 0.01, **train_cfg}, sparse=setting), losses, log=silent)
    updater = dst.Updater(DSTConfig(update_every=3, fraction=0.3, stop_at=1.0), ["rigl", "set", None, "rigl"],
                          [5, 6, None, 7], 20)
    for it in range(1, 15):  # updates after steps 3, 6, 9 and 12
        step(torch.randperm(100, generator=gen)[:20])
        updater(it, step)
    step.sync()
    return model, step, start


def _kept_state(step: Step) -> dict:
    """The optimizer state of every parameter, a masked weight's at its kept positions (in the order of its sparse
    values) only: where the dense and the sparse path hold the same numbers."""
    out = {}
    for k, p in step.params.items():
        s = step.sparse.get(k)
        for name, v in step.opt.state[s.vals if s else p].items():
            out[k, name] = v[step.mask[k]] if k in step.mask and not s and v.dim() else v
    return out


@pytest.mark.parametrize("setting,train_cfg", [
    ("on", dict(optimizer="adam")), ("on", dict(optimizer="adam", weight_decay=0.01)),
    ("on", dict(optimizer="sgd", momentum=0.9, weight_decay=0.01)), ("auto", dict(optimizer="adam"))],
    ids=["adam", "adam-wd", "sgd-momentum-wd", "auto-adam"])
def test_moving_masks_run_sparse_like_dense_in_float64(float64, monkeypatch, setting, train_cfg):
    """rigl and set with train.sparse on (and auto: the middle layer sparse, the others dense): Step.set_mask
    rebuilds the sparse layers (their CSR structure, the kept values in the optimizer and their state) and 4
    updates give the masks, weights and optimizer state of the dense path (train.sparse: off)."""
    from lottery import sparse

    monkeypatch.setattr(sparse, "AUTO_MIN_WEIGHTS", 5_000)  # (auto: of mlp-mnist1d's layers, only 100x100 has as many)
    dense_model, dense, start = _moving_masks("off", train_cfg)
    model, step, _ = _moving_masks(setting, train_cfg)
    assert not dense.sparse and list(step.sparse) == (list(step.mask) if setting == "on" else ["layers.1.weight"])
    for k, m in step.mask.items():
        assert torch.equal(m, dense.mask[k]), k
        assert [torch.equal(m[i], start[k][i]) for i in range(4)] == [False, False, True, False], k  # moved: rigl, set
        if k in step.sparse:  # the values of a CSR structure of the new mask
            assert torch.equal(step.sparse[k].vals.detach(), model.get_parameter(k).detach()[m]), k
    params = [p for g in step.opt.param_groups for p in g["params"]]
    assert set(map(id, params)) == set(map(id, step.opt.state)) and len(params) == len(list(model.parameters()))
    for (k, w), ref in zip(model.state_dict().items(), dense_model.state_dict().values()):
        assert torch.allclose(w, ref, rtol=0, atol=1e-12), k
        if k in step.mask:
            assert bool((w[~step.mask[k]] == 0).all()), k
    state, dense_state = _kept_state(step), _kept_state(dense)
    assert state.keys() == dense_state.keys()
    for key, v in state.items():
        assert torch.allclose(v, dense_state[key], rtol=0, atol=1e-12), key


def test_smallest_are_a_stable_sorts_first_n():
    gen = torch.Generator().manual_seed(0)
    score = torch.randint(0, 5, (200,), generator=gen).float()  # many ties
    score[::7] = float("inf")
    for n in (0, 1, 37, 100, 171):
        assert sorted(dst.smallest(score, n).tolist()) == sorted(torch.argsort(score, stable=True)[:n].tolist())


def test_schedule_and_decay():
    cfg = DSTConfig(update_every=100, fraction=0.3, stop_at=0.75)
    assert [it for it in range(1, 1001) if dst.due(it, cfg, 1000)] == [100, 200, 300, 400, 500, 600, 700]
    assert dst.drop_fraction("rigl", 0, cfg, 1000) == pytest.approx(0.3)
    assert dst.drop_fraction("rigl", 375, cfg, 1000) == pytest.approx(0.15)
    assert dst.drop_fraction("rigl", 750, cfg, 1000) == pytest.approx(0.0, abs=1e-12)
    assert dst.drop_fraction("set", 700, cfg, 1000) == 0.3


def test_erk_and_uniform_counts():
    shapes = {"a": (100, 40), "b": (10, 100)}  # raw densities (n_in + n_out) / (n_in·n_out): 0.035 and 0.11
    assert dst.erk_counts(shapes, 1000) == {"a": 560, "b": 440}  # scale 4: densities 0.14 and 0.44
    assert dst.erk_counts(shapes, 3000) == {"a": 2000, "b": 1000}  # b would exceed 1: dense, a takes the rest
    assert dst.uniform_counts(shapes, 1000) == {"a": 800, "b": 200}
    conv = {"c": (16, 3, 3, 3), "d": (10, 16)}  # (16 + 3 + 3 + 3) / 432 and 26 / 160
    counts = dst.erk_counts(conv, 200)
    assert sum(counts.values()) == 200 and abs(counts["c"] / 25 - counts["d"] / 26) < 1  # count ∝ sum of the shape
    ticket = {"a": torch.zeros(2, 100, 40, dtype=torch.bool), "b": torch.ones(2, 10, 100, dtype=torch.bool)}
    ticket["a"][:, :, :2] = True  # 200 + 1000 kept per network
    for distribution, want in [("match", [200, 1000]), ("erk", [672, 528]), ("uniform", [960, 240])]:
        m = dst.initial_mask(ticket, distribution, [3, 4])
        assert [masks.kept(m)[k].tolist() for k in ("a", "b")] == [[want[0]] * 2, [want[1]] * 2], distribution
        assert not torch.equal(m["a"][0], m["a"][1])  # random positions, one draw per seed


@pytest.mark.parametrize("raw,message", [
    ({"controls": ["rigl"], "prune": {"at": "init", "criterion": "snip"}},
     "controls: ['rigl'] is not allowed (rigl train at the counts of a ticket that training found: they need "
     "prune.at: trained, not 'init')"),
    ({"controls": ["reinit", "sgd"]}, "controls[1]: 'sgd' is not allowed (one of reinit, random, invert, rigl, set)"),
    ({"dst": {"fraction": 1.0}}, "dst.fraction: 1.0 is not allowed (a number in (0, 1))"),
    ({"dst": {"stop_at": 0}}, "dst.stop_at: 0.0 is not allowed (a number in (0, 1])"),
    ({"dst": {"update_every": 0}}, "dst.update_every: 0 is not allowed (an integer in [1, 10,000,000])"),
    ({"dst": {"distribution": "er"}}, "dst.distribution: 'er' is not allowed (one of match, erk, uniform)"),
    ({"dst": {"alpha": 0.3}}, "unknown key 'dst.alpha' (allowed in dst: distribution, fraction, stop_at, update_every)"),
])
def test_bad_dst_params_name_the_key(raw, message):
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({**raw, "prune": {"rounds": 2, "chain": config.chain(2), **raw.get("prune", {})}})
    assert str(e.value) == message


def test_rigl_and_set_may_run_sparse():
    raw = {"prune": {"rounds": 2, "chain": config.chain(2)}, "controls": ["rigl", "set"], "train": {"sparse": "on"}}
    assert config.from_dict(raw).train.sparse == "on"  # (Step.set_mask rebuilds the sparse layers)


def test_rigl_and_set_rounds_through_dvc_keep_the_tickets_counts(repo):
    out = repo.dvc("exp", "run", "-S", "controls=[reinit,rigl,set]", "-S", "prune.rounds=1",
                   "-S", "dst.update_every=50").stdout
    assert "rigl" in out and "set" in out
    ticket = artifacts.load(repo.path / "runs" / "r1" / "mask.pt", "mask")[0]
    controls = artifacts.load(repo.path / "runs" / "r1" / "controls.pt", "controls")[0]
    metrics = json.loads((repo.path / "runs" / "r1" / "metrics.json").read_text())
    for v in ("rigl", "set"):
        mask = {k: controls[f"{v}/mask/{k}"] for k in ticket}
        assert {k: n.tolist() for k, n in masks.kept(mask).items()} == {k: n.tolist() for k, n in masks.kept(ticket).items()}
        for k, m in mask.items():
            assert (controls[f"{v}/weights/{k}"][~m] == 0).all()
        rows = sorted((n for n in metrics["networks"] if n["variant"] == v), key=lambda n: n["trial"])
        assert [n["mask_seed"] for n in rows] == [derived_seed(n["seed"], f"{v}/mask", "r1") for n in rows]
        assert [n["init_seed"] for n in rows] == [derived_seed(n["seed"], v, "r1") for n in rows]
        start = dst.initial_mask({k: m.bool() for k, m in ticket.items()}, "match", [n["mask_seed"] for n in rows])
        assert all(not torch.equal(start[k], mask[k]) for k in ticket)  # the masks moved during training
    rigl = [n for n in metrics["networks"] if n["variant"] == "rigl"]
    ticket_rows = [n for n in metrics["networks"] if n["variant"] == "ticket"]
    assert rigl[0]["forward_macs"] == ticket_rows[0]["forward_macs"]
    assert rigl[0]["train_flops"] > ticket_rows[0]["train_flops"]  # + the dense gradient of its 3 updates
    csv = (repo.path / "metrics" / "rounds.csv").read_text()
    assert ",rigl," in csv and ",set," in csv
    rounds = json.loads((repo.path / "metrics" / "rounds.json").read_text())
    assert {"rigl", "set", "reinit"} <= set(rounds["r1"])
    report = (repo.path / "metrics" / "report.md").read_text()
    assert "| rigl |" in report and "| set |" in report


class Crash(Exception):
    pass


def _dst_run(resume_dir, crash_at=None, sparse="auto"):
    from lottery.data import TensorData
    from lottery.training import train

    model = models.build("mlp-mnist1d", [3, 4])
    gen = torch.Generator().manual_seed(5)
    mask = {k: torch.rand(p.shape, generator=gen) < 0.4 for k, p in model.named_parameters() if k in models.prunable(model)}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g)
    data = TensorData(x, x[:, :10].argmax(1), x[:50], x[:50, :10].argmax(1), x[50:100], x[50:100, :10].argmax(1))
    cfg = TrainConfig(iterations=120, eval_every=10, batch_size=16, log_every=10, sparse=sparse)

    def log(line):
        if crash_at and f"it {crash_at:>6}/" in line:
            raise Crash(line)

    update = dst.Updater(DSTConfig(update_every=20), ["rigl", "set"], [7, 8], cfg.iterations)
    train(model, mask, data, cfg, [3, 4], log=log, resume_dir=resume_dir, checkpoint_seconds=0.0, update=update)
    return model, mask


@pytest.mark.parametrize("setting", ["auto", "on"])  # (mlp-mnist1d's layers: dense under auto, sparse with on)
def test_a_resumed_dst_training_restores_the_moved_masks(tmp_path, setting):
    ref_model, ref_mask = _dst_run(None, sparse=setting)
    with pytest.raises(Crash):
        _dst_run(tmp_path, crash_at=70, sparse=setting)  # after the updates at 20, 40, 60
    model, mask = _dst_run(tmp_path, sparse=setting)
    for k, m in ref_mask.items():
        assert torch.equal(m, mask[k]), k
    for (k, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    if setting == "on":  # it ran sparse: float32 sums in another order than the dense path's, the same masks
        dense_model, dense_mask = _dst_run(None, sparse="off")
        assert all(torch.equal(m, dense_mask[k]) for k, m in mask.items())
        weights = [(a, b) for (k, a), b in zip(model.state_dict().items(), dense_model.state_dict().values()) if k in mask]
        assert all(torch.allclose(a, b, rtol=0, atol=1e-4) for a, b in weights)
        assert not all(torch.equal(a, b) for a, b in weights)


def test_the_stack_of_a_round_and_its_groups(tmp_path):
    """build_stack: rigl and set rows start from a fresh init at random positions with the ticket's counts;
    train_groups (train.stack=2, 4 groups) moves only their masks, in the caller's mask, and a finished group's
    file gives them back."""
    from test_rounds import fake_round, make_cfg
    from test_training import synthetic_data

    from lottery import rounds

    cfg = make_cfg(controls=("reinit", "rigl", "set"))
    cfg.train.stack, cfg.dst.update_every = 2, 2
    runs = tmp_path / "runs"
    rounds.init(cfg, runs / "init")
    fake_round(runs, "r0", cfg=cfg)
    stack = rounds.build_stack(cfg, "r1", "r0", runs)
    start = copy.deepcopy(stack)
    theta0 = artifacts.load(runs / "init" / "model.pt", "weights")[0]
    state = stack.model.state_dict()
    for v in ("rigl", "set"):
        rows = stack.rows(v)
        assert stack.init_seeds[rows] == [derived_seed(s, v, "r1") for s in (10, 11)]
        assert stack.mask_seeds[rows] == [derived_seed(s, f"{v}/mask", "r1") for s in (10, 11)]
        for k, m in stack.ticket_mask.items():
            assert masks.kept({k: stack.mask[k][rows]})[k].tolist() == masks.kept({k: m})[k].tolist()
            assert not torch.equal(stack.mask[k][rows], m)
            assert not torch.equal(state[k][rows], theta0[k] * stack.mask[k][rows])  # a fresh init
            assert (state[k][rows][~stack.mask[k][rows]] == 0).all()
    data = synthetic_data()
    mask = {k: m.clone() for k, m in stack.mask.items()}
    rounds.train_groups(cfg, stack, mask, data, "r1", log=lambda *_: None, resume_dir=tmp_path / "scratch")
    for v in stack.variants:
        rows = stack.rows(v)
        for k, m in mask.items():
            assert masks.kept({k: m[rows]})[k].tolist() == masks.kept({k: stack.mask[k][rows]})[k].tolist()
            assert torch.equal(m[rows], stack.mask[k][rows]) == (v not in ("rigl", "set")), (v, k)
            assert (stack.model.state_dict()[k][rows][~m[rows]] == 0).all()
    again = {k: m.clone() for k, m in start.mask.items()}
    lines = []
    rounds.train_groups(cfg, start, again, data, "r1", log=lines.append, resume_dir=tmp_path / "scratch")
    assert sum("trained before, read from" in line for line in lines) == 4
    for k, m in mask.items():  # every group read back from its file, masks included
        assert torch.equal(again[k], m), k
        assert torch.equal(start.model.state_dict()[k], stack.model.state_dict()[k])
