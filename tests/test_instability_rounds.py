"""Instability in the pipeline: the ticket's second copy trained in the round's stack (lottery.rounds),
its line in metrics.json, the summary's numbers and figures, and the whole feature through DVC."""
from __future__ import annotations

import dataclasses
import json
import sys

import pandas as pd
import pytest
import torch
import yaml

from conftest import ran
from lottery import artifacts, config, instability, rounds, summary
from lottery.config import ConfigError
from lottery.data import prepared_params, save_prepared

SILENT = dict(log=lambda *_: None)


def _data(n=300, d=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x[:, :10].argmax(1)
    return {"x_train": x, "y_train": y, "x_val": x[:40], "y_val": y[:40], "x_test": x[40:100], "y_test": y[40:100],
            "mean": torch.zeros(1), "std": torch.ones(1)}


def _cfg(**instab) -> config.Config:
    return config.from_dict({
        "trials": 2, "model": {"name": "mlp-mnist1d"}, "data": {"dataset": "mnist1d", "validation": 40},
        "train": {"iterations": 40, "eval_every": 10, "batch_size": 16, "log_every": 0},
        "prune": {"rounds": 2, "chain": config.chain(2)},
        "instability": {"train_subset": 100, "points": 5, **instab}})


def _run(tmp_path, cfg, name, prev="r0") -> dict:
    """init, r0 and (for `name` != r0) the round `name` of cfg in tmp_path/runs; returns name's metrics."""
    runs, data = tmp_path / "runs", tmp_path / "prepared.pt"
    if not data.exists():
        save_prepared(_data(), data, prepared_params(cfg))
    rounds.init(cfg, runs / "init")
    rounds.run_round(cfg, "r0", "init", runs, data, **SILENT)
    return rounds.run_round(cfg, name, prev, runs, data, **SILENT) if name != "r0" else \
        json.loads((runs / "r0" / "metrics.json").read_text())


@pytest.mark.parametrize("raw, key", [
    ({"instability": {"points": 1}}, "instability.points"),
    ({"instability": {"threshold": -0.1}}, "instability.threshold"),
    ({"instability": {"enabled": True}, "rewind": {"to": "lr"}}, "instability.enabled"),
    ({"instability": {"enabled": True}, "rewind": {"to": "finetune"}}, "instability.enabled"),
    ({"instability": {"bn": "recompute", "bn_batches": 100}}, "instability.bn_batches"),
    ({"instability": {"bn": "freeze"}}, "instability.bn"),
    ({"instability": {"train_subset": 0}}, "instability.train_subset"),
    ({"instability": {"enabeld": True}}, "instability.enabeld"),
])
def test_bad_instability_params_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        config.from_dict({"prune": {"rounds": 1, "chain": config.chain(1)}, **raw})
    assert "\n" not in str(e.value)


def test_a_dataset_smaller_than_the_training_subset_stops_the_round_before_training(tmp_path):
    cfg = _cfg(enabled=True, train_subset=301)  # 300 training examples
    with pytest.raises(ConfigError, match=r"instability\.train_subset: 301 .* 300 training examples"):
        _run(tmp_path, cfg, "r0")
    assert not (tmp_path / "runs" / "r0").exists()


def _same_files(a, b, names=("r0", "r1")):
    for r in names:  # the tensors: the files' metadata records the params digest, which instability.* is part of
        for f, kind in (("mask.pt", "mask"), ("model.pt", "weights")):
            ta, tb = artifacts.load(a / r / f, kind)[0], artifacts.load(b / r / f, kind)[0]
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), (r, f)
    c_on, _ = artifacts.load(a / names[-1] / "controls.pt", "controls")
    c_off, _ = artifacts.load(b / names[-1] / "controls.pt", "controls")
    assert sorted(set(c_on) - set(c_off)) == sorted(k for k in c_on if k.startswith("copy/"))
    return {k: (c_on[k], c_off[k]) for k in c_off}


def _curves(folder, name) -> list[dict]:
    """The round's validation curves (DVCLive's files) of every network but the copies."""
    c = summary.read_curves(folder / "runs" / name / "live")
    return c[c["variant"] != "copy"].sort_values(["variant", "trial", "iteration"]).to_dict("records")


def test_turning_instability_on_changes_no_other_network_bit_for_bit(tmp_path):
    """The copy is the stack's last variant: every other network trains bit for bit as without it.

    8 trials: every stacked tensor holds a multiple of 16 floats with and without the copies. (CPU Adam's fused
    kernel runs the last numel % vector-width elements of a tensor through scalar code that rounds differently
    from its vector body, so with other counts the last network's last few elements move in the last bits:
    the next test.)"""
    cfg = lambda **i: config.from_dict({**dataclasses.asdict(_cfg(**i)), "trials": 8})  # noqa: E731
    off = _run(tmp_path / "off", cfg(), "r1")
    on = _run(tmp_path / "on", cfg(enabled=True), "r1")
    assert [n for n in on["networks"] if n["variant"] != "copy"] == off["networks"]
    assert _curves(tmp_path / "on", "r1") == _curves(tmp_path / "off", "r1")
    assert "instability" not in off and len(on["instability"]["trials"]) == 8
    for k, (a, b) in _same_files(tmp_path / "on" / "runs", tmp_path / "off" / "runs").items():
        assert torch.equal(a, b), k


