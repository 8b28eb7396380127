"""params.yaml loading and validation (lottery.config): every bad value is named by its key."""
from __future__ import annotations

import copy
import math

import pytest
import yaml

from lottery import config, pruning
from lottery.config import Config, ConfigError


def output_rate(cfg: Config) -> float:
    return pruning.plan(cfg.prune, {"out": "output"}, 1).rates["out"]


def valid() -> dict:
    """A complete, valid params dict (what conf/ generates into params.yaml)."""
    return {
        "seed": 3,
        "trials": 2,
        "controls": ["reinit", "random"],
        "data": {"dataset": "fashion-mnist", "validation": 5000, "train_subset": 0, "root": "data/raw"},
        "model": {"name": "lenet-300-100"},
        "train": {
            "optimizer": "adam", "lr": 1.2e-3, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 60,
            "iterations": 3000, "eval_every": 100, "device": "cpu", "log_every": 500,
        },
        "prune": {"strategy": "layerwise", "rate": 0.2, "output_rate": None, "rounds": 4, "chain": config.chain(4)},
        "summary": {"tolerance": 0.5},
    }


def test_chain():
    # the dense round r0 is the `dense` stage, not a chain entry: prune.rounds=0 is the dense round alone
    assert config.chain(0) == {}
    assert config.chain(3) == {"r1": "r0", "r2": "r1", "r3": "r2"}
    assert len(config.chain(config.MAX_ROUNDS)) == config.MAX_ROUNDS
    assert config.round_names(config.from_dict({"prune": {"rounds": 0, "chain": {}}}).prune) == ["r0"]
    assert config.round_names(config.from_dict({"prune": {"rounds": 2, "chain": config.chain(2)}}).prune) == ["r0", "r1", "r2"]


