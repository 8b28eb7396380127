"""Pruning strategies, criteria, schedules, rewinding variants, augmentation and the paper presets."""
from __future__ import annotations

import dataclasses
import gzip
import pickle
import re
import sys
import time

import numpy as np
import pytest
import torch

from conftest import make_repo, env_for, ran
from lottery import artifacts, config, masks, models, pruning, rounds
from lottery.config import PruneConfig, TrainConfig
from lottery.data import TensorData, augment_batch
from lottery.training import lr_at, train


def test_global_pruning_ranks_the_pooled_layers_together():
    score = {"a": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "b": torch.tensor([[0.5, 5.0, 6.0, 7.0, 8.0, 9.0]]),
             "out": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}
    mask = {k: torch.ones_like(v, dtype=torch.bool) for k, v in score.items()}
    new = pruning.prune(score, mask, pruning.Plan({"a": 0.5, "b": 0.5, "out": 0.25}, pooled=["a", "b"], pooled_rate=0.3))
    # 30% of the 10 pooled weights = 3: the three lowest across a and b (0.5, 1, 2)
    assert new["a"].tolist() == [[False, False, True, True]]
    assert new["b"].tolist() == [[False, True, True, True, True, True]]
    assert new["out"].tolist() == [[False, True, True, True]]  # layer-wise, 25% of 4
    again = pruning.prune(score, new, pruning.Plan({"a": 0.5, "b": 0.5, "out": 0.25}, pooled=["a", "b"], pooled_rate=0.3))
    assert sum(int(again[k].sum()) for k in ("a", "b")) == 7 - 2  # round_half_up(0.3 * 7) = 2
    assert masks.is_subset(again, new)


def test_conv_kinds_get_their_own_rates():
    model = models.build("conv-2", [0])
    kinds = models.kinds(model)
    rates = pruning.plan(PruneConfig(rate=0.2, conv_rate=0.1), kinds, 1).rates
    assert set(rates.values()) == {0.1, 0.2} and all(rates[k] == 0.2 for k, kind in kinds.items() if kind == "fc")
    mask = masks.ones(model, models.prunable(model))
    w = {k: v.detach() for k, v in model.named_parameters()}
    new = pruning.prune(pruning.scores("magnitude", w, w), mask, pruning.Plan(rates))
    for k, m in new.items():
        n = mask[k].numel()
        assert int(m.sum()) == n - pruning.n_to_prune(rates[k], n), k


def test_criteria():
    trained = {"w": torch.tensor([[3.0, -1.0, 0.5, -4.0]])}
    start = {"w": torch.tensor([[2.9, 0.1, 0.1, -0.5]])}
    mask = {"w": torch.ones(1, 4, dtype=torch.bool)}
    inc = pruning.prune(pruning.scores("magnitude_increase", trained, start), mask, pruning.Plan({"w": 0.5}))
    assert inc["w"].tolist() == [[False, True, False, True]]  # increases 0.1, 0.9, 0.4, 3.5
    mag = pruning.prune(pruning.scores("magnitude", trained, start), mask, pruning.Plan({"w": 0.5}))
    assert mag["w"].tolist() == [[True, False, False, True]]
    rnd = pruning.prune(pruning.scores("random", trained, start, [1]), mask, pruning.Plan({"w": 0.5}))
    assert int(rnd["w"].sum()) == 2
    # each network's random scores come from its own seed, whatever the stack
    two = pruning.scores("random", {"w": trained["w"].expand(2, 4)}, start, [5, 1])
    assert torch.equal(two["w"][1], pruning.scores("random", trained, start, [1])["w"][0])


def test_oneshot_chain_and_rate():
    assert config.chain(3, "oneshot") == {"r1": "r0", "r2": "r0", "r3": "r0"}
    assert config.chain(2) == {"r1": "r0", "r2": "r1"}
    assert 1 - pruning.plan(PruneConfig(schedule="oneshot"), {"w": "fc"}, 3).rates["w"] == pytest.approx(0.512)


