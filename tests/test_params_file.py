"""The committed params.yaml is exactly what conf/ composes to (what `dvc exp run` would write)."""
import shutil
from pathlib import Path

import yaml

from lottery import config
from lottery.params import compose

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_match_conf(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copytree(ROOT / "hydra_plugins", tmp_path / "hydra_plugins")
    composed = yaml.safe_load(compose([], tmp_path).read_text())
    assert composed == yaml.safe_load((ROOT / "params.yaml").read_text()), "run `make params` and commit params.yaml"
    cfg = config.load(ROOT / "params.yaml")
    assert cfg.prune.chain == config.chain(cfg.prune.rounds)
    assert "r0" not in cfg.prune.chain  # the dense round is the `dense` stage


def test_conf_defaults_are_the_dataclass_defaults(tmp_path):
    # The dataclasses (lottery/config.py, help text beside each field) are the documented defaults;
    # conf/config.yaml must list every key with the same value (prune.chain is derived from prune.rounds).
    import dataclasses

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copytree(ROOT / "hydra_plugins", tmp_path / "hydra_plugins")
    composed = yaml.safe_load(compose([], tmp_path, str(tmp_path / "defaults.yaml")).read_text())
    defaults = dataclasses.asdict(config.Config())
    assert composed["prune"].pop("chain") == config.chain(defaults["prune"]["rounds"])
    assert defaults["prune"].pop("chain") == {}
    assert composed == defaults  # values compare as loaded: an int in conf equals its float default


def test_every_preset_composes_to_valid_params(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copytree(ROOT / "hydra_plugins", tmp_path / "hydra_plugins")
    for preset in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        cfg = config.load(compose([f"experiment={preset}"], tmp_path))
        assert cfg.model.name in config.MODELS, preset


def test_each_stage_lists_exactly_the_params_of_its_table_entry():
    # dvc.yaml's params of each stage are config.STAGE_PARAMS, the keys its artifacts' digests cover.
    import dataclasses

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(config.STAGE_PARAMS)
    for name, st in stages.items():
        listed = st.get("do", st).get("params", [])
        assert sorted(listed) == sorted(config.STAGE_PARAMS[name]), name
    cfg = config.Config()
    for keys in config.STAGE_PARAMS.values():
        assert len(set(keys)) == len(keys)
        for key in keys:
            cfg.value(key)  # every key names a params key or section
    # A train key missing from a training stage's params would let `dvc exp run -S train.<key>=...`
    # restore stale rounds from the cache. Only logging, resume cadence and where the processes of a
    # data-parallel round run (not how many: train.world_size is a result param) are left out.
    keys = {f"train.{f.name}" for f in dataclasses.fields(config.TrainConfig)}
    for name in ("dense", "round"):
        assert keys - set(config.STAGE_PARAMS[name]) == {"train.log_every", "train.checkpoint_seconds", "train.nodes",
                                                         "train.backend", "train.address"}, name
    # What determines no stage's outputs is in no list: the round list only for summarize, data.root
    # through data/raw.json (check), and nothing of pruning or controls for the dense round.
    for name, keys in config.STAGE_PARAMS.items():
        assert not {"train.log_every", "train.checkpoint_seconds", "data.root", "data"} & set(keys), name
        if name != "summarize":
            assert not {"prune", "prune.rounds", "prune.chain"} & set(keys), name
    # (prune.layers / prune.ignore only say which weights are prunable: the keys of the dense round's mask;
    # prune.early_bird: the dense round's training is r1's early-bird search)
    assert [k for k in config.STAGE_PARAMS["dense"] if k.startswith("prune") or k == "controls"] == [
        "prune.layers", "prune.ignore", "prune.early_bird"]


def test_imagenet_resnet50_preset_is_frankle_et_al_2020s_setup(tmp_path):
    # Linear Mode Connectivity and the LTH (Table 1) / open_lth's imagenet_resnet_50, in iterations of
    # (1,281,167 - data.validation) / 1024 images: 90 epochs, warm-up 5, drops at 30, 60, 80, rewind to 6.
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copytree(ROOT / "hydra_plugins", tmp_path / "hydra_plugins")
    cfg = config.load(compose(["experiment=imagenet-resnet50"], tmp_path))
    assert (cfg.model.name, cfg.data.dataset, cfg.data.augment) == ("resnet-50", "imagenet", True)
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.batch_size, t.lr_gamma) == ("sgd", 0.4, 0.9, 1e-4, 1024, 0.1)
    assert (t.device, t.precision, t.world_size, t.batch_size // t.world_size) == ("cuda", "bfloat16", 8, 128)
    assert t.stack == 1
    per_epoch = (1_281_167 - cfg.data.validation) / t.batch_size
    assert [t.iterations, t.warmup, *t.lr_drops, cfg.rewind.iteration, t.eval_every] == [
        round(e * per_epoch) for e in (90, 5, 30, 60, 80, 6, 1)]
    assert cfg.rewind.to == "iteration" and 0 < cfg.rewind.iteration < t.lr_drops[0]
    p = cfg.prune
    assert (p.strategy, p.global_kinds, p.rate, p.output_rate, p.criterion) == ("global", ["conv"], 0.2, 0.0, "magnitude")