@pytest.mark.parametrize("rounds, schedule, key", [
    (-1, "iterative", "prune.rounds"), (config.MAX_ROUNDS + 1, "iterative", "prune.rounds"),
    ("3", "iterative", "prune.rounds"), (2.0, "iterative", "prune.rounds"), (True, "iterative", "prune.rounds"),
    (3, "one-shot", "prune.schedule"), (3, "r1: x", "prune.schedule"),
])
def test_chain_rejects_what_could_not_name_a_round(rounds, schedule, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.chain(rounds, schedule)


def test_from_dict_valid():
    cfg = config.from_dict(valid())
    assert isinstance(cfg, Config)
    assert cfg.seed == 3 and cfg.trials == 2 and cfg.controls == ["reinit", "random"]
    assert cfg.data.dataset == "fashion-mnist" and cfg.data.validation == 5000
    assert cfg.model.name == "lenet-300-100"
    assert cfg.train.lr == 1.2e-3 and cfg.train.batch_size == 60 and cfg.train.device == "cpu"
    assert cfg.prune.rate == 0.2 and cfg.prune.rounds == 4 and cfg.prune.chain == config.chain(4)
    assert output_rate(cfg) == pytest.approx(0.1)  # null -> half the hidden rate
    assert cfg.summary.tolerance == 0.5


def test_from_dict_partial_uses_defaults_and_coerces_int_to_float():
    raw = {"prune": {"rounds": 2, "chain": config.chain(2), "output_rate": 0, "rate": 0.5}, "train": {"lr": 1}}
    cfg = config.from_dict(raw)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.prune.output_rate == 0.0 and output_rate(cfg) == 0.0  # explicit 0 is not "null"
    assert cfg.train.iterations == 3000 and cfg.data.dataset == "fashion-mnist"  # defaults
    assert cfg.controls == ["reinit", "random"]
    # defaults are not shared between instances
    cfg.controls.append("x")
    assert config.from_dict(raw).controls == ["reinit", "random"]


def test_empty_controls_and_single_control_are_valid():
    for controls in ([], ["random"], ["random", "reinit"]):
        raw = valid()
        raw["controls"] = controls
        assert config.from_dict(raw).controls == controls


def test_digest_depends_on_the_named_keys_only():
    a = config.from_dict(valid())
    raw = valid()
    raw["summary"]["tolerance"] = 1.0
    b = config.from_dict(raw)
    assert a.digest(["train", "prune"]) == b.digest(["train", "prune"])
    assert a.digest(["summary"]) != b.digest(["summary"])
    assert len(a.digest(["train"])) == 16
    # dotted keys: only the named key of a section counts
    raw["train"]["log_every"], raw["train"]["lr"] = 7, 0.5
    c = config.from_dict(raw)
    assert a.digest(["train.batch_size"]) == b.digest(["train.batch_size"])
    assert a.digest(["train.batch_size", "summary"]) != a.digest(["summary"])
    assert c.digest(["train.batch_size"]) == a.digest(["train.batch_size"])
    assert c.digest(["train.lr"]) != a.digest(["train.lr"])
    assert a.value("rewind") == {"to": "init", "iteration": 0, "finetune_lr": 1e-4} and a.value("train.lr") == 1.2e-3


def _set(path: str, value):
    """A change to the valid dict: set the dotted key (creating it if unknown)."""
    def change(raw):
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
    return change


def _rounds(n: int, chain_of: int | None = None):
    def change(raw):
        raw["prune"]["rounds"] = n
        raw["prune"]["chain"] = config.chain(chain_of if chain_of is not None else n if 0 <= n <= config.MAX_ROUNDS else 0)
    return change


# (id, change to the valid dict, key the message must name)
MALFORMED = [
    ("unknown-top-level", _set("learning_rate", 0.1), "learning_rate"),
    ("typo-prune-rat", _set("prune.rat", 0.2), "prune.rat"),
    ("typo-data-valdation", _set("data.valdation", 10), "data.valdation"),
    ("unknown-train-key", _set("train.epochs", 3), "train.epochs"),
    ("trials-string", _set("trials", "2"), "trials"),
    ("trials-bool", _set("trials", True), "trials"),
    ("trials-zero", _set("trials", 0), "trials"),
    ("seed-negative", _set("seed", -1), "seed"),
    ("seed-float", _set("seed", 1.5), "seed"),
    ("rate-zero", _set("prune.rate", 0), "prune.rate"),
    ("rate-one", _set("prune.rate", 1), "prune.rate"),
    ("rate-1.5", _set("prune.rate", 1.5), "prune.rate"),
    ("rate-negative", _set("prune.rate", -0.1), "prune.rate"),
    ("rate-string", _set("prune.rate", "20%"), "prune.rate"),
    ("rate-bool", _set("prune.rate", True), "prune.rate"),
    ("output-rate-one", _set("prune.output_rate", 1.0), "prune.output_rate"),
    ("output-rate-negative", _set("prune.output_rate", -0.5), "prune.output_rate"),
    ("rounds-negative", _rounds(-1), "prune.rounds"),
    ("rounds-over-cap", _rounds(config.MAX_ROUNDS + 1), "prune.rounds"),
    ("rounds-bool", _set("prune.rounds", False), "prune.rounds"),
    ("chain-not-matching-rounds", _rounds(4, chain_of=3), "prune.chain"),
    ("chain-empty", _set("prune.chain", {}), "prune.chain"),
    ("chain-not-mapping", _set("prune.chain", ["init", "r0"]), "prune.chain"),
    ("chain-value-not-string", _set("prune.chain", {"r0": 0}), "prune.chain.r0"),
    ("strategy-unknown", _set("prune.strategy", "hierarchical"), "prune.strategy"),
    ("iterations-zero", _set("train.iterations", 0), "train.iterations"),
    ("iterations-float", _set("train.iterations", 1.5), "train.iterations"),
    ("batch-size-zero", _set("train.batch_size", 0), "train.batch_size"),
    ("batch-size-bool", _set("train.batch_size", True), "train.batch_size"),
    ("eval-every-zero", _set("train.eval_every", 0), "train.eval_every"),
    ("log-every-negative", _set("train.log_every", -1), "train.log_every"),
    ("lr-zero", _set("train.lr", 0.0), "train.lr"),
    ("lr-string", _set("train.lr", "fast"), "train.lr"),
    ("momentum-one", _set("train.momentum", 1.0), "train.momentum"),
    ("weight-decay-negative", _set("train.weight_decay", -1e-4), "train.weight_decay"),
    ("optimizer-unknown", _set("train.optimizer", "rmsprop"), "train.optimizer"),
    ("device-tpu", _set("train.device", "tpu"), "train.device"),
    ("precision-fp16", _set("train.precision", "float16"), "train.precision"),
    ("dataset-unknown", _set("data.dataset", "cifar100"), "data.dataset"),
    ("validation-zero", _set("data.validation", 0), "data.validation"),
    ("validation-bool", _set("data.validation", True), "data.validation"),
    ("train-subset-negative", _set("data.train_subset", -5), "data.train_subset"),
    ("root-not-string", _set("data.root", 5), "data.root"),
    ("data-not-mapping", _set("data", ["fashion-mnist"]), "data"),
    ("model-unknown", _set("model.name", "resnet-50"), "model.name"),
    ("model-name-list", _set("model.name", ["lenet-300-100"]), "model.name"),
    ("control-unknown", _set("controls", ["reinit", "shuffle"]), "controls[1]"),
    ("control-duplicate", _set("controls", ["random", "random"]), "controls"),
    ("controls-not-list", _set("controls", "reinit"), "controls"),
    ("tolerance-101", _set("summary.tolerance", 101), "summary.tolerance"),
    ("tolerance-negative", _set("summary.tolerance", -0.5), "summary.tolerance"),
    ("lr-inf", _set("train.lr", math.inf), "train.lr"),
    ("lr-nan", _set("train.lr", math.nan), "train.lr"),
    ("weight-decay-inf", _set("train.weight_decay", math.inf), "train.weight_decay"),
    ("finetune-lr-inf", lambda raw: raw.update(rewind={"finetune_lr": math.inf}), "rewind.finetune_lr"),
    ("checkpoint-seconds-zero", _set("train.checkpoint_seconds", 0), "train.checkpoint_seconds"),
    ("log-every-minus-5", _set("train.log_every", -5), "train.log_every"),
]


@pytest.mark.parametrize("change, key", [(c, k) for _, c, k in MALFORMED], ids=[i for i, _, _ in MALFORMED])
def test_malformed_config_raises_naming_the_key(change, key):
    raw = copy.deepcopy(valid())
    change(raw)
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    assert key in str(e.value), f"message {str(e.value)!r} does not name {key!r}"


def test_malformed_table_is_large_and_the_base_is_valid():
    assert len(MALFORMED) >= 20
    config.from_dict(valid())  # every case above fails because of its own change only


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_unknown_key_message_lists_the_allowed_keys():
    raw = valid()
    raw["prune"]["rat"] = 0.2
    with pytest.raises(ConfigError, match=r"unknown key 'prune\.rat'.*rate"):
        config.from_dict(raw)


def test_out_of_range_message_names_the_value():
    raw = valid()
    raw["prune"]["rate"] = 1.5
    with pytest.raises(ConfigError, match=r"prune\.rate: 1\.5"):
        config.from_dict(raw)


# ---------------------------------------------------------------- load


def test_load_valid_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(valid()))
    cfg = config.load(path)
    assert cfg == config.from_dict(valid())
    assert config.load(str(path)) == cfg


