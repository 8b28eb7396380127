"""Transfer (lottery.transfer): another revision's ticket trained on this experiment's data and optimizer, beside
its controls; its source a DVC dependency; bad sources refused in one line."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from conftest import ran

from lottery import artifacts, config, masks, models, training, transfer
from lottery.data import load_prepared, prepared_params

RELABEL = '''import numpy as np
from lottery.data import _load_mnist1d
from lottery.raw import _mnist1d_args

PERM = np.array([3, 8, 1, 9, 0, 6, 2, 7, 5, 4])


def loader():
    """mnist1d, its labels permuted: the same inputs, another task of the same shape."""
    d = _load_mnist1d(_mnist1d_args())
    return d["x"], PERM[d["y"]], d["x_test"], PERM[d["y_test"]]
'''


def compose(repo, *overrides: str) -> config.Config:
    repo.run(sys.executable, "-m", "lottery.params", *overrides)
    return config.load(repo.path / "params.yaml")


def networks(repo, path: str, variant: str) -> list[dict]:
    m = json.loads((repo.path / path).read_text())
    return sorted((n for n in m["networks"] if n["variant"] == variant), key=lambda n: n["trial"])


def tensors(repo, path: str, kind: str) -> dict[str, torch.Tensor]:
    return artifacts.load(repo.path / path, kind)[0]


def trained_alone(repo, cfg: config.Config) -> list[float]:
    """Test accuracy (%) of the source's mask and θ0 (as materialised) trained here directly by lottery.training,
    without the transfer's stack or controls: three copies of the trials stacked, the first copy's results (the
    fused SGD step rounds a stack's last elements differently: the transfer's tickets are not its last rows)."""
    theta, mask = tensors(repo, "runs/transfer/source/model.pt", "weights"), tensors(repo, "runs/transfer/source/mask.pt", "mask")
    seeds = [cfg.seed + t for t in range(cfg.trials)] * 3
    model = models.build(cfg.model.name, seeds)
    model.load_state_dict({k: torch.cat([v] * 3) for k, v in theta.items()})
    mask = {k: torch.cat([m.bool()] * 3) for k, m in mask.items()}
    masks.apply(model, mask)
    data = load_prepared(repo.path / "data" / "prepared.pt", "cpu", prepared_params(cfg), cfg.data)
    result = training.train(model, mask, data, cfg.train, order_seeds=seeds, label="alone", log=lambda *a: None)
    return [round(100 * a, 4) for a in result.test_accuracy[:cfg.trials]]


def test_a_ticket_found_with_adam_trains_with_sgd_and_a_changed_source_reruns_the_transfer(repo):
    # The source: this repository's committed revision `main` (the template: Adam). Transferring its own r1 to
    # itself is round r1's ticket again, to the bit: the same mask, θ0, data, data order and stack.
    compose(repo, "transfer.source=main", "transfer.round=r1")
    out = repo.dvc("repro").stdout
    assert ran(out) == ["transfer-source@r1", "transfer@r1", "summarize"], out
    assert networks(repo, "runs/transfer/metrics.json", "ticket") == networks(repo, "runs/r1/metrics.json", "ticket")
    source_mask = tensors(repo, "runs/transfer/source/mask.pt", "mask")
    assert all(torch.equal(source_mask[k], m) for k, m in tensors(repo, "runs/r1/mask.pt", "mask").items())
    ticket = networks(repo, "runs/transfer/metrics.json", "ticket")
    for control in ("reinit", "random"):  # beside the controls of that mask, at its per-layer sparsity
        rows = networks(repo, "runs/transfer/metrics.json", control)
        assert [r["layers_remaining"] for r in rows] == [t["layers_remaining"] for t in ticket], control
        assert [r["mask_seed"] is not None for r in rows] == [control == "random"] * 2
    report = (repo.path / "metrics" / "report.md").read_text()
    mean = sum(t["test_accuracy"] for t in ticket) / 2
    assert "## Transfer: the ticket of 'main' r1 trained on this data" in report
    assert f"| transferred ticket | 80.67 | {mean:.2f}" in report and f"| this data's ticket at r1 | 80.67 | {mean:.2f}" in report

    # A source that did not change reruns nothing downstream of its (always run) materialisation.
    assert ran(repo.dvc("repro").stdout) == ["transfer-source@r1"]

    # `main` moves to a commit whose r1 ticket differs (two weights of trial 0 swapped: same counts): the transfer reruns.
    path = repo.path / "runs" / "r1" / "mask.pt"
    mask, meta = artifacts.load(path, "mask")
    first = next(iter(mask))
    flat = mask[first][0].flatten()
    kept, pruned = int(flat.nonzero()[0]), int((~flat.bool()).nonzero()[0])
    flat[kept], flat[pruned] = flat[pruned].clone(), flat[kept].clone()
    artifacts.save(path, mask, meta)
    repo.dvc("commit", "-f", "round@r1")
    repo.commit("another r1 ticket")
    out = repo.dvc("repro", "transfer@r1").stdout
    assert ran(out) == ["transfer-source@r1", "transfer@r1"], out
    assert torch.equal(tensors(repo, "runs/transfer/source/mask.pt", "mask")[first], mask[first])

    # This experiment trains with SGD: the (Adam-found) ticket trained here with SGD is that mask and θ0 trained
    # alone by lottery.training with SGD.
    cfg = compose(repo, "transfer.source=main", "transfer.round=r1", "train.optimizer=sgd", "train.lr=0.1",
                  "train.momentum=0.9")
    out = repo.dvc("repro", "transfer@r1").stdout
    assert ran(out) == ["init", "transfer-source@r1", "transfer@r1"], out  # init: train.optimizer is one of its params
    m = json.loads((repo.path / "runs" / "transfer" / "metrics.json").read_text())
    assert (m["optimizer"], m["source"], m["round"], m["output_layer"]) == ("sgd", "main", "r1", "transferred")
    got = [n["test_accuracy"] for n in networks(repo, "runs/transfer/metrics.json", "ticket")]
    assert got == trained_alone(repo, cfg)
    assert got != [t["test_accuracy"] for t in ticket]


def test_a_ticket_transfers_to_another_dataset_of_the_same_shape(repo):
    # mnist1d's ticket (the committed template, `main`) trained on mnist1d with its labels permuted (your own loader).
    (repo.path / "relabel.py").write_text(RELABEL)
    cfg = compose(repo, "data.dataset=relabel:loader", "transfer.source=main", "transfer.round=r1")
    out = repo.dvc("repro", "transfer@r1").stdout
    assert ran(out) == ["prepare", "init", "transfer-source@r1", "transfer@r1"], out
    m = json.loads((repo.path / "runs" / "transfer" / "metrics.json").read_text())
    assert (m["source_dataset"], m["output_layer"]) == ("mnist1d", "transferred")
    got = [n["test_accuracy"] for n in networks(repo, "runs/transfer/metrics.json", "ticket")]
    assert got == trained_alone(repo, cfg)
    assert got != [n["test_accuracy"] for n in networks(repo, "runs/r1/metrics.json", "ticket")]  # mnist1d's, not these labels'


def test_the_output_layer_starts_fresh_when_the_classes_differ(repo):
    cfg = compose(repo, "transfer.source=main", "transfer.round=r2")
    runs = repo.path / "runs"
    theta = {k: v + 1 for k, v in tensors(repo, "runs/init/model.pt", "weights").items()}  # a source θ0 unlike ours
    own = tensors(repo, "runs/init/model.pt", "weights")
    mask = {k: m.bool() for k, m in tensors(repo, "runs/r2/mask.pt", "mask").items()}
    record = {"source": "main", "classes": 7}  # the source's classes: not this data's 10
    got, weights, iteration, reinit = transfer.start(cfg, runs, record, mask, theta, {"iteration": 0})
    out = [k for k, kind in models.kinds(models.build(cfg.model.name, [0])).items() if kind == "output"][0]
    head = out.rsplit(".", 1)[0]
    assert reinit and iteration == 0
    for k in theta:
        assert torch.equal(weights[k], own[k] if k.startswith(head + ".") else theta[k]), k
    for k in mask:
        if k == out:  # a random mask at the source's density, drawn per trial
            assert masks.kept(got)[k].tolist() == masks.kept(mask)[k].tolist() and not torch.equal(got[k], mask[k])
        else:
            assert torch.equal(got[k], mask[k]), k
    same = transfer.start(cfg, runs, {"source": "main", "classes": 10}, mask, theta, {"iteration": 0})
    assert not same[3] and torch.equal(same[1][out], theta[out]) and torch.equal(same[0][out], mask[out])
    cfg = compose(repo, "transfer.source=main", "transfer.round=r2", "transfer.init=own")  # this experiment's θ0
    mine = transfer.start(cfg, runs, {"source": "main", "classes": 10}, mask, theta, {"iteration": 0})
    assert all(torch.equal(mine[1][k], own[k]) for k in own) and all(torch.equal(mine[0][k], mask[k]) for k in mask)


@pytest.mark.parametrize("overrides, expect", [
    ({"transfer": {"init": "mine"}}, "transfer.init: 'mine' is not allowed (one of source, own)"),
    ({"transfer": {"round": "r0"}}, "transfer.round: 'r0' is not allowed (a pruned round's name: r1, r2, ...)"),
    ({"transfer": {"source": "main"}}, "transfer.stages: {} is not allowed (must match transfer.source='main'"),
    ({"transfer": {"source": "main", "stages": {"r1": "r1"}}, "rewind": {"to": "lr"}},
     "transfer.source: 'main' is not allowed (a transferred ticket trains from a rewind point"),
])
def test_bad_transfer_params_are_refused_naming_the_key(overrides, expect):
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({"prune": {"rounds": 0}, **overrides})
    assert str(e.value).startswith(expect), str(e.value)


def test_a_source_that_cannot_transfer_is_refused_in_one_line_before_training(repo):
    def branch(name: str, **params) -> None:  # a revision whose params.yaml says another experiment ran
        raw = repo.params()
        for key, value in params.items():
            section, field = key.split("__")
            raw[section][field] = value
        (repo.path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        repo.run("git", "checkout", "-q", "-b", name)
        repo.commit(name)
        repo.run("git", "checkout", "-q", "main")

    branch("lenet", model__name="lenet-300-100")
    branch("images", data__dataset="mnist")
    repo.run("git", "checkout", "-q", "main", "--", "params.yaml")
    before = {p: p.read_bytes() for p in (repo.path / "runs").rglob("*") if p.is_file()}
    for source, round_name, expect in [
        ("nosuch", "r1", "error: 'nosuch' is neither an experiment nor a git revision of this repository"),
        ("main", "r5", "error: transfer.round: 'main' has no round r5 (its pruned rounds: r1, r2)"),
        ("lenet", "r1", "error: transfer.source 'lenet' is a lenet-300-100 network, this experiment a mlp-mnist1d"),
        ("images", "r1", "error: transfer.source 'images' takes inputs of shape (1, 28, 28) (mnist), this experiment's "
                         "data (40,) (mnist1d)"),
    ]:
        compose(repo, f"transfer.source={source}", f"transfer.round={round_name}")
        p = repo.run(sys.executable, "-m", "stages.transfer", "source", check=False)
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [p.stderr.strip()], p.stderr
        assert p.stderr.startswith(expect), p.stderr
    p = repo.dvc("repro", check=False)  # through DVC: it stops at the source, before training, nothing lost
    assert p.returncode != 0 and "error: transfer.source 'images' takes inputs" in p.stderr, p.stderr
    assert "transfer@r1" not in ran(p.stdout), p.stdout
    assert {p: p.read_bytes() for p in before} == before and not (repo.path / "runs" / "transfer" / "metrics.json").exists()


def test_check_names_the_parameter_whose_shape_differs(repo):
    cfg = compose(repo, "transfer.source=main", "transfer.round=r1")
    runs = repo.path / "runs"
    theta = tensors(repo, "runs/init/model.pt", "weights")
    mask = tensors(repo, "runs/r1/mask.pt", "mask")
    record = {"source": "main", "model": "mlp-mnist1d", "dataset": "mnist1d", "classes": 10, "input_shape": [40],
              "seeds": [0, 1]}
    transfer.check(cfg, runs, record, mask, theta)  # itself: fine
    first, out = next(iter(theta)), [k for k in theta if k.endswith(".weight")][-1]
    for key, classes, expect in [(first, 10, f"parameter '{first}' has shape"), (out, 10, f"parameter '{out}' has shape")]:
        bad = {**theta, key: theta[key][..., :3]}
        with pytest.raises(transfer.TransferError) as e:
            transfer.check(cfg, runs, {**record, "classes": classes}, mask, bad)
        assert f"transfer.source 'main': {expect}" in str(e.value), str(e.value)
    transfer.check(cfg, runs, {**record, "classes": 7}, mask, {**theta, out: theta[out][:, :7]})  # classes differ: ok
    with pytest.raises(transfer.TransferError, match="ran 1 trial"):
        transfer.check(cfg, runs, {**record, "seeds": [0]}, mask, theta)