def test_turning_instability_on_changes_no_other_networks_metrics(tmp_path):
    """2 trials: the same metrics for every other network; the same bytes but for the last network before the
    copies, whose last elements of the output bias (where CPU Adam's scalar tail ran without the copies) differ
    in the last bits."""
    off = _run(tmp_path / "off", _cfg(), "r1")
    on = _run(tmp_path / "on", _cfg(enabled=True), "r1")
    assert [n for n in on["networks"] if n["variant"] != "copy"] == off["networks"]
    assert _curves(tmp_path / "on", "r1") == _curves(tmp_path / "off", "r1")
    on_w, _ = artifacts.load(tmp_path / "on" / "runs" / "r1" / "model.pt", "weights")
    off_w, _ = artifacts.load(tmp_path / "off" / "runs" / "r1" / "model.pt", "weights")
    assert all(torch.equal(on_w[k], off_w[k]) for k in on_w)  # r1's ticket: 6 -> 8 networks, not the last
    on_w, _ = artifacts.load(tmp_path / "on" / "runs" / "r0" / "model.pt", "weights")
    off_w, _ = artifacts.load(tmp_path / "off" / "runs" / "r0" / "model.pt", "weights")
    for k in on_w:  # r0: the ticket of trial 1 was the stack's last network without the copies
        assert torch.equal(on_w[k][0], off_w[k][0]), k
        assert torch.allclose(on_w[k], off_w[k], rtol=1e-4, atol=1e-6), k


def test_the_copy_shares_the_tickets_start_and_mask_with_its_own_data_order(tmp_path):
    cfg = _cfg(enabled=True)
    m = _run(tmp_path, cfg, "r1")
    stack = rounds.build_stack(cfg, "r1", "r0", tmp_path / "runs")
    assert stack.variants == ["ticket", "reinit", "random", "copy"]
    tick, copy = stack.rows("ticket"), stack.rows("copy")
    for k, v in stack.model.state_dict().items():
        assert torch.equal(v[copy], v[tick]), k
    for k, v in stack.mask.items():
        assert torch.equal(v[copy], v[tick]), k
    seeds = [rounds.derived_seed(cfg.seed + t, "copy") for t in range(2)]
    assert stack.order_seeds[copy] == seeds and stack.order_seeds[tick] == [0, 1]
    line = m["instability"]
    assert [t["copy_order_seed"] for t in line["trials"]] == seeds
    assert line["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0] and line["threshold"] == 2.0 and line["train_subset"] == 100
    # the line's ends are the trained ticket and copy: their test errors are the networks' test accuracies
    nets = {(n["variant"], n["trial"]): n for n in m["networks"]}
    for t in line["trials"]:
        assert len(t["test_error"]) == len(t["train_error"]) == 5
        assert t["test_error"][-1] == pytest.approx(100 - nets["copy", t["trial"]]["final_test_accuracy"], abs=1e-3)
        assert t["test_error"][0] == pytest.approx(100 - nets["ticket", t["trial"]]["final_test_accuracy"], abs=1e-3)
        assert t["test_instability"] == pytest.approx(float(instability.instability(t["test_error"])), abs=1e-6)
        assert t["stable"] == (t["test_instability"] <= 2.0)


def test_instability_summary_headline_csv_and_figures(tmp_path):
    runs = tmp_path / "runs"
    for name, k, rem, inst in [("r0", 0, 100.0, [0.5, 1.0]), ("r1", 1, 80.0, [1.5, 2.0]), ("r2", 2, 64.0, [3.0, 5.0])]:
        nets = [{"variant": v, "trial": t, "seed": t, "init_seed": t, "mask_seed": None, "weights_remaining": rem,
                 "early_stop_iteration": 10, "test_accuracy": 90.0, "final_test_accuracy": 90.0, "min_val_loss": 0.1,
                 "layers_remaining": {"w": rem}} for v in ("ticket", "copy") for t in (0, 1)]
        line = {"threshold": 2.0, "alphas": [0.0, 1.0], "trials": [
            {"trial": t, "test_error": [10.0, 10.0], "train_error": [5.0, 5.0], "test_instability": x,
             "train_instability": x / 2, "stable": x <= 2.0} for t, x in enumerate(inst)]}
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.json").write_text(json.dumps(
            {"round": name, "index": k, "networks": nets, "curve": [], "instability": line}))
    inst, points = summary.read_instability(runs, ["r0", "r1", "r2"])
    head = summary.instability_headline(inst)
    assert head == {"rounds": {
        "r0": {"weights_remaining": 100.0, "ticket_instability": 0.75, "train_instability": 0.375, "stable_trials": 2},
        "r1": {"weights_remaining": 80.0, "ticket_instability": 1.75, "train_instability": 0.875, "stable_trials": 2},
        "r2": {"weights_remaining": 64.0, "ticket_instability": 4.0, "train_instability": 2.0, "stable_trials": 0}},
        "sparsest_stable_weights_remaining": 80.0}
    assert len(points) == 3 * 2 * 2
    files = summary.instability_figures(inst, points)
    assert list(files) == ["instability.png", "interpolation.png"]
    assert all(data[:4] == b"\x89PNG" for data in files.values())
    (runs / "r1" / "metrics.json").write_text(json.dumps({**json.loads((runs / "r0" / "metrics.json").read_text()),
                                                          "round": "r1", "instability": {"trials": [{}]}}))
    with pytest.raises(artifacts.ArtifactError, match="r1/metrics.json: malformed instability record"):
        summary.read_instability(runs, ["r1"])


