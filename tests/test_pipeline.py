"""End to end: real `dvc repro` / `dvc exp run` on the tiny mnist1d experiment."""
from __future__ import annotations

import json
import sys

import pytest
from conftest import ran


def test_repro_writes_every_round_and_a_readable_summary(repo):
    rounds = ["r0", "r1", "r2"]
    for r in rounds:
        for f in ("mask.pt", "model.pt", "controls.pt", "metrics.json"):
            assert (repo.path / "runs" / r / f).stat().st_size > 0
    per_round = json.loads((repo.path / "metrics" / "rounds.json").read_text())
    assert list(per_round) == rounds
    for r in rounds:
        assert set(per_round[r]) >= {"weights_remaining", "test_accuracy", "early_stop_iteration", "final_test_accuracy"}
    # layer-wise 20% of hidden weights, 10% of the output layer, per round (mlp-mnist1d: 4000, 10000, 1000)
    kept1 = 3200 + 8000 + 900
    assert per_round["r0"]["weights_remaining"] == 100.0
    assert per_round["r1"]["weights_remaining"] == round(100 * kept1 / 15000, 4)
    assert per_round["r1"]["reinit"]["test_accuracy"] > 10  # the controls were trained
    # the declared metrics are the headline only: dense accuracy and three numbers per variant
    summary = json.loads((repo.path / "metrics" / "summary.json").read_text())
    assert set(summary) == {"dense_acc", "dense_trained", "criterion", "at", "ticket", "reinit", "random"}
    assert (summary["criterion"], summary["at"]) == ("magnitude", "trained")
    assert all(set(summary[v]) == {"win", "speedup", "gain"} for v in ("ticket", "reinit", "random"))
    assert summary["dense_acc"] == per_round["r0"]["test_accuracy"]
    assert "ticket.win" in repo.dvc("metrics", "show").stdout
    # a second repro has nothing to do
    assert ran(repo.dvc("repro").stdout) == []


def test_changing_rate_reruns_rounds_but_not_prepare_or_init(repo):
    dense = {f: (repo.path / "runs" / "r0" / f).read_bytes() for f in ("mask.pt", "model.pt", "metrics.json")}
    out = repo.dvc("exp", "run", "-S", "prune.rate=0.3").stdout
    assert ran(out) == ["round@r1", "round@r2", "summarize"]  # not `dense`: r0 prunes nothing
    assert repo.params()["prune"]["rate"] == 0.3
    per_round = json.loads((repo.path / "metrics" / "rounds.json").read_text())
    assert per_round["r1"]["weights_remaining"] == round(100 * (2800 + 7000 + 850) / 15000, 4)
    assert {f: (repo.path / "runs" / "r0" / f).read_bytes() for f in dense} == dense  # the dense round's bytes


def test_controls_and_logging_do_not_rerun_the_dense_round(repo):
    dense = {f: (repo.path / "runs" / "r0" / f).read_bytes() for f in ("mask.pt", "model.pt", "metrics.json")}
    out = repo.dvc("exp", "run", "-S", "controls=[reinit]", "-S", "train.log_every=7").stdout
    assert ran(out) == ["round@r1", "round@r2", "summarize"]
    assert {f: (repo.path / "runs" / "r0" / f).read_bytes() for f in dense} == dense


def test_a_round_rerun_after_adding_rounds_keeps_its_bytes(repo):
    # prune.rounds is not an input of round r2: recomputing it after `-S prune.rounds=3` changes nothing
    repo.dvc("exp", "run", "-S", "prune.rounds=3")
    files = ("mask.pt", "model.pt", "controls.pt", "metrics.json")
    before = {f: (repo.path / "runs" / "r2" / f).read_bytes() for f in files}
    assert ran(repo.dvc("repro", "-f", "-s", "round@r2").stdout) == ["round@r2"]
    assert {f: (repo.path / "runs" / "r2" / f).read_bytes() for f in files} == before
    status = repo.dvc("status").stdout
    assert [line for line in status.splitlines() if line and not line.startswith("\t") and "check" not in line] == [], status


def test_zero_rounds_is_the_dense_round_alone(repo):
    out = repo.dvc("exp", "run", "-S", "prune.rounds=0").stdout
    assert ran(out) == ["summarize"]
    assert repo.params()["prune"]["chain"] == {}
    assert list(json.loads((repo.path / "metrics" / "rounds.json").read_text())) == ["r0"]


def test_more_rounds_run_only_the_new_rounds(repo):
    out = repo.dvc("exp", "run", "-S", "prune.rounds=3").stdout
    assert ran(out) == ["round@r3", "summarize"]
    assert list(repo.params()["prune"]["chain"]) == ["r1", "r2", "r3"]
    assert list(json.loads((repo.path / "metrics" / "rounds.json").read_text())) == ["r0", "r1", "r2", "r3"]


@pytest.mark.parametrize("override, key", [("prune.rounds=5000", "prune.rounds"), ("prune.rounds=-1", "prune.rounds"),
                                           ("prune.schedule=sometimes", "prune.schedule")])
