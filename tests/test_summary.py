"""Summary numbers on a hand-made table; figures, report and the exported ticket from a real run."""
from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
import torch

from lottery import artifacts, summary
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
    assert h["verdict"] == "the ticket stays within 0.5 pp of dense (15.10%) down to 51.2% of the weights remaining"
    # the hand-made table of a trained network: the verdict of test_headline_numbers_on_a_hand_made_table
    h = summary.headline(_table(), tolerance=0.5, classes=10)
    assert h["dense_trained"] is True and h["ticket"]["smallest_winning_weights_remaining"] == 64.0
    assert "down to 64.0% of the weights remaining" in h["verdict"]


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
    assert {v["field"] for v in values} == {"ticket", "reinit", "random", "invert"}
    assert {v["dvc_inferred_y_value"] for v in values if v["field"] == "invert"} == {""}
    assert all(v["dvc_inferred_y_value"] != "" for v in values if v["field"] != "invert")


def test_figures_report_and_ticket_of_a_real_run(template):
    m = template.path / "metrics"
    for name in ("accuracy.png", "early_stop.png", "validation.png", "layers.png", "mask_first_layer.png"):
        data = (m / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    report = (m / "report.md").read_text()
    assert "![accuracy](accuracy.png)" in report and "Winning-ticket verdict" in report
    result = json.loads((m / "summary.json").read_text())  # the tiny run's dense network trains: far above chance
    assert result["dense_trained"] is True and result["dense_acc"] > 100 / 10 + summary.CHANCE_MARGIN
    assert summary.output_classes(template.path / "runs") == 10 and "**the ticket stays within" in report
    rows = pd.read_csv(m / "rounds.csv")
    assert len(rows) == 2 + 2 * 3 * 2  # r0: 2 trials; r1, r2: 3 variants x 2 trials
    assert sorted(rows[rows["variant"] == "ticket"]["seed"].unique()) == [0, 1]
    reinit = rows[rows["variant"] == "reinit"]
    assert reinit["init_seed"].nunique() == 4  # a fresh init per trial and round

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
