"""Pruning at initialization in the pipeline: prune.at: init rounds, the invert control, the bad-input errors,
the criterion in the results and the overlay figure of `python -m lottery.compare --plot`."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ran, retag

from lottery import artifacts, config, masks, rounds
from lottery.data import TensorData

MODEL = "mlp-mnist1d"


def make_cfg(at: str = "init", criterion: str = "magnitude", strategy: str = "layerwise",
             controls=("reinit", "random", "invert"), **prune) -> config.Config:
    return config.from_dict({
        "seed": 10, "trials": 2, "controls": list(controls),
        "data": {"dataset": "mnist1d", "validation": 500},
        "model": {"name": MODEL},
        "train": {"iterations": 10, "eval_every": 5, "batch_size": 10, "log_every": 0},
        "prune": {"rate": 0.2, "rounds": 3, "chain": config.chain(3), "at": at, "criterion": criterion,
                  "strategy": strategy, "global_kinds": ["fc"], "score_batches": 2, **prune},
    })


def fake_data(n: int = 200) -> TensorData:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 40, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    return TensorData(x, y, x, y, x, y)  # only the training split is read (the batches SNIP and GraSP score)


def write_round(runs: Path, name: str, weights: dict[str, torch.Tensor], mask: masks.Mask, cfg: config.Config) -> None:
    """A round's ticket as training with `cfg` would write it (weights masked), metadata round=name."""
    _, meta = artifacts.load(runs / "init" / "model.pt", "weights")
    masked = {k: v * mask[k] if k in mask else v for k, v in weights.items()}
    meta = {**meta, "round": name, "params": config.artifact_params(cfg, name)}
    artifacts.save(runs / name / "model.pt", masked, meta)
    artifacts.save(runs / name / "mask.pt", mask, {**meta, "kind": "mask"})


def read_as(runs: Path, cfg: config.Config) -> None:
    """The IMP experiment's artifacts, tagged as if `cfg` (another experiment) had written them: the test reads one
    experiment's rounds with another's params, which the pipeline refuses (each artifact records its params)."""
    for f in sorted(runs.glob("*/*.pt")):
        retag(f, params=config.artifact_params(cfg, f.parent.name))


def imp_rounds(tmp_path: Path, strategy: str, k: int) -> tuple[Path, list[masks.Mask]]:
    """runs/ with init and IMP rounds r0..r{k-1} (trained weights: θ0 scaled at random); and every IMP ticket r1..rk."""
    cfg = make_cfg("trained", strategy=strategy, controls=())
    runs = tmp_path / "runs"
    rounds.init(cfg, runs / "init")
    theta0, _ = artifacts.load(runs / "init" / "model.pt", "weights")
    mask, _ = artifacts.load(runs / "init" / "mask.pt", "mask")
    gen = torch.Generator().manual_seed(5)
    write_round(runs, "r0", {k_: v * torch.rand(v.shape, generator=gen) * 3 for k_, v in theta0.items()}, mask, cfg)
    tickets = []
    for j in range(1, k + 1):
        stack = rounds.build_stack(cfg, f"r{j}", f"r{j - 1}", runs)
        tickets.append(stack.ticket_mask)
        write_round(runs, f"r{j}", {k_: v * torch.rand(v.shape, generator=gen) * 3 for k_, v in theta0.items()},
                    stack.ticket_mask, cfg)
    return runs, tickets


@pytest.mark.parametrize("strategy", ["layerwise", "global"])
@pytest.mark.parametrize("criterion", ["magnitude", "random", "snip", "grasp", "synflow"])
def test_pai_round_k_keeps_imp_round_k_counts_and_ignores_the_previous_weights(tmp_path, criterion, strategy):
    runs, imp = imp_rounds(tmp_path, strategy, 3)
    controls = ("reinit", "random") + (() if criterion == "random" else ("invert",))
    cfg = make_cfg(criterion=criterion, strategy=strategy, controls=controls, synflow_iterations=10)
    logged = []
    read_as(runs, cfg)
    stack = rounds.build_stack(cfg, "r3", "r2", runs, fake_data(), logged.append)
    want, got = masks.kept(imp[2]), masks.kept(stack.ticket_mask)
    groups = [list(want)] if strategy == "global" else [[k] for k in want]
    for layers in groups:  # global: every layer here is fc, ranked together
        assert sum(got[k] for k in layers).tolist() == sum(want[k] for k in layers).tolist()
    if strategy == "layerwise":
        assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in want.items()}
    assert any(not torch.equal(stack.ticket_mask[k], imp[2][k]) for k in want)  # its own choice, not IMP's
    assert len(logged) == 1 and logged[0].startswith(f"[r3] scored by {criterion} in ") and logged[0].endswith("s")
    assert re.fullmatch(rf"\[r3\] scored by {criterion} in \d+\.\d\ds wall, CPU \d+\.\d\ds", logged[0]), logged[0]

    # Only the rewind point matters: other weights in the previous round give the same ticket.
    prev, _ = artifacts.load(runs / "r2" / "model.pt", "weights")
    write_round(runs, "r2", {k: -2 * v for k, v in prev.items()}, imp[1], cfg)
    again = rounds.build_stack(cfg, "r3", "r2", runs, fake_data(), logged.append)
    assert all(torch.equal(again.ticket_mask[k], stack.ticket_mask[k]) for k in want)
    assert all(torch.equal(again.mask[k], stack.mask[k]) for k in want)