def test_instability_runs_through_dvc(repo):
    conf = repo.path / "conf" / "config.yaml"
    raw = yaml.safe_load(conf.read_text())
    raw["instability"].update(enabled=True, train_subset=1000)  # of the tiny experiment's 3,500 training examples
    conf.write_text(yaml.safe_dump(raw, sort_keys=False))
    repo.run(sys.executable, "-m", "lottery.params")
    out = repo.dvc("repro")
    done = ran(out.stdout)
    assert "prepare" not in done and "init" not in done and "summarize" in done
    assert {"round@r1", "round@r2"} <= set(done)
    assert "instability (test) trial 0:" in out.stdout
    m = json.loads((repo.path / "runs" / "r2" / "metrics.json").read_text())
    assert len(m["instability"]["trials"]) == 2 and len(m["instability"]["alphas"]) == 30
    per_round = json.loads((repo.path / "metrics" / "rounds.json").read_text())
    assert all("ticket_instability" in per_round[r]["instability"] for r in ("r0", "r1", "r2"))
    s = json.loads((repo.path / "metrics" / "summary.json").read_text())
    assert set(s["instability"]) == {"dense", "stable"}
    assert s["instability"]["dense"] == per_round["r0"]["instability"]["ticket_instability"]
    df = pd.read_csv(repo.path / "metrics" / "rounds.csv")
    assert df[df["variant"] == "ticket"]["test_instability"].notna().all()
    assert (repo.path / "metrics" / "instability.png").exists() and (repo.path / "metrics" / "interpolation.png").exists()
    assert "instability.png" in (repo.path / "metrics" / "report.md").read_text()
    assert ran(repo.dvc("repro").stdout) == []
    repo.commit("instability on")
    study = repo.run(sys.executable, "-m", "lottery.instability", "HEAD", "--round", "r2", "--out", "study.png")
    line = study.stdout.splitlines()[1].split()
    assert line[:2] == ["HEAD", "0"] and float(line[2]) == pytest.approx(per_round["r0"]["instability"]["ticket_instability"], abs=0.01)
    assert (repo.path / "study.png").read_bytes()[:4] == b"\x89PNG"
    bad = repo.run(sys.executable, "-m", "lottery.instability", "HEAD~1", check=False)
    assert bad.returncode == 2 and "has no instability" in bad.stderr and "Traceback" not in bad.stderr


def test_rewind_study_rows_sorted_by_k(tmp_path):
    files = {}
    for exp, k, inst in [("a", 500, [3.0, 5.0]), ("b", 0, [10.0, 20.0])]:
        files[exp, "params.yaml"] = f"rewind:\n  to: iteration\n  iteration: {k}\n"
        for name, rem in (("r0", 100.0), ("r3", 51.2)):
            files[exp, f"runs/{name}/metrics.json"] = json.dumps({
                "networks": [{"variant": "ticket", "weights_remaining": rem, "test_accuracy": 80.0 + t} for t in (0, 1)],
                "instability": {"trials": [{"test_instability": x} for x in inst]}})
    rows = instability.study_rows(["a", "b"], "r3", lambda e, p: files[e, p])
    assert [(r["exp"], r["k"]) for r in rows] == [("b", 0), ("a", 500)]
    assert rows[1]["ticket"] == {"round": "r3", "weights_remaining": 51.2, "instability": 4.0, "min": 3.0, "max": 5.0,
                                 "test_accuracy": 80.5}
    instability.study_figure(rows, tmp_path / "k.png")
    assert (tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"