def test_lr_schedule_warmup_and_drops():
    cfg = TrainConfig(lr=0.1, warmup=10, lr_drops=[20, 30], lr_gamma=0.5, iterations=40)
    assert [lr_at(i, cfg) for i in (1, 5, 10, 20, 21, 30, 31)] == pytest.approx([0.01, 0.05, 0.1, 0.1, 0.05, 0.05, 0.025])


def _data(n=200, d=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x[:, :10].argmax(1)
    return TensorData(x, y, x[:40], y[:40], x[40:80], y[40:80])


def test_schedule_resumes_at_k_bit_for_bit():
    # Stateless SGD: k iterations, then the rest with start=k, equals one uninterrupted run.
    cfg = TrainConfig(optimizer="sgd", lr=0.05, iterations=60, eval_every=20, batch_size=16, log_every=0,
                      warmup=15, lr_drops=[40])
    full = models.build("mlp-mnist1d", [7])
    mask = masks.ones(full, models.prunable(full))
    train(full, mask, _data(), cfg, [7], log=lambda *_: None)
    part = models.build("mlp-mnist1d", [7])
    train(part, mask, _data(), dataclasses.replace(cfg, iterations=25, eval_every=25), [7], log=lambda *_: None)
    train(part, mask, _data(), cfg, [7], log=lambda *_: None, start=25)
    for (k, a), b in zip(full.state_dict().items(), part.state_dict().values()):
        assert torch.equal(a, b), k


def _cfg(tmp_path, **over):
    raw = {"trials": 2, "model": {"name": "mlp-mnist1d"}, "data": {"dataset": "mnist1d", "validation": 40},
           "train": {"iterations": 40, "eval_every": 10, "batch_size": 16, "log_every": 0},
           "prune": {"rounds": 2, "chain": config.chain(2)}}
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return config.from_dict(raw)


def _prepared(tmp_path):
    from lottery.data import prepared_params, save_prepared

    d = _data()
    path = tmp_path / "prepared.pt"
    save_prepared({"x_train": d.train.x, "y_train": d.train.y, "x_val": d.val.x, "y_val": d.val.y,
                   "x_test": d.test.x, "y_test": d.test.y, "mean": torch.zeros(1), "std": torch.ones(1)}, path, prepared_params(_cfg(tmp_path)))
    return path


def test_rewind_to_iteration_k_restores_theta_k(tmp_path):
    cfg = _cfg(tmp_path, rewind={"to": "iteration", "iteration": 20})
    runs, data = tmp_path / "runs", _prepared(tmp_path)
    rounds.init(cfg, runs / "init", data, log=lambda *_: None)
    theta_k, meta = artifacts.load(runs / "init" / "model.pt", "weights")
    assert meta["iteration"] == 20
    ref = models.build("mlp-mnist1d", [0, 1])
    from lottery.data import load_prepared
    train(ref, masks.ones(ref, models.prunable(ref)), load_prepared(data),
          dataclasses.replace(cfg.train, iterations=20, eval_every=20), [0, 1], log=lambda *_: None)
    for k, v in ref.state_dict().items():
        assert torch.equal(theta_k[k], v), k
    stack = rounds.build_stack(cfg, "r0", "init", runs)
    assert stack.start == 20
    for k, v in stack.model.state_dict().items():
        assert torch.equal(v, theta_k[k]), k
    wrong = _cfg(tmp_path, rewind={"to": "iteration", "iteration": 10})
    with pytest.raises(artifacts.ArtifactError, match="model.pt: written with other values of stage 'init's params"):
        rounds.build_stack(wrong, "r0", "init", runs)  # θ20 read for θ10: the params digest tells
    for name, kind in (("model.pt", "weights"), ("mask.pt", "mask")):  # digests forged: the iteration still tells
        tensors, meta = artifacts.load(runs / "init" / name, kind)
        artifacts.save(runs / "init" / name, tensors, {**meta, "params": wrong.digest(config.STAGE_PARAMS["init"])})
    with pytest.raises(artifacts.ArtifactError, match="rewind point at iteration 20"):
        rounds.build_stack(wrong, "r0", "init", runs)


def test_rewinding_to_iteration_k_counts_theta_k_training_once(tmp_path):
    """Compute accounting (lottery.flops): the rounds train 40 - 20 iterations from θ20; θ20 cost init 20 dense
    iterations, counted once in every total that needs θk (each variant's needs: tests/test_flops.py)."""
    from lottery import summary

    cfg = _cfg(tmp_path, rewind={"to": "iteration", "iteration": 20})
    runs, data = tmp_path / "runs", _prepared(tmp_path)
    rounds.init(cfg, runs / "init", data, log=lambda *_: None)
    r0 = rounds.run_round(cfg, "r0", "init", runs, data, log=lambda *_: None)
    r1 = rounds.run_round(cfg, "r1", "r0", runs, data, log=lambda *_: None)
    dense = 40 * 100 + 100 * 100 + 100 * 10  # mlp-mnist1d's multiply-adds per example
    kept = (4000 - 800) + (10000 - 2000) + (1000 - 100)  # r1: 20% of the hidden layers, 10% of the output layer
    assert r0["cost"]["init"] == r1["cost"]["init"] == {"iterations": 20, "train_flops": 3 * dense * 16 * 20}
    assert r1["cost"]["sources"] == {"mask": "r0", "start": "init",
                                     "needs": {"ticket": ["mask", "start"], "reinit": ["mask"], "random": ["start"]}}
    for m, macs in ((r0, dense), (r1, kept)):
        assert {(n["iterations"], n["forward_macs"], n["train_flops"]) for n in m["networks"]} == \
            {(20, macs, 3 * macs * 16 * 20)}
    df = summary.collect(runs, ["r0", "r1"]).df.set_index(["round", "variant", "trial"])
    theta_k, own0, own1 = 3 * dense * 16 * 20, 3 * dense * 16 * 20, 3 * kept * 16 * 20
    assert df.loc[("r1", "ticket", 1), ["cumulative_iterations", "cumulative_flops"]].tolist() == [60, theta_k + own0 + own1]
    assert df.loc[("r1", "reinit", 0), "cumulative_flops"] == theta_k + own0 + own1
    assert df.loc[("r1", "random", 0), ["cumulative_iterations", "cumulative_flops"]].tolist() == [40, theta_k + own1]


@pytest.mark.parametrize("to", ["lr", "finetune"])
def test_lr_rewinding_and_finetuning_keep_the_trained_weights(tmp_path, to):
    cfg = _cfg(tmp_path, rewind={"to": to})
    runs, data = tmp_path / "runs", _prepared(tmp_path)
    rounds.init(cfg, runs / "init")
    rounds.run_round(cfg, "r0", "init", runs, data, log=lambda *_: None)
    trained, _ = artifacts.load(runs / "r0" / "model.pt", "weights")
    stack = rounds.build_stack(cfg, "r1", "r0", runs)
    rows = stack.rows("ticket")
    for k, v in stack.model.state_dict().items():
        expect = trained[k] * stack.mask[k][rows] if k in stack.mask else trained[k]
        assert torch.equal(v[rows], expect), k
    assert stack.start == 0  # the schedule is replayed from the start
    assert stack.constant_lr == (cfg.rewind.finetune_lr if to == "finetune" else None)


def test_oneshot_round_prunes_the_dense_round(tmp_path):
    cfg = config.from_dict({**dataclasses.asdict(_cfg(tmp_path)), "prune": {
        **dataclasses.asdict(_cfg(tmp_path).prune), "schedule": "oneshot", "chain": config.chain(2, "oneshot")}})
    runs, data = tmp_path / "runs", _prepared(tmp_path)
    rounds.init(cfg, runs / "init")
    rounds.run_round(cfg, "r0", "init", runs, data, log=lambda *_: None)
    stack = rounds.build_stack(cfg, "r2", "r0", runs)
    kept = masks.kept(stack.ticket_mask)
    # layers of 4000, 10000 (fc, 20%) and 1000 (output, 10%), two one-shot steps' worth
    assert [int(v[0]) for v in kept.values()] == [4000 - pruning.n_to_prune(1 - 0.8 ** 2, 4000),
                                                  10000 - pruning.n_to_prune(1 - 0.8 ** 2, 10000),
                                                  1000 - pruning.n_to_prune(1 - 0.9 ** 2, 1000)]
    with pytest.raises(ValueError, match="prunes 'r0'"):
        rounds.build_stack(cfg, "r2", "r1", runs)


def test_augmentation_is_a_padded_crop_or_flip():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    again = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        candidates = [img[:, dy:dy + 32, dx:dx + 32] for img in (padded[i], padded[i].flip(-1))
                      for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) for c in candidates)