def test_a_bad_round_count_fails_the_composition_naming_the_key(repo, override, key):
    before = sorted(p.name for p in (repo.path / "runs").iterdir())
    p = repo.dvc("exp", "run", "-S", override, check=False)
    assert p.returncode != 0
    assert key in p.stderr + p.stdout, p.stderr + p.stdout
    assert ran(p.stdout) == []
    assert sorted(p.name for p in (repo.path / "runs").iterdir()) == before  # no round folder was created


def test_metrics_diff_between_two_experiments(repo):
    repo.dvc("exp", "run", "-n", "rate-a", "-S", "prune.rate=0.3")
    repo.dvc("exp", "run", "-n", "rate-b", "-S", "prune.rate=0.5")
    diff = repo.dvc("metrics", "diff", "rate-a", "rate-b", "--json").stdout
    changes = json.loads(diff)["metrics/summary.json"]
    assert set(changes) <= {"dense_acc"} | {f"{v}.{k}" for v in ("ticket", "reinit", "random")
                                            for k in ("win", "speedup", "gain")}, changes
    shown = repo.dvc("exp", "show", "--no-pager", "--csv").stdout
    assert "rate-a" in shown and "rate-b" in shown and "ticket.win" in shown
    # the headline view (python -m lottery.show; tests/test_docs.py checks it in a fresh clone): 120 columns at most
    table = repo.run(sys.executable, "-m", "lottery.show", "--keep", r".*\.gain$").stdout
    assert "…" not in table and max(map(len, table.splitlines())) <= 120, table
    assert "rate-a" in table and "rate-b" in table and "prune.rate" in table and "random.gain" in table, table
    # plots diff overlays both experiments, offline HTML plus the PNGs
    repo.dvc("plots", "diff", "rate-a", "rate-b", "-o", "plots-out")
    html = (repo.path / "plots-out" / "index.html").read_text()
    assert "rate-a" in html and "rate-b" in html and "weights_remaining" in html
    # mask overlap between the two experiments' tickets
    same = repo.run(sys.executable, "-m", "lottery.compare", "rate-a", "rate-a", "--round", "r1").stdout
    assert "layers.0.weight" in same and "trial 0: 1.0000" in same
    other = repo.run(sys.executable, "-m", "lottery.compare", "rate-a", "rate-b", "--round", "r2").stdout
    values = [float(v) for v in other.split("trial ")[1:] for v in [v.split(":")[1].split()[0]]]
    assert values and all(0 < v < 1 for v in values), other
    bad = repo.run(sys.executable, "-m", "lottery.compare", "rate-a", "no-such-exp", "--round", "r1", check=False)
    assert bad.returncode != 0 and "no-such-exp" in bad.stderr


@pytest.mark.parametrize("round_name, says", [
    ("r99", "round r99 is not in 'HEAD'"),
    ("r1/../../x", "'r1/../../x' is not a round name of 'HEAD'"),
    ("dense", "'dense' is not a round name"),
])
def test_compare_names_a_missing_or_malformed_round_in_one_line(repo, round_name, says):
    p = repo.run(sys.executable, "-m", "lottery.compare", "HEAD", "HEAD", "--round", round_name, check=False)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and says in p.stderr, p.stderr  # one line, no traceback
    assert p.stdout == ""


def test_forced_rerun_of_one_round_gives_identical_bytes(repo):
    before = {f: (repo.path / "runs/r1" / f).read_bytes() for f in ("mask.pt", "model.pt", "controls.pt", "metrics.json")}
    out = repo.dvc("repro", "-f", "-s", "round@r1").stdout
    assert ran(out) == ["round@r1"]
    for f, data in before.items():
        assert (repo.path / "runs/r1" / f).read_bytes() == data, f
    assert ran(repo.dvc("repro").stdout) == []  # nothing downstream changed


def test_bad_param_fails_before_training_and_loses_nothing(repo):
    mask = (repo.path / "runs/r1/mask.pt").read_bytes()
    repo.set_params({"prune": {"rate": 1.5}})
    p = repo.dvc("repro", check=False)
    assert p.returncode != 0
    assert "prune.rate" in p.stderr + p.stdout
    assert "it " not in p.stdout  # no training iteration was logged
    # the cache still holds every round: restoring the params trains nothing
    repo.run("git", "checkout", "params.yaml")
    out = repo.dvc("repro").stdout
    assert ran(out) == []
    assert (repo.path / "runs/r1/mask.pt").read_bytes() == mask


def test_corrupt_previous_round_stops_the_stage_naming_the_file(repo):
    target = repo.path / "runs/r0/model.pt"
    good = target.read_bytes()
    target.write_bytes(good[:100])
    p = repo.run(sys.executable, "-m", "stages.round", "r1", "r0", check=False)
    assert p.returncode == 2
    assert "runs/r0/model.pt" in p.stderr and "corrupt" in p.stderr
    target.write_bytes(good)
    (repo.path / "runs/r0/mask.pt").unlink()
    p = repo.run(sys.executable, "-m", "stages.round", "r1", "r0", check=False)
    assert p.returncode == 2 and "runs/r0/mask.pt" in p.stderr and "missing" in p.stderr