def test_load_missing_file_names_it(tmp_path):
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(path) in str(e.value)


def test_load_invalid_yaml_names_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prune:\n  rate: [0.2\n  rounds: 3\n")
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(path) in str(e.value)
    assert "YAML" in str(e.value)


def test_load_validates_contents(tmp_path):
    path = tmp_path / "params.yaml"
    raw = valid()
    raw["prune"]["rate"] = 0
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"prune\.rate"):
        config.load(path)



@pytest.mark.parametrize("chain, name", [
    ({"r1$(touch pwned)": "r0"}, "r1$(touch pwned)"),
    ({"r1": "r0; touch pwned"}, "r0; touch pwned"),
    ({"r01": "r0"}, None),  # r<digits>, but not what rounds=1 generates
    ({"r0": "init", "r1": "r0"}, None),  # the dense round is its own stage, not in the chain
])
def test_round_names_must_be_r_digits(chain, name):
    # a round name reaches a shell through DVC's templated stage command: refused by its form
    raw = valid()
    raw["prune"].update(rounds=1, chain=chain)
    with pytest.raises(ConfigError, match=r"prune\.chain") as e:
        config.from_dict(raw)
    if name is not None:
        assert repr(name) in str(e.value) and "r<digits>" in str(e.value)


def test_infinite_lr_message():
    raw = valid()
    raw["train"]["lr"] = math.inf
    with pytest.raises(ConfigError, match=r"train\.lr: inf is not allowed \(a finite number > 0\)"):
        config.from_dict(raw)
