"""Early-bird search (lottery.early_bird): the mask distance, the stopping rule, the search beside a round's
training, and one real `dvc repro` whose next round prunes the weights of the early-bird iteration."""
from __future__ import annotations

import json
import re
import sys

import pandas as pd
import pytest
import torch
from conftest import ran

from lottery import artifacts, config, early_bird, masks, rounds
from lottery.data import load_prepared
from lottery.training import train


def test_distance_is_the_fraction_of_the_choosable_positions_that_differ():
    among = {"a": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool),
             "b": torch.tensor([[[1, 1], [0, 0]], [[1, 1], [1, 1]]], dtype=torch.bool)}  # 6 and 8 positions kept
    x = {"a": torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool),
         "b": torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)}
    y = {"a": torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool),
         "b": torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 1]]], dtype=torch.bool)}
    d = masks.distance(x, y, among)
    assert d.dtype == torch.float64 and d.tolist() == [3 / 6, 1 / 8]  # positions 0, 1 of `a` and 1 of `b`; 3 of `b`
    assert masks.distance(x, x, among).tolist() == [0.0, 0.0]
    dense = {k: torch.ones_like(m) for k, m in among.items()}  # the dense round: every position (You et al.)
    assert masks.distance(x, y, dense).tolist() == [3 / 8, 1 / 8]


@pytest.mark.parametrize("distances, window, drawn", [
    ([], 1, False),
    ([0.05], 1, True),
    ([0.3, 0.09, 0.09, 0.09, 0.09], 5, False),  # the window holds 0.3
    ([0.3, 0.09, 0.09, 0.09, 0.09, 0.09], 5, True),
    ([0.01, 0.01, 0.01, 0.01], 5, False),  # fewer distances than the window
    ([0.01, 0.01, 0.1, 0.01, 0.01, 0.01], 5, False),  # not below epsilon: 0.1 is not < 0.1
    ([0.01, 0.01, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01], 5, True),
])
def test_stopping_rule_on_a_synthetic_sequence(distances, window, drawn):
    assert early_bird.drawn(distances, 0.1, window) is drawn


def test_search_keeps_each_trials_weights_of_its_early_bird_iteration_and_then_stops_computing():
    # 2 trials in rows 1..2 of a 3-network stack; the "pruning" keeps the top-2 weights of each network
    among = {"w": torch.ones(2, 4, dtype=torch.bool)}
    calls = []

    def next_mask(w, trials):
        calls.append(list(trials))
        top = w["w"].topk(2, dim=1).indices
        return {"w": torch.zeros_like(w["w"], dtype=torch.bool).scatter_(1, top, True)}

    s = early_bird.Search(slice(1, 3), among, next_mask, epsilon=0.3, window=2)
    # trial 0's top-2 changes at 20 then holds; trial 1's keeps changing until 40, then holds
    states = {10: [[4, 3, 2, 1], [1, 2, 3, 4]], 20: [[4, 1, 3, 2], [4, 3, 2, 1]], 30: [[5, 1, 4, 2], [1, 2, 4, 3]],
              40: [[6, 1, 5, 2], [3, 1, 4, 2]], 50: [[7, 1, 6, 2], [3, 1, 5, 2]], 60: [[8, 1, 7, 2], [3, 1, 6, 2]]}
    for it, rows in states.items():
        s(it, {"w": torch.tensor([[9.0, 9, 9, 9], *rows])})
    assert s.iteration == [40, 60]
    assert s.curve[0] == [(20, 0.5), (30, 0.0), (40, 0.0)]  # distances over the 4 choosable positions
    assert s.curve[1] == [(20, 1.0), (30, 1.0), (40, 0.5), (50, 0.0), (60, 0.0)]
    assert s.weights["w"].tolist() == [[6, 1, 5, 2], [3, 1, 6, 2]]
    assert calls == [[0, 1]] * 4 + [[1]] * 2  # a trial that stopped costs nothing more
    s(70, {"w": torch.zeros(3, 4)})
    assert len(calls) == 6
    s.finish({"w": torch.zeros(3, 4)})  # both drew: the final weights are not theirs
    assert s.weights["w"].tolist() == [[6, 1, 5, 2], [3, 1, 6, 2]]


