"""Summary numbers on a hand-made table; figures, report and the exported ticket from a real run."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch

from lottery import artifacts, config, summary
from lottery.ticket import load_ticket


def _table() -> pd.DataFrame:
    rows = []
    # (round index, variant, weights remaining, [(test acc, early stop) per trial])
    spec = [
        (0, "ticket", 100.0, [(88.0, 2000), (88.4, 2200)]),
        (1, "ticket", 80.0, [(88.6, 1500), (88.8, 1700)]),
        (1, "reinit", 80.0, [(88.0, 2100), (88.2, 2300)]),
        (1, "random", 80.0, [(87.9, 2400), (88.1, 2400)]),
        (2, "ticket", 64.0, [(88.0, 1000), (88.0, 1000)]),
        (2, "reinit", 64.0, [(87.0, 2000), (87.2, 2000)]),
        (2, "random", 64.0, [(86.0, 2500), (86.0, 2500)]),
        (3, "ticket", 51.2, [(87.5, 1200), (87.5, 1200)]),
        (3, "reinit", 51.2, [(86.0, 2000), (86.0, 2000)]),
        (3, "random", 51.2, [(85.0, 2000), (85.0, 2000)]),
    ]
    for k, v, w, trials in spec:
        for t, (acc, es) in enumerate(trials):
            rows.append({"round": f"r{k}", "index": k, "variant": v, "trial": t, "seed": t, "init_seed": t,
                         "mask_seed": None, "weights_remaining": w, "early_stop_iteration": es,
                         "test_accuracy": acc, "final_test_accuracy": acc - 0.1, "min_val_loss": 0.3})
    return pd.DataFrame(rows)


def test_headline_numbers_on_a_hand_made_table():
    h = summary.headline(_table(), tolerance=0.5)
    assert h["dense"] == {"test_accuracy": 88.2, "early_stop_iteration": 2100.0}
    # ticket: 88.7 (r1), 88.0 (r2), 87.5 (r3) against dense 88.2 - 0.5 = 87.7 -> wins down to 64%
    assert h["ticket"]["smallest_winning_weights_remaining"] == 64.0
    assert h["ticket"]["max_early_stop_speedup"] == 2.1  # 2100 / 1000
    assert h["ticket"]["max_accuracy_gain"] == pytest.approx(0.5)
    assert h["reinit"]["smallest_winning_weights_remaining"] == 80.0
    assert h["random"]["smallest_winning_weights_remaining"] == 80.0
    assert h["random"]["max_accuracy_gain"] == pytest.approx(-0.2)
    assert h["rounds"]["r2"]["reinit"]["test_accuracy"] == 87.1
    assert summary.winning_round(_table(), 0.5) == "r2"
    assert summary.headline(_table(), tolerance=0.0)["ticket"]["smallest_winning_weights_remaining"] == 80.0
    tight = summary.headline(_table(), tolerance=0.0)
    assert tight["random"]["smallest_winning_weights_remaining"] is None


def test_a_dense_network_at_chance_declares_no_winning_ticket():
    # train.lr=1e6: every network ends near chance (10 classes: 10%); the pruned rounds "match" the dense one,
    # and the verdict must say the dense network did not train instead of declaring winning tickets
    table = _table()
    table["test_accuracy"] = 10.0 + table["index"] * 0.1 + table["trial"] * 0.2
    h = summary.headline(table, tolerance=0.5, classes=10)
    assert h["dense"]["test_accuracy"] == 10.1 and h["dense_trained"] is False
    assert [h[v]["smallest_winning_weights_remaining"] for v in ("ticket", "reinit", "random")] == [None, None, None]
    assert h["verdict"] == "the dense network did not train (test accuracy 10.10% ≈ chance 10.00%)"
    # 15% is still chance + 5 points; above it (or with 100 classes, above 6%) the network trained
    table["test_accuracy"] += 4.9
    assert summary.headline(table, 0.5, classes=10)["dense_trained"] is False
    assert summary.headline(table, 0.5, classes=100)["dense_trained"] is True
    table["test_accuracy"] += 0.1
    h = summary.headline(table, 0.5, classes=10)
    assert h["dense_trained"] is True and h["ticket"]["smallest_winning_weights_remaining"] == 51.2
    assert h["verdict"] == ("the ticket stays within 0.5 pp of dense (15.10%) down to 51.20% of the weights remaining; "
                            "controls win too: reinit down to 51.20%, random down to 51.20%")
    # the hand-made table of a trained network: the verdict of test_headline_numbers_on_a_hand_made_table
    h = summary.headline(_table(), tolerance=0.5, classes=10)
    assert h["dense_trained"] is True and h["ticket"]["smallest_winning_weights_remaining"] == 64.0
    assert "down to 64.00% of the weights remaining" in h["verdict"]


def test_winning_round_is_the_dense_round_when_no_pruned_round_wins():
    table = _table()
    table.loc[table["index"] > 0, "test_accuracy"] -= 5
    assert summary.winning_round(table, 0.5) == "r0"
    assert summary.headline(table, 0.5)["ticket"]["smallest_winning_weights_remaining"] is None


@pytest.mark.parametrize("text, what", [
    ("{not json", "corrupt metrics file"),
    ('{"round": "r0", "index": 0, "curve": []}', "malformed metrics file"),
    ('{"round": "r0", "index": 0, "networks": [{"variant": "ticket"}], "curve": []}', "malformed metrics file"),
    ('[1, 2]', "malformed metrics file"),
])
def test_a_malformed_metrics_file_is_an_artifact_error_naming_it(tmp_path, text, what):
    path = tmp_path / "r0" / "metrics.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(artifacts.ArtifactError, match=what) as e:
        summary.collect(tmp_path, ["r0"])
    assert str(path) in str(e.value)
    with pytest.raises(artifacts.ArtifactError, match="missing"):
        summary.collect(tmp_path, ["r1"])


def test_the_metrics_of_another_round_are_refused(tmp_path):
    # `cp runs/r1/metrics.json runs/r2/metrics.json` would otherwise report r1's numbers as r2's
    net = {**{k: 0 for k in summary.NETWORK_KEYS}, "variant": "ticket", "layers_remaining": {}}
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "metrics.json").write_text(json.dumps({"round": "r1", "index": 1, "networks": [net]}))
    with pytest.raises(artifacts.ArtifactError) as e:
        summary.collect(tmp_path, ["r2"])
    assert str(e.value) == (f"{tmp_path / 'r2' / 'metrics.json'}: holds the metrics of round 'r1', not 'r2'; "
                            "`dvc repro -f` the round that writes it")


def test_accuracy_table_has_one_row_per_round():
    t = summary.accuracy_table(_table())
    assert list(t["round"]) == ["r0", "r1", "r2", "r3"]
    assert list(t["ticket"]) == [88.2, 88.7, 88.0, 87.5]
    assert t["reinit"].iloc[0] == 88.2  # dense round: the controls equal the dense network
    assert list(t.columns) == ["round", "weights_remaining", *summary.VARIANTS]  # dvc.yaml's plot names each one
    assert t["invert"].isna().all()  # not trained: an empty column


def test_dvc_plots_show_draws_the_accuracy_plot_of_a_run_without_invert(repo):
    """dvc.yaml's top-level plot names every variant: one not trained is an empty column, not a missing field
    (DVC would drop the whole plot). tests/test_pai.py checks the run with `invert`."""
    shown = json.loads(repo.dvc("plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown["errors"]
    values = shown["data"]["test accuracy vs weights remaining"][0]["content"]["data"]["values"]
    assert {v["field"] for v in values} == set(summary.VARIANTS)
    untrained = {"invert", "rigl", "set"}
    assert {v["dvc_inferred_y_value"] for v in values if v["field"] in untrained} == {""}
    assert all(v["dvc_inferred_y_value"] != "" for v in values if v["field"] not in untrained)


def test_figures_report_and_ticket_of_a_real_run(template):
    m = template.path / "metrics"
    for name in ("accuracy.png", "early_stop.png", "validation.png", "layers.png", "mask_first_layer.png"):
        data = (m / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    report = (m / "report.md").read_text()
    assert "![accuracy](accuracy.png)" in report and "Winning-ticket verdict" in report
    result = json.loads((m / "summary.json").read_text())  # the tiny run's dense network trains: far above chance
    assert result["dense_trained"] is True and result["dense_acc"] > 100 / 10 + summary.CHANCE_MARGIN
    assert summary.collect(template.path / "runs", ["r0", "r1", "r2"]).classes == 10
    assert "**the ticket stays within" in report
    rows = pd.read_csv(m / "rounds.csv")
    assert len(rows) == 2 + 2 * 3 * 2  # r0: 2 trials; r1, r2: 3 variants x 2 trials
    assert sorted(rows[rows["variant"] == "ticket"]["seed"].unique()) == [0, 1]
    reinit = rows[rows["variant"] == "reinit"]
    assert reinit["init_seed"].nunique() == 4  # a fresh init per trial and round

    # compute accounting (lottery.flops): 200 iterations of batch 32 per network and round; mlp-mnist1d keeps
    # 15000, then 12100, then 9770 weights (layer-wise 20%, output 10%), one multiply-add each per example
    assert list(rows.columns[-7:-2]) == ["iterations", "forward_macs", "train_flops", "cumulative_iterations",
                                       "cumulative_flops"]
    assert set(rows["iterations"]) == {200}
    assert {r: set(rows[rows["round"] == r]["forward_macs"]) for r in ("r0", "r1", "r2")} == \
        {"r0": {15000}, "r1": {12100}, "r2": {3200 - 640 + 8000 - 1600 + 900 - 90}}
    assert (rows["train_flops"] == 3 * rows["forward_macs"] * 32 * 200).all()
    own = rows.set_index(["round", "variant", "trial"])["train_flops"]
    total = rows.set_index(["round", "variant", "trial"])["cumulative_flops"]
    for t in (0, 1):  # the ticket of r2: its chain r0, r1, r2; reinit: the search (r0, r1) and its own; random: its own
        chain = own[("r0", "ticket", t)] + own[("r1", "ticket", t)]
        assert total[("r2", "ticket", t)] == chain + own[("r2", "ticket", t)]
        assert total[("r2", "reinit", t)] == chain + own[("r2", "reinit", t)]
        assert total[("r2", "random", t)] == own[("r2", "random", t)]
        assert total[("r0", "ticket", t)] == own[("r0", "ticket", t)]
    assert rows[rows["round"] == "r2"]["cumulative_iterations"].tolist() == [600, 600, 600, 600, 200, 200]
    per_round = json.loads((m / "rounds.json").read_text())
    assert per_round["r2"]["cumulative_flops"] == 3 * 32 * 200 * (15000 + 12100 + 9770)
    assert per_round["r2"]["random"]["cumulative_flops"] == 3 * 32 * 200 * 9770
    assert "cumul. FLOPs" in report and "![flops](flops.png)" in report
    data = (m / "flops.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    # the exported ticket reloads into a module that predicts like the stage's checkpoint
    ticket, meta = artifacts.load(m / "ticket.pt", "ticket")
    assert any(v.is_sparse for v in ticket.values())
    with warnings.catch_warnings():  # loads quietly (torch notes every sparse tensor it validates)
        warnings.simplefilter("error")
        net = load_ticket(m / "ticket.pt")
    trained, _ = artifacts.load(template.path / "runs" / meta["round"] / "model.pt", "weights")
    x = torch.randn(16, 40)
    from lottery import models
    ref = models.build("mlp-mnist1d", [0])
    ref.load_state_dict({k: v[:1] for k, v in trained.items()})
    assert torch.equal(net(x), ref(((x - net.mean) / net.std)[None])[0])  # raw inputs, normalised as in training
    init = load_ticket(m / "ticket.pt", "init")
    theta0, _ = artifacts.load(template.path / "runs" / "init" / "model.pt", "weights")
    assert torch.equal(init.net.layers[0].weight[0] != 0, ticket["mask/layers.0.weight"])
    kept = ticket["mask/layers.0.weight"]
    assert torch.equal(init.net.layers[0].weight[0][kept], theta0["layers.0.weight"][0][kept])


SETTINGS = {"data.dataset": "mnist1d", "commit": "0123456789ab"}


def test_report_margins_and_controls_that_win_too():
    # dense 88.2, tolerance 0.5: the ticket wins down to 64%, reinit and random down to 80% (they "win" too)
    h = summary.headline(_table(), tolerance=0.5)
    assert h["verdict"] == ("the ticket stays within 0.5 pp of dense (88.20%) down to 64.00% of the weights remaining; "
                            "controls win too: reinit down to 80.00%, random down to 80.00%")
    m = summary.margins(_table())
    assert list(m["round"]) == ["r1", "r2", "r3"] and list(m["weights_remaining"]) == [80.0, 64.0, 51.2]
    assert [round(x, 6) for x in m["reinit_margin"]] == [0.6, 0.9, 1.5]
    assert [round(x, 6) for x in m["random_margin"]] == [0.7, 2.0, 2.5]
    lines = summary.report(h, _table(), 0.5, SETTINGS, ["accuracy.png"]).splitlines()
    assert lines[:6] == ["# Lottery ticket report", "", "| setting | value |", "|---|---|", "| data.dataset | mnist1d |",
                         "| commit | 0123456789ab |"]
    assert ("**Controls win too** (reinit down to 80.00%, random down to 80.00% of the weights remaining): down to "
            "there, winning alone does not set the ticket apart") in "\n".join(lines)
    assert "| ticket | 64.00% | 2.10x | +0.50 |" in lines and "| random | 80.00% | 1.05x | -0.20 |" in lines
    i = lines.index("| round | % remaining | ticket | reinit | margin over reinit | random | margin over random |")
    assert lines[i + 2:i + 5] == ["| r1 | 80.00 | 88.70 ✓ | 88.10 ✓ | +0.60 | 88.00 ✓ | +0.70 |",
                                  "| r2 | 64.00 | 88.00 ✓ | 87.10 | +0.90 | 86.00 | +2.00 |",
                                  "| r3 | 51.20 | 87.50 | 86.00 | +1.50 | 85.00 | +2.50 |"]
    assert "Instability: not measured (instability.enabled: false)." in lines and lines[-1] == "![accuracy](accuracy.png)"


def test_a_variant_that_never_wins_shows_a_dash_and_a_winning_control_is_named():
    tight = summary.headline(_table(), tolerance=0.0)  # only the ticket's r1 (88.7) reaches dense (88.2)
    text = summary.report(tight, _table(), 0.0, SETTINGS, [])
    assert "| reinit | — | 1.05x | -0.10 |" in text and "| random | — | 1.05x | -0.20 |" in text
    assert "None" not in text and "win too" not in text and tight["verdict"].endswith("down to 80.00% of the weights remaining")
    table = _table()
    table.loc[(table["index"] > 0) & table["variant"].isin(["ticket", "reinit"]), "test_accuracy"] -= 5
    h = summary.headline(table, 0.5)
    assert h["verdict"] == "no pruned ticket stays within 0.5 pp of dense (88.20%); but a control does: random down to 80.00%"
    assert "| ticket | — |" in summary.report(h, table, 0.5, SETTINGS, [])


def test_settings_name_the_params_keys_and_the_commit(tmp_path):
    import dataclasses

    s = summary.settings(dataclasses.asdict(config.Config()), "0123456789ab")
    assert s == {"data.dataset": "fashion-mnist", "model.name": "lenet-300-100", "train.iterations": "3000",
                 "prune.strategy": "layerwise", "prune.rate": "0.2", "prune.rounds": "15", "prune.criterion": "magnitude",
                 "controls": "reinit, random", "trials": "2 (seeds 0, 1)", "summary.tolerance": "0.5 pp",
                 "commit": "0123456789ab"}
    assert set(config.REPORT_SETTINGS) <= set(config.STAGE_PARAMS["summarize"])  # a change reruns summarize
    assert summary.settings({**dataclasses.asdict(config.Config()), "controls": []}, "x", [3, 4, 5, 6])["trials"] == \
        "4 (seeds 3–6)"
    assert summary.settings({**dataclasses.asdict(config.Config()), "controls": []}, "x", [0, 2])["controls"] == "none"
    # the commit: HEAD, or a plain statement where there is none (`git init` then `dvc repro` must work)
    assert summary.commit(tmp_path) == "none (not a git repository)"
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True)  # noqa: E731
    git("init", "-q")
    assert summary.commit(tmp_path) == "none (no commit yet)"
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "x")
    assert summary.commit(tmp_path) == git("rev-parse", "HEAD").stdout.strip()[:12]


def test_every_round_is_labelled_on_the_log_axes():
    plt = summary._plt()
    fig, ax = plt.subplots()
    x = [100.0, 80.0, 64.0, 51.2, 40.96, 3.5184]
    ax.plot(x, range(len(x)))
    summary._round_ticks(ax, x, [f"r{k}" for k in range(len(x))], pad=1.1)
    fig.canvas.draw()
    assert list(ax.get_xticks()) == x and [t.get_text() for t in ax.get_xticklabels()] == \
        ["100", "80", "64", "51.2", "41", "3.52"]
    assert len(ax.xaxis.get_minorticklocs()) == 0 and ax.get_xlim()[0] > ax.get_xlim()[1]  # sparsest right
    top = ax.child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == ["r0", "r1", "r2", "r3", "r4", "r5"]
    summary._log_ticks(ax, 3.5, 100.0)  # a log y axis over two decades: 1-2-5 ticks in plain numbers
    assert [t.get_text() for t in ax.get_yticklabels()] == ["5", "10", "20", "50", "100"]
    summary._log_ticks(ax, 40.96, 100.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["40", "50", "60", "70", "80", "90", "100"]
    many = [100 * 0.8 ** k for k in range(101)]  # past 30 rounds, one label in every few, first and sparsest kept
    summary._round_ticks(ax, many, [f"r{k}" for k in range(101)])
    assert len(ax.get_xticks()) == 26 and ax.get_xticks()[0] == 100 and ax.get_xticks()[-1] == many[-1]
    plt.close(fig)


def test_summarize_checks_every_input_before_writing_any_and_replaces_stale_figures(repo):
    """Issue 25: a mask copied from another round stops summarize before it redraws anything; issue 24: figures of
    a capability that is now off (instability.png, interpolation.png) are rewritten as placeholders that say so, not
    left stale, and report.md does not link them."""
    m, mask = repo.path / "metrics", repo.path / "runs" / "r2" / "mask.pt"
    for name in summary.OPTIONAL_FIGURES:  # as an earlier summarize with instability.enabled left them
        (m / name).write_bytes(b"stale")
    good = mask.read_bytes()
    mask.unlink()  # never write through a link into DVC's cache
    shutil.copy(repo.path / "runs" / "r1" / "mask.pt", mask)
    state = lambda: {f.name: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)  # noqa: E731
                     for f in m.iterdir()}
    before = state()
    p = repo.run(sys.executable, "-m", "stages.summarize", check=False)
    assert p.returncode == 2 and p.stderr == "error: runs/r2/mask.pt: metadata round='r1' does not match this run's 'r2'\n"
    assert state() == before  # every file byte-identical and untouched, the stale figures included

    mask.unlink()
    mask.write_bytes(good)
    repo.run(sys.executable, "-m", "stages.summarize")
    placeholders = {name: (m / name).read_bytes() for name in summary.OPTIONAL_FIGURES}
    assert all(data[:4] == b"\x89PNG" for data in placeholders.values())  # rewritten: they say "not measured"
    report = (m / "report.md").read_text()
    assert "instability.png" not in report and "Instability: not measured" in report
    head = repo.run("git", "rev-parse", "HEAD").stdout.strip()[:12]
    assert f"| commit | {head} |" in report and "| trials | 2 (seeds 0, 1) |" in report
    assert "| data.dataset | mnist1d |" in report and "| model.name | mlp-mnist1d |" in report
    assert state()["summary.json"][0] == before["summary.json"][0]  # the same numbers, keys unchanged