def test_pai_magnitude_keeps_the_largest_initial_weights_and_invert_the_smallest(tmp_path):
    runs, _ = imp_rounds(tmp_path, "layerwise", 1)
    read_as(runs, make_cfg())
    stack = rounds.build_stack(make_cfg(), "r2", "r1", runs, fake_data(), lambda s: None)
    assert stack.variants == ["ticket", "reinit", "random", "invert"]
    theta0, _ = artifacts.load(runs / "init" / "model.pt", "weights")
    state = stack.model.state_dict()
    ticket, inverted = stack.rows("ticket"), stack.rows("invert")
    for k, m in stack.ticket_mask.items():
        assert torch.equal(masks.kept({k: stack.mask[k][inverted]})[k], masks.kept({k: m})[k])  # same counts
        assert torch.equal(state[k][inverted], theta0[k] * stack.mask[k][inverted])  # rewound to θ0
        for t in range(2):
            w = theta0[k][t].abs()
            kept, low = w[m[t]], w[stack.mask[k][inverted][t]]
            assert kept.min() >= w[~m[t]].max()  # the ticket: the largest |θ0|
            assert low.max() <= w[~stack.mask[k][inverted][t]].min()  # invert: the smallest
        assert torch.equal(stack.mask[k][ticket], m)


def test_invert_control_of_an_imp_ticket_keeps_the_lowest_trained_weights(tmp_path):
    runs, imp = imp_rounds(tmp_path, "layerwise", 1)
    cfg = make_cfg("trained", controls=("invert",))
    read_as(runs, cfg)
    stack = rounds.build_stack(cfg, "r2", "r1", runs)
    trained, _ = artifacts.load(runs / "r1" / "model.pt", "weights")
    inv = {k: m[stack.rows("invert")] for k, m in stack.mask.items()}
    assert {k: v.tolist() for k, v in masks.kept(inv).items()} == {k: v.tolist() for k, v in masks.kept(stack.ticket_mask).items()}
    assert masks.is_subset(inv, imp[0])  # among the previous mask
    for k, m in inv.items():
        for t in range(2):
            w = trained[k][t].abs()
            assert w[m[t]].max() <= w[imp[0][k][t] & ~m[t]].min()


@pytest.mark.parametrize("prune, controls, message", [
    ({"criterion": "snip"}, None, r"prune.criterion: 'snip' is not allowed \(snip scores the rewind point before "
                                  r"training: it needs prune.at: init, not 'trained'\)"),
    ({"criterion": "synflow"}, None, r"prune.criterion: 'synflow' .* needs prune.at: init"),
    ({"criterion": "magnitude_increase", "at": "init"}, None, r"prune.criterion: 'magnitude_increase' .* prune.at: trained"),
    ({"criterion": "random"}, ["invert"], r"controls: \['invert'\] is not allowed \(invert keeps the lowest scores"),
    ({"criterion": "snip", "at": "init", "score_batches": 0}, None, r"prune.score_batches: 0 is not allowed"),
    ({"criterion": "synflow", "at": "init", "synflow_iterations": 0}, None, r"prune.synflow_iterations: 0 is not allowed"),
    ({"at": "later"}, None, r"prune.at: 'later' is not allowed \(one of trained, init\)"),
])
def test_bad_pai_params_name_the_key(prune, controls, message):
    raw = {"prune": prune, **({"controls": controls} if controls else {})}
    with pytest.raises(config.ConfigError, match=message):
        config.from_dict(raw)
    with pytest.raises(config.ConfigError, match=r"prune.at: 'init' .* rewind.to init or iteration, not 'finetune'"):
        config.from_dict({"prune": {"at": "init"}, "rewind": {"to": "finetune"}})


def test_snip_experiment_end_to_end_and_the_overlay_figure(repo):
    out = repo.dvc("exp", "run", "-n", "snip", "-S", "prune.at=init", "-S", "prune.criterion=snip",
                   "-S", "controls=[reinit,random,invert]").stdout
    assert "scored by snip in" in out
    assert "summarize" in ran(out) and "prepare" not in ran(out) and "init" not in ran(out)
    rows = pd.read_csv(repo.path / "metrics" / "rounds.csv")
    pruned = rows[rows["index"] > 0]  # the dense round r0 prunes nothing: no criterion
    assert set(pruned["criterion"]) == {"snip"} and set(pruned["at"]) == {"init"} and rows[rows["index"] == 0]["criterion"].isna().all()
    assert len(rows[rows["variant"] == "invert"]) == 2 * 2  # r1, r2 x 2 trials
    summary = json.loads((repo.path / "metrics" / "summary.json").read_text())
    assert summary["criterion"] == "snip" and summary["at"] == "init" and "invert" in summary

    shown = json.loads(repo.dvc("plots", "show", "--json").stdout)  # dvc.yaml's accuracy plot draws `invert`
    values = shown["data"]["test accuracy vs weights remaining"][0]["content"]["data"]["values"]
    assert not shown.get("errors") and all(v["dvc_inferred_y_value"] != "" for v in values if v["field"] == "invert")
    assert len([v for v in values if v["field"] == "invert"]) == 3  # r0 (the dense value), r1, r2

    repo.run(sys.executable, "-m", "lottery.compare", "--plot", "overlay.png", "snip", "HEAD")
    data = (repo.path / "overlay.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    bad = repo.run(sys.executable, "-m", "lottery.compare", "--plot", "x.png", "snip", "no-such-exp", check=False)
    assert bad.returncode != 0 and "no-such-exp" in bad.stderr