# --- presets end to end ---------------------------------------------------------------

def write_cifar(root, n_per_batch=12, n_test=12):
    """CIFAR-10's python format: data_batch_1..5 and test_batch pickles of uint8 rows."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(d))


def write_idx(folder, n_train=80, n_test=20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        head = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        (folder / f"{stem}-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + imgs.tobytes()))
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{stem}-labels-idx1-ubyte.gz").write_bytes(gzip.compress((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.tobytes()))


def test_presets_run_one_short_round_through_dvc(tmp_path):
    """Two presets end to end: an MLP on MNIST's idx files and a BatchNorm ResNet on CIFAR's pickles. Every
    preset composes and validates (tests/test_params_file.py), conv-2, VGG-19 and ResNet-20 train masked steps
    (tests/test_models.py); each DVC experiment costs ~20 s of start-ups, so the other four are not rerun here."""
    repo = make_repo(tmp_path / "repo", env_for(tmp_path), {"trials": 1, "prune": {"rounds": 1}})
    write_cifar(repo.path / "data" / "raw")
    write_idx(repo.path / "data" / "raw" / "mnist")
    # data/raw is git-ignored: `dvc exp run` (not --temp) runs in this workspace, which has them
    short = ["-S", "train.iterations=4", "-S", "train.eval_every=2", "-S", "train.warmup=0", "-S", "train.lr_drops=[]",
             "-S", "train.batch_size=8", "-S", "data.validation=10", "-S", "prune.rounds=1", "-S", "trials=1",
             "-S", "controls=[]"]
    for preset, model in [("lenet", "lenet-300-100"), ("resnet20", "resnet-20")]:
        out = repo.dvc("exp", "run", "-n", preset, "-S", f"experiment={preset}", *short, "round@r1").stdout
        assert "round@r1" in ran(out), out
        assert repo.params()["model"]["name"] == model
        assert (repo.path / "runs/r1/metrics.json").exists()
    rows = repo.dvc("exp", "show", "--csv").stdout
    for preset in ("lenet", "resnet20"):
        assert preset in rows
    bad = repo.dvc("exp", "run", "-S", "experiment=alexnet", check=False)
    assert bad.returncode != 0 and "alexnet" in (bad.stderr + bad.stdout)


def test_a_round_ends_its_log_with_the_seconds_and_share_of_each_part(tmp_path):
    # (the time line of issue 21: timings go to the log only; the byte-identical reruns of tests/test_pipeline.py
    # show they are in no artifact)
    cfg = _cfg(tmp_path)
    runs, data = tmp_path / "runs", _prepared(tmp_path)
    rounds.init(cfg, runs / "init", data, log=lambda *_: None)
    lines: list[str] = []
    rounds.run_round(cfg, "r0", "init", runs, data, log=lines.append, started=time.perf_counter())
    number = r"(\d+\.\d)s (\d+)%"
    parts = ("start-up", "steps", "validation", "test", "saving", "other")
    m = re.fullmatch(r"\[r0\] time (\d+\.\d)s: " + ", ".join(f"{p} {number}" for p in parts), lines[-1])
    assert m, lines[-1]
    total, seconds, shares = float(m[1]), [float(s) for s in m.groups()[1::2]], [int(s) for s in m.groups()[2::2]]
    assert abs(sum(seconds) - total) <= 0.05 * (len(parts) + 1)  # (each rounded to 0.1 s)
    assert abs(sum(shares) - 100) <= len(parts)  # (each rounded to 1 %)
    assert any(line.startswith("[r0] start-up ") for line in lines)
