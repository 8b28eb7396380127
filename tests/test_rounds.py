"""Building a round's stack: prune the previous ticket, rewind to θ0, add controls (lottery.rounds)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lottery import artifacts, config, masks, models, pruning, rounds
from lottery.artifacts import ArtifactError

MODEL = "mlp-mnist1d"
NAMES = ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
SIZES = {"layers.0.weight": 100 * 40, "layers.1.weight": 100 * 100, "layers.2.weight": 10 * 100}


def make_cfg(seed: int = 10, trials: int = 2, controls=("reinit", "random")) -> config.Config:
    return config.from_dict({
        "seed": seed,
        "trials": trials,
        "controls": list(controls),
        "data": {"dataset": "mnist1d", "validation": 500},
        "model": {"name": MODEL},
        "train": {"iterations": 10, "eval_every": 5, "batch_size": 10, "log_every": 0},
        "prune": {"rate": 0.2, "rounds": 3, "chain": config.chain(3)},
    })


@pytest.fixture
def cfg():
    return make_cfg()


@pytest.fixture
def runs(tmp_path, cfg) -> Path:
    runs = tmp_path / "runs"
    rounds.init(cfg, runs / "init")
    return runs


def theta0(runs: Path) -> dict[str, torch.Tensor]:
    tensors, _ = artifacts.load(runs / "init" / "model.pt", "weights")
    return tensors


def fake_round(runs: Path, name: str = "r0", seed: int = 99, cfg: config.Config | None = None) -> dict[str, torch.Tensor]:
    """A previous round written as training would: θ0 perturbed, all-ones mask, metadata round=name and the
    params digest of its stage (of `cfg`, by default the `cfg` fixture's)."""
    params = (cfg or make_cfg()).digest(config.STAGE_PARAMS[config.stage_of(name)])
    weights, meta = artifacts.load(runs / "init" / "model.pt", "weights")
    gen = torch.Generator().manual_seed(seed)
    trained = {k: v * torch.rand(v.shape, generator=gen) * 3 for k, v in weights.items()}
    artifacts.save(runs / name / "model.pt", trained, {**meta, "round": name, "params": params})
    mask, mmeta = artifacts.load(runs / "init" / "mask.pt", "mask")
    artifacts.save(runs / name / "mask.pt", mask, {**mmeta, "round": name, "params": params})
    return trained


# ---------------------------------------------------------------- init and round 0


def test_init_writes_theta0_and_ones_mask(cfg, runs):
    weights, meta = artifacts.load(runs / "init" / "model.pt", "weights")
    assert len(meta.pop("params")) == 16  # digest of the params that produced it
    assert meta == {"kind": "weights", "model": MODEL, "round": "init", "seeds": [10, 11], "iteration": 0}
    ref = models.build(MODEL, [10, 11]).state_dict()
    assert set(weights) == set(ref)
    for k in ref:
        assert torch.equal(weights[k], ref[k]), k
    mask, mmeta = artifacts.load(runs / "init" / "mask.pt", "mask")
    assert mmeta["kind"] == "mask" and mmeta["round"] == "init"
    assert set(mask) == set(NAMES)
    for k in NAMES:
        assert mask[k].dtype == torch.bool and mask[k].shape == ref[k].shape and mask[k].all()


def test_artifact_metadata_digests_exactly_its_stages_params(tmp_path):
    # init's bytes depend on neither pruning, controls, the round count nor logging (STAGE_PARAMS["init"])
    a = make_cfg()
    b = make_cfg(controls=("reinit",))
    b.prune.rate, b.prune.rounds, b.prune.chain, b.train.log_every = 0.5, 2, config.chain(2), 7
    rounds.init(a, tmp_path / "a")
    rounds.init(b, tmp_path / "b")
    for f in ("model.pt", "mask.pt"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    _, meta = artifacts.load(tmp_path / "a" / "model.pt", "weights")
    assert meta["params"] == a.digest(config.STAGE_PARAMS["init"])
    # what the dense round and a pruning round record
    assert rounds._meta(a, "mask", "r0")["params"] == rounds._meta(b, "mask", "r0")["params"] == a.digest(
        config.STAGE_PARAMS["dense"])
    assert rounds._meta(a, "mask", "r2")["params"] == a.digest(config.STAGE_PARAMS["round"])
    assert rounds._meta(a, "mask", "r2")["params"] != rounds._meta(b, "mask", "r2")["params"]  # rate and controls
    b.controls, b.prune.rate = a.controls, a.prune.rate  # prune.rounds and train.log_every alone: the same digest
    assert rounds._meta(a, "mask", "r2")["params"] == rounds._meta(b, "mask", "r2")["params"]


def test_round0_is_the_dense_ticket_at_theta0(cfg, runs):
    stack = rounds.build_stack(cfg, "r0", "init", runs)
    assert stack.variants == ["ticket"]
    assert stack.init_seeds == [10, 11] and stack.mask_seeds == [None, None]
    assert stack.names == NAMES
    state, t0 = stack.model.state_dict(), theta0(runs)
    assert set(state) == set(t0)
    for k in t0:
        assert torch.equal(state[k], t0[k]), k
    for k in NAMES:
        assert stack.mask[k].all() and stack.mask[k].shape == t0[k].shape
    assert stack.rows("ticket") == slice(0, 2)


def test_rounds_must_follow_each_other(cfg, runs):
    fake_round(runs, "r0")
    with pytest.raises(ValueError):
        rounds.build_stack(cfg, "r1", "init", runs)
    with pytest.raises(ValueError):
        rounds.build_stack(cfg, "r2", "r0", runs)
    with pytest.raises(ValueError):
        rounds.build_stack(cfg, "r0", "r0", runs)


# ---------------------------------------------------------------- round 1: ticket and controls


@pytest.fixture
def round1(cfg, runs):
    trained = fake_round(runs, "r0")
    stack = rounds.build_stack(cfg, "r1", "r0", runs)
    return stack, trained, theta0(runs)


def expected_counts(rate=0.2, output_rate=0.1):
    return {k: n - pruning.n_to_prune(output_rate if k == "layers.2.weight" else rate, n) for k, n in SIZES.items()}


def test_round1_layout(cfg, round1):
    stack, _, _ = round1
    assert stack.variants == ["ticket", "reinit", "random"]
    assert len(stack.init_seeds) == 6 and len(stack.mask_seeds) == 6
    assert next(stack.model.parameters()).shape[0] == 6
    assert [stack.rows(v) for v in stack.variants] == [slice(0, 2), slice(2, 4), slice(4, 6)]
    for k in NAMES:
        assert stack.mask[k].shape[0] == 6 and stack.mask[k].dtype == torch.bool
        assert stack.ticket_mask[k].shape[0] == 2


def test_round1_ticket_mask_is_magnitude_pruned_previous_weights(round1):
    stack, trained, _ = round1
    want = expected_counts()
    assert want == {"layers.0.weight": 3200, "layers.1.weight": 8000, "layers.2.weight": 900}
    for k in NAMES:
        assert masks.kept(stack.ticket_mask)[k].tolist() == [want[k]] * 2
        for t in range(2):
            # independent expectation: the largest |w| of the previous round's trained weights survive
            w = trained[k][t].abs().flatten()
            top = torch.zeros(w.numel(), dtype=torch.bool)
            top[torch.topk(w, want[k]).indices] = True
            assert torch.equal(stack.ticket_mask[k][t].flatten(), top), (k, t)
    # the stack's ticket rows carry exactly that mask
    for k in NAMES:
        assert torch.equal(stack.mask[k][stack.rows("ticket")], stack.ticket_mask[k])


def test_round1_ticket_is_rewound_to_theta0(round1):
    stack, trained, t0 = round1
    state = stack.model.state_dict()
    rows = stack.rows("ticket")
    assert stack.init_seeds[rows] == [10, 11] and stack.mask_seeds[rows] == [None, None]
    for k in NAMES:
        w, m = state[k][rows], stack.ticket_mask[k]
        assert torch.equal(w[m], t0[k][m]), k  # survivors: θ0 bit for bit, not the trained weights
        assert (w[~m] == 0).all(), k
        assert not torch.equal(w[m], trained[k][m])
    for j in range(3):
        b = f"layers.{j}.bias"
        assert torch.equal(state[b][rows], t0[b])


def test_round1_random_control(round1):
    stack, _, t0 = round1
    state = stack.model.state_dict()
    rows = stack.rows("random")
    assert stack.init_seeds[rows] == [10, 11]  # θ0 of the same trials
    seeds = stack.mask_seeds[rows]
    assert all(isinstance(s, int) for s in seeds) and seeds[0] != seeds[1]
    rnd = {k: stack.mask[k][rows] for k in NAMES}
    kept, kept_ticket = masks.kept(rnd), masks.kept(stack.ticket_mask)
    for k in NAMES:
        assert torch.equal(kept[k], kept_ticket[k]), k  # same per-layer sparsity
        for t in range(2):
            assert not torch.equal(rnd[k][t], stack.ticket_mask[k][t]), (k, t)
        assert not torch.equal(rnd[k][0], rnd[k][1])
        # weights = θ0 * random mask, bit for bit
        assert torch.equal(state[k][rows], t0[k] * rnd[k]), k
        assert (state[k][rows][~rnd[k]] == 0).all()
    # each trial's random mask is reproducible from its own recorded seed alone
    for t in range(2):
        alone = pruning.random_like({k: m[t:t + 1] for k, m in stack.ticket_mask.items()}, [seeds[t]])
        assert all(torch.equal(alone[k][0], rnd[k][t]) for k in NAMES), t


def test_round1_reinit_control(round1):
    stack, _, t0 = round1
    state = stack.model.state_dict()
    rows = stack.rows("reinit")
    seeds = stack.init_seeds[rows]
    assert seeds[0] != seeds[1]
    assert not set(seeds) & {10, 11}  # not the trial seeds
    assert stack.mask_seeds[rows] == [None, None]
    fresh = models.build(MODEL, seeds).state_dict()
    for k in NAMES:
        m = stack.mask[k][rows]
        assert torch.equal(m, stack.ticket_mask[k]), k  # the ticket's mask
        w = state[k][rows]
        assert (w[~m] == 0).all()
        assert not torch.equal(w[m], t0[k][m])
        assert float((w[m] == t0[k][m]).float().mean()) < 0.01  # survivors re-drawn, not θ0
        assert torch.equal(w, fresh[k] * m), k  # a fresh init from the recorded seed


def test_rewind_reads_theta0_from_the_init_artifact(cfg, runs):
    # θ0 is whatever init wrote, not a re-build from the seed: make the two differ
    weights, meta = artifacts.load(runs / "init" / "model.pt", "weights")
    gen = torch.Generator().manual_seed(1)
    stored = {k: v + torch.randn(v.shape, generator=gen) for k, v in weights.items()}
    artifacts.save(runs / "init" / "model.pt", stored, meta)
    fake_round(runs, "r0")
    stack = rounds.build_stack(cfg, "r1", "r0", runs)
    state = stack.model.state_dict()
    for v in ("ticket", "random"):
        rows = stack.rows(v)
        for k in stored:
            if k in NAMES:
                assert torch.equal(state[k][rows], stored[k] * stack.mask[k][rows]), (v, k)
            else:  # biases are rewound too
                assert torch.equal(state[k][rows], stored[k]), (v, k)


def test_control_seeds_depend_on_round_and_seed(cfg, runs):
    fake_round(runs, "r0")
    r1 = rounds.build_stack(cfg, "r1", "r0", runs)
    # a control's seed derives from its trial's own seed (10 + t) and the round, not from the trial index
    assert rounds.derived_seed(10, "reinit", "r1") == r1.init_seeds[2]
    assert rounds.derived_seed(11, "random", "r1") == r1.mask_seeds[5]
    assert rounds.derived_seed(10, "reinit", "r1") != rounds.derived_seed(10, "reinit", "r2")
    assert rounds.derived_seed(10, "reinit", "r1") != rounds.derived_seed(11, "reinit", "r1")
    assert 0 <= rounds.derived_seed("x") < 2**31


def test_build_stack_is_deterministic(cfg, runs):
    fake_round(runs, "r0")
    a = rounds.build_stack(cfg, "r1", "r0", runs)
    b = rounds.build_stack(cfg, "r1", "r0", runs)
    assert a.init_seeds == b.init_seeds and a.mask_seeds == b.mask_seeds
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(a.mask[k], b.mask[k]) for k in NAMES)


def test_round2_prunes_within_round1_mask(cfg, runs):
    fake_round(runs, "r0")
    r1 = rounds.build_stack(cfg, "r1", "r0", runs)
    # fake a trained r1: its ticket rows, perturbed, with its ticket mask applied
    state = r1.model.state_dict()
    gen = torch.Generator().manual_seed(5)
    tick = r1.rows("ticket")
    weights = {k: v[tick] * (1 + torch.rand(v[tick].shape, generator=gen)) for k, v in state.items()}
    meta = {"model": MODEL, "seeds": [10, 11], "round": "r1", "params": cfg.digest(config.STAGE_PARAMS["round"])}
    artifacts.save(runs / "r1" / "model.pt", weights, {"kind": "weights", **meta})
    artifacts.save(runs / "r1" / "mask.pt", r1.ticket_mask, {"kind": "mask", **meta})
    r2 = rounds.build_stack(cfg, "r2", "r1", runs)
    assert masks.is_subset(r2.ticket_mask, r1.ticket_mask)
    kept = masks.kept(r2.ticket_mask)
    c1 = expected_counts()
    for k in NAMES:
        rate = 0.1 if k == "layers.2.weight" else 0.2
        assert kept[k].tolist() == [c1[k] - pruning.n_to_prune(rate, c1[k])] * 2
    t0 = theta0(runs)
    s2 = r2.model.state_dict()
    for k in NAMES:
        m = r2.ticket_mask[k]
        assert torch.equal(s2[k][r2.rows("ticket")][m], t0[k][m])


def test_no_controls_configured(runs):
    cfg = make_cfg(controls=())
    fake_round(runs, "r0")
    stack = rounds.build_stack(cfg, "r1", "r0", runs)
    assert stack.variants == ["ticket"] and next(stack.model.parameters()).shape[0] == 2


# ---------------------------------------------------------------- broken artifacts


@pytest.mark.parametrize("name, keep", [("mask.pt", lambda n: n // 2), ("model.pt", lambda n: 100)])
def test_truncated_artifact_raises_naming_the_file(cfg, runs, name, keep):
    fake_round(runs, "r0")
    path = runs / "r0" / name
    blob = path.read_bytes()
    path.write_bytes(blob[: keep(len(blob))])
    with pytest.raises(ArtifactError) as e:
        rounds.build_stack(cfg, "r1", "r0", runs)
    assert str(path) in str(e.value)


def test_mask_with_wrong_shape_raises(cfg, runs):
    fake_round(runs, "r0")
    path = runs / "r0" / "mask.pt"
    mask, meta = artifacts.load(path, "mask")
    mask["layers.1.weight"] = mask["layers.1.weight"][:, :, :99]
    artifacts.save(path, mask, meta)
    with pytest.raises(ArtifactError) as e:
        rounds.build_stack(cfg, "r1", "r0", runs)
    assert str(path) in str(e.value) and "layers.1.weight" in str(e.value)


def test_mask_with_missing_layer_raises(cfg, runs):
    fake_round(runs, "r0")
    path = runs / "r0" / "mask.pt"
    mask, meta = artifacts.load(path, "mask")
    del mask["layers.2.weight"]
    artifacts.save(path, mask, meta)
    with pytest.raises(ArtifactError, match="mask.pt"):
        rounds.build_stack(cfg, "r1", "r0", runs)


def test_mask_with_wrong_number_of_trials_raises(cfg, runs):
    fake_round(runs, "r0")
    path = runs / "r0" / "mask.pt"
    mask, meta = artifacts.load(path, "mask")
    artifacts.save(path, {k: v[:1] for k, v in mask.items()}, meta)
    with pytest.raises(ArtifactError, match="mask.pt"):
        rounds.build_stack(cfg, "r1", "r0", runs)


@pytest.mark.parametrize("name", ["mask.pt", "model.pt"])
def test_missing_artifact_raises_naming_the_file(cfg, runs, name):
    fake_round(runs, "r0")
    path = runs / "r0" / name
    path.unlink()
    with pytest.raises(ArtifactError) as e:
        rounds.build_stack(cfg, "r1", "r0", runs)
    assert str(path) in str(e.value)


def test_missing_init_raises(cfg, runs):
    fake_round(runs, "r0")
    shutil.rmtree(runs / "init")
    with pytest.raises(ArtifactError, match="init"):
        rounds.build_stack(cfg, "r1", "r0", runs)


@pytest.mark.parametrize(
    "field, value",
    [("round", "r5"), ("model", "lenet-300-100"), ("seeds", [0, 1]), ("kind", "weights")],
)
def test_mask_metadata_mismatch_raises(cfg, runs, field, value):
    fake_round(runs, "r0")
    path = runs / "r0" / "mask.pt"
    mask, meta = artifacts.load(path, "mask")
    artifacts.save(path, mask, {**meta, field: value})
    with pytest.raises(ArtifactError) as e:
        rounds.build_stack(cfg, "r1", "r0", runs)
    assert str(path) in str(e.value)


def test_artifacts_from_another_seed_are_rejected(runs):
    # the runs were made with seed 10; a config with seed 0 must not silently reuse them
    with pytest.raises(ArtifactError, match="seeds"):
        rounds.build_stack(make_cfg(seed=0), "r0", "init", runs)


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "a" / "x.pt"
    artifacts.save(path, {"w": torch.ones(2)}, {"kind": "mask"})
    artifacts.save(path, {"w": torch.zeros(2)}, {"kind": "mask"})  # overwrite
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]
    tensors, meta = artifacts.load(path, "mask")
    assert torch.equal(tensors["w"], torch.zeros(2)) and meta == {"kind": "mask"}


def test_save_time_invariants_catch_nonzero_pruned():
    weights = {"w": torch.tensor([[0.5, 0.0, 0.3, 0.0]])}
    with pytest.raises(artifacts.ArtifactError, match="not zero"):
        rounds._check_saved(weights, {"w": torch.tensor([[True, False, False, False]])}, "r1")
    rounds._check_saved(weights, {"w": torch.tensor([[True, False, True, False]])}, "r1")


@pytest.mark.parametrize("prev, name", [("r0", "r1"), ("r1", "r2")])
def test_a_loaded_mask_must_keep_exactly_its_rounds_planned_count(cfg, runs, prev, name):
    fake_round(runs, "r0")
    if prev == "r1":  # a real r1 ticket mask (its plan's counts), written as that round would
        r1 = rounds.build_stack(cfg, "r1", "r0", runs)
        meta = {"model": MODEL, "seeds": [10, 11], "round": "r1", "params": cfg.digest(config.STAGE_PARAMS["round"])}
        artifacts.save(runs / "r1" / "model.pt", {k: v[r1.rows("ticket")] for k, v in r1.model.state_dict().items()},
                       {"kind": "weights", **meta})
        artifacts.save(runs / "r1" / "mask.pt", r1.ticket_mask, {"kind": "mask", **meta})
    rounds.build_stack(cfg, name, prev, runs)  # as planned: fine
    path = runs / prev / "mask.pt"
    mask, meta = artifacts.load(path, "mask")
    if prev == "r0":  # a dense round that lost one weight
        mask["layers.1.weight"][1, 0, 0] = False
    else:  # one pruned weight kept again: one more than r1's plan keeps
        mask["layers.1.weight"][1][~mask["layers.1.weight"][1]] = torch.tensor([True] + [False] * 1999)
    artifacts.save(path, mask, meta)
    with pytest.raises(ArtifactError) as e:
        rounds.build_stack(cfg, name, prev, runs)
    kept = 9999 if prev == "r0" else 8001
    planned = 10000 if prev == "r0" else 8000
    assert str(path) in str(e.value)
    assert f"layers.1.weight of trial 1 keep {kept} weights, the plan of {prev} keeps {planned}" in str(e.value)


def test_a_stage_script_turns_only_project_errors_into_one_line(capsys):
    from lottery.cli import run

    def fails(error):
        def main():
            raise error
        return main

    with pytest.raises(SystemExit) as e:
        run(fails(pruning.PruningError("pruning layer 'w' at rate 0.5 would remove all its 1 weights")))
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: pruning layer 'w' at rate 0.5 would remove all its 1 weights\n"
    with pytest.raises(ValueError, match="a bug"):  # anything else keeps its traceback
        run(fails(ValueError("a bug")))


def test_curves_are_written_in_dvclive_layout_and_read_back_by_summarize(tmp_path, monkeypatch):
    curve = [{"iteration": it, "val_loss": [0.5 + it, 0.25 + it], "val_acc": [0.5, 0.875]} for it in (50, 100)]
    order = [("ticket", 0, 0), ("reinit", 0, 1)]
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "stale.tsv").write_text("left by an earlier run\n")
    rounds.log_curves(tmp_path / "live", order, curve)
    acc = (tmp_path / "live/plots/metrics/reinit/0/val_acc.tsv").read_text().split()
    assert acc == ["step", "val_acc", "50", "87.5", "100", "87.5"]  # DVCLive's TSV: step = iteration, accuracy in %
    assert not (tmp_path / "live" / "stale.tsv").exists() and not list(tmp_path.glob(".live*"))
    # the same files, byte for byte, as DVCLive itself writes (outside any repository)
    from dvclive import Live

    monkeypatch.chdir(tmp_path)
    live = Live(str(tmp_path / "dvclive"), dvcyaml=None, save_dvc_exp=False, report=None)
    for row in curve:
        live.step = row["iteration"]
        for v, t, i in order:
            live.log_metric(f"{v}/{t}/val_acc", round(100 * row["val_acc"][i], 4))
            live.log_metric(f"{v}/{t}/val_loss", round(row["val_loss"][i], 6))
        live.next_step()
    live.end()
    ours = {p.relative_to(tmp_path / "live"): p.read_bytes() for p in (tmp_path / "live").rglob("*") if p.is_file()}
    theirs = {p.relative_to(tmp_path / "dvclive"): p.read_bytes() for p in (tmp_path / "dvclive").rglob("*") if p.is_file()}
    assert ours.keys() == theirs.keys() and ours == theirs
    from lottery import summary

    got = summary.read_curves(tmp_path / "live").sort_values(["variant", "iteration"]).to_dict("records")
    assert got == [
        {"iteration": 50, "variant": "reinit", "trial": 0, "val_loss": 50.25, "val_acc": 87.5},
        {"iteration": 100, "variant": "reinit", "trial": 0, "val_loss": 100.25, "val_acc": 87.5},
        {"iteration": 50, "variant": "ticket", "trial": 0, "val_loss": 50.5, "val_acc": 50.0},
        {"iteration": 100, "variant": "ticket", "trial": 0, "val_loss": 100.5, "val_acc": 50.0},
    ]