@pytest.mark.parametrize("over, key", [
    ({"prune": {"early_bird": {"epsilon": 0}}}, "prune.early_bird.epsilon"),
    ({"prune": {"early_bird": {"epsilon": 1.5}}}, "prune.early_bird.epsilon"),
    ({"prune": {"early_bird": {"window": 0}}}, "prune.early_bird.window"),
    ({"prune": {"early_bird": {"enabled": "yes"}}}, "prune.early_bird.enabled"),
    ({"prune": {"early_bird": {"windows": 3}}}, "prune.early_bird.windows"),
    ({"prune": {"early_bird": {"enabled": True}, "schedule": "oneshot", "chain": config.chain(15, "oneshot")}},
     "prune.early_bird.enabled"),
    ({"prune": {"early_bird": {"enabled": True}, "at": "init", "criterion": "snip"}}, "prune.early_bird.enabled"),
    ({"prune": {"early_bird": {"enabled": True}}, "rewind": {"to": "lr"}}, "prune.early_bird.enabled"),
])
def test_bad_early_bird_params_name_the_key(over, key):
    raw = {"prune": {"chain": config.chain(15)}}
    for section, values in over.items():
        raw[section] = {**raw.get(section, {}), **values}
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(raw)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_defaults_are_the_papers_and_off():
    e = config.Config().prune.early_bird
    assert (e.enabled, e.epsilon, e.window) == (False, 0.1, 5)


def test_repro_prunes_the_weights_of_the_early_bird_iteration(repo):
    # evaluations at 25, 50, ..., 200; window 2 and epsilon 1: every trial draws at the third evaluation, 75
    repo.run(sys.executable, "-m", "lottery.params", "train.eval_every=25", "prune.rounds=1",
             "prune.early_bird.enabled=true", "prune.early_bird.epsilon=1.0", "prune.early_bird.window=2")
    out = repo.dvc("repro").stdout
    assert ran(out) == ["dense", "round@r1", "summarize"]
    runs = repo.path / "runs"
    cfg = config.load(repo.path / "params.yaml")
    for name in ("r0", "r1"):
        m = json.loads((runs / name / "metrics.json").read_text())
        assert [t["iteration"] for t in m["early_bird"]["trials"]] == [75, 75], name
        assert [t["saved"] for t in m["early_bird"]["trials"]] == [0.625, 0.625]  # 125 of 200 iterations
        assert [n.get("early_bird_iteration") for n in m["networks"] if n["variant"] == "ticket"] == [75, 75]
        for t in (0, 1):
            tsv = (runs / name / "live/plots/metrics/ticket" / str(t) / "mask_distance.tsv").read_text().split("\n")
            assert tsv[0] == "step\tmask_distance" and [r.split("\t")[0] for r in tsv[1:-1]] == ["50", "75"], tsv
    table = pd.read_csv(repo.path / "metrics" / "rounds.csv")
    tickets = table[table["variant"] == "ticket"]
    assert tickets["early_bird_iteration"].tolist() == [75] * 4 and tickets["early_bird_saved"].tolist() == [0.625] * 4
    assert table[table["variant"] != "ticket"]["early_bird_iteration"].isna().all()

    # Independently: r0's networks retrained to iteration 75, pruned as round r1 prunes, give r1's mask, which is
    # not the mask of r0's final (iteration 200) weights.
    data = load_prepared(repo.path / "data" / "prepared.pt")
    stack = rounds.build_stack(cfg, "r0", "init", runs, data)
    short = config.TrainConfig(**{**vars(cfg.train), "iterations": 75})
    train(stack.model, stack.mask, data, short, order_seeds=stack.order_seeds, log=lambda *a: None)
    at75 = {k: v.detach() for k, v in stack.model.state_dict().items() if k in stack.names}
    kept, _ = artifacts.load(runs / "r0" / "early_bird.pt", "weights")
    assert all(torch.allclose(kept[k], at75[k], atol=1e-5) for k in stack.names)
    want, _ = rounds.prune_trained(cfg, "r1", stack.kinds, stack.theta0, at75, stack.ticket_mask)
    r1, _ = artifacts.load(runs / "r1" / "mask.pt", "mask")
    assert all(torch.equal(r1[k], want[k]) for k in stack.names)
    final, _ = artifacts.load(runs / "r0" / "model.pt", "weights")
    full, _ = rounds.prune_trained(cfg, "r1", stack.kinds, stack.theta0, final, stack.ticket_mask)
    assert any(not torch.equal(r1[k], full[k]) for k in stack.names)
    assert masks.percent_remaining(r1).tolist() == masks.percent_remaining(full).tolist()  # same plan, same counts

    # with the search on, the dense stage's params hold the keys it searched under: a changed rate reruns it (r0)
    repo.run(sys.executable, "-m", "lottery.params", "train.eval_every=25", "prune.rounds=1", "prune.rate=0.3",
             "prune.early_bird.enabled=true", "prune.early_bird.epsilon=1.0", "prune.early_bird.window=2")
    status = repo.dvc("status", "dense").stdout
    assert re.search(r"^dense:\n\tchanged deps:\n\t\tparams.yaml:\n\t\t\tmodified: +prune.early_bird$", status, re.M), status


def test_a_resumed_training_continues_the_search_where_it_stopped(tmp_path):
    # the search's state travels with the resume point: a crash after it was saved at iteration 60 and a resumed
    # run give the same early-bird iterations, distances and weights as an uninterrupted run
    from lottery import models, pruning
    from test_training import cfg, synthetic_data

    class Crash(Exception):
        pass

    def run(resume_dir, crash_at=None):
        model = models.build("mlp-mnist1d", [0, 1])
        names = models.prunable(model)
        mask = masks.ones(model, names)
        kinds = models.kinds(models.build("mlp-mnist1d", [0]))
        plan = pruning.plan(config.PruneConfig(rate=0.5), kinds, 1)

        def next_mask(w, trials):
            return pruning.prune(pruning.scores("magnitude", w, {}), {k: mask[k][trials] for k in names}, plan)

        search = early_bird.Search(slice(0, 2), mask, next_mask, epsilon=0.2, window=3)

        def watch(it, state):
            if it == crash_at:
                raise Crash()
            search(it, state)

        watch.key, watch.state_dict, watch.load_state_dict = search.key, search.state_dict, search.load_state_dict
        train(model, mask, synthetic_data(), cfg(iterations=300, eval_every=10), [0, 1], resume_dir=resume_dir,
              checkpoint_seconds=0.0, watch=watch, log=lambda *a: None)
        search.finish(model.state_dict())
        return search

    whole = run(None)
    assert all(it is not None and it < 300 for it in whole.iteration), whole.iteration
    crash_at = min(whole.iteration) + 10  # trial 0 or 1 has drawn; the point saved at the evaluation before
    with pytest.raises(Crash):
        run(tmp_path, crash_at)
    resumed = run(tmp_path)
    assert resumed.iteration == whole.iteration and resumed.curve == whole.curve
    assert all(torch.equal(resumed.weights[k], whole.weights[k]) for k in whole.weights)


def test_a_round_prunes_early_bird_pt_and_refuses_one_searched_under_other_pruning_params(tmp_path):
    # early_bird.pt records the values it searched under, and r1 refuses one that does not match params.yaml's (the
    # dense stage's params make DVC rerun the search first: test_a_changed_rate_reruns_the_search_only_when_it_is_on)
    from test_rounds import NAMES, fake_round

    def make(rate):
        return config.from_dict({"trials": 2, "data": {"dataset": "mnist1d", "validation": 500},
                                 "model": {"name": "mlp-mnist1d"}, "controls": [],
                                 "train": {"iterations": 10, "eval_every": 5, "batch_size": 10, "log_every": 0},
                                 "prune": {"rate": rate, "rounds": 1, "chain": config.chain(1),
                                           "early_bird": {"enabled": True, "search": config.early_bird_search(
                                               True, "layerwise", rate, None, None, ["conv"], {}, "magnitude")}}})

    cfg, runs = make(0.2), tmp_path / "runs"
    rounds.init(cfg, runs / "init")
    final = fake_round(runs, "r0", cfg=cfg)
    bird = {k: final[k].flip(-1) for k in NAMES}  # other weights than model.pt's
    meta = {"kind": "weights", "model": cfg.model.name, "round": "r0", "seeds": [0, 1],
            "params": config.artifact_params(cfg, "r0"), "early_bird_iteration": [5, 5]}
    artifacts.save(runs / "r0" / "early_bird.pt", bird, {**meta, "searched_with": cfg.digest(config.SEARCH_KEYS)})
    stack = rounds.build_stack(cfg, "r1", "r0", runs)
    ones = {k: torch.ones(final[k].shape, dtype=torch.bool) for k in NAMES}
    assert all(torch.equal(stack.ticket_mask[k], m) for k, m in
               rounds.prune_trained(cfg, "r1", stack.kinds, {}, bird, ones)[0].items())
    assert any(not torch.equal(stack.ticket_mask[k], m) for k, m in
               rounds.prune_trained(cfg, "r1", stack.kinds, {}, final, ones)[0].items())
    other = make(0.3)
    artifacts.save(runs / "r0" / "early_bird.pt", bird, {**meta, "searched_with": other.digest(config.SEARCH_KEYS)})
    with pytest.raises(artifacts.ArtifactError, match=r"early_bird.pt: searched for the next round's mask under other "
                                                      r"values of prune.strategy, prune.rate.*`dvc repro -f dense`$"):
        rounds.build_stack(cfg, "r1", "r0", runs)
