"""Typed hyper-parameters: one dataclass per params.yaml section.

`load(path)` reads params.yaml and validates every key before any work starts:
unknown keys, wrong types and out-of-range values raise `ConfigError` naming the
key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "imagefolder", "imagenet", "kmnist", "mnist", "mnist1d", "svhn")
# Streamed from data.root, decoded in DataLoader workers (lottery.folder): train/<class>/<image>, val/<class>/<image>
FOLDER_DATASETS = ("imagefolder", "imagenet")
FOLDER_KEYS = ("data.image_size", "data.resize")  # read for image folders only (see Config.digest)
# model -> the datasets it takes (lottery.models.INPUTS is this table; kept here, free of torch)
_CONV = ("conv-2", "conv-4", "conv-6")
MODEL_DATASETS: dict[str, tuple[str, ...]] = {
    "lenet-300-100": ("mnist", "fashion-mnist"),
    "mlp-mnist1d": ("mnist1d",),
    **{name: ("cifar10",) for name in _CONV},
    **{f"{name}-dropout": ("cifar10",) for name in _CONV},
    "vgg-19": ("cifar10",),
    "resnet-20": ("cifar10",),
    "resnet-50": ("imagenet", "imagefolder"),
}
MODELS = tuple(MODEL_DATASETS)
OPTIMIZERS = ("adam", "sgd")
STRATEGIES = ("layerwise", "global")
SCHEDULES = ("iterative", "oneshot")
CRITERIA = ("magnitude", "random", "magnitude_increase", "snip", "grasp", "synflow")
PAI_CRITERIA = ("snip", "grasp", "synflow")  # score the rewind point before training: prune.at: init only
PRUNE_AT = ("trained", "init")
KINDS = ("conv", "fc", "output")
REWINDS = ("init", "iteration", "lr", "finetune")
CONTROLS = ("reinit", "random", "invert", "rigl", "set")
DST_DISTRIBUTIONS = ("match", "erk", "uniform")  # dst.distribution (lottery.dst)
DEVICES = ("cpu", "cuda", "auto")
ROUND_NAME = r"r\d+"  # the form of a round name: it reaches DVC's templated stage commands
MAX_ROUNDS = 100  # cap of prune.rounds: each round is a DVC stage, and `dvc repro` slows past ~100 stages
PRECISIONS = ("float32", "tf32", "bfloat16")
SPARSE = ("auto", "on", "off")
BACKENDS = ("auto", "gloo", "nccl")  # train.backend (torch.distributed)
# Bounds of every size and count a typo can make endless or too large for memory: (smallest, largest). Real
# studies stay far inside (the paper's LeNet: 50K iterations, batch 60, 5 trials; Frankle et al. 2020's ImageNet
# ResNet-50: 112K iterations at batch 1024, conf/experiment/imagenet-resnet50.yaml); the table is docs/reliability.md's.
LIMITS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**31 - 1),
    "trials": (1, 100),
    "data.validation": (1, 10_000_000),
    "data.split_seed": (0, 2**31 - 1),
    "data.train_subset": (0, 100_000_000),
    "data.workers": (0, 256),
    "data.image_size": (1, 4096),
    "data.resize": (1, 4096),
    "train.batch_size": (1, 65_536),
    "train.world_size": (1, 4_096),
    "train.stack": (0, 10_000),
    "train.nodes": (1, 1_024),
    "train.iterations": (1, 10_000_000),
    "train.eval_every": (1, 10_000_000),
    "train.log_every": (0, 10_000_000),
    "prune.score_batches": (1, 1_000),
    "prune.synflow_iterations": (1, 10_000),
    "prune.early_bird.window": (1, 10_000),
    "dst.update_every": (1, 10_000_000),
    "instability.points": (2, 1_000),
    "instability.train_subset": (1, 10_000_000),
    "instability.bn_batches": (1, 10_000),
}
MAX_EVALUATIONS = 100_000  # train.iterations / train.eval_every: validation passes per round
IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # package.module:factory


def is_import_path(name: str) -> bool:
    """Whether a model.name is a user factory 'package.module:callable' (not a registry name); syntax only."""
    return ":" in name
BN_MODES = ("interpolate", "recompute")  # instability.bn (lottery.instability uses this table)
TRANSFER_INITS = ("source", "own")  # transfer.init: the transferred ticket starts from the source's θ0 or this one's
TRANSFER_CONTROLS = ("reinit", "random")  # the controls of `controls` a transfer trains beside the transferred ticket


class LotteryError(Exception):
    """Base of the project's own errors: a stage reports them in one line and exits 2 (`lottery.cli.run`)."""


class ConfigError(LotteryError, ValueError):
    """A params value is missing, misspelled, of the wrong type or out of range."""


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class DataConfig:
    dataset: str = _help("one of " + ", ".join(DATASETS) + ", or your own loader 'package.module:loader' returning "
                         "x, y, x_test, y_test (arrays or tensors) or a (train, test) pair of map-style datasets",
                         "fashion-mnist")
    validation: int = _help("training images held out (by data.split_seed) for early stopping", 5000)
    split_seed: int = _help("seed of the validation split and of instability's training subset: not the trial "
                            "seed, so the trials of experiments that differ only in `seed` pool into one study", 0)
    train_subset: int = _help("keep only this many training images after the split (0 = all)", 0)
    root: str = _help("folder searched first for raw files, e.g. data/raw", "data/raw")
    augment: bool = _help("random crop (padding 4) and horizontal flip of training images (CIFAR); image folders: "
                          "RandomResizedCrop(image_size) and horizontal flip", False)
    workers: int = _help("image folders: DataLoader worker processes that decode and transform images (0 = in the "
                         "training process); the batches are the same for any number (not a result param)", 2)
    image_size: int = _help("image folders: the side of the square images the network sees (train and eval crops)", 224)
    resize: int = _help("image folders: evaluation (and training without data.augment) resizes the shorter side to "
                        "this, then center-crops image_size", 256)


@dataclass
class ModelConfig:
    name: str = _help("one of " + ", ".join(MODELS) + ", or your own network: 'package.module:factory', a callable "
                      "returning one torch.nn.Module (taking num_classes and input_shape if it wants)", "lenet-300-100")


@dataclass
class TrainConfig:
    optimizer: str = _help("adam or sgd", "adam")
    lr: float = _help("learning rate", 1.2e-3)
    momentum: float = _help("SGD momentum", 0.0)
    weight_decay: float = _help("L2 weight decay", 0.0)
    batch_size: int = _help("minibatch size", 60)
    iterations: int = _help("training iterations per round", 3000)
    eval_every: int = _help("validation every N iterations (early-stop resolution)", 100)
    device: str = _help("cpu, cuda or auto (cuda when present)", "cpu")
    precision: str = _help("float32; tf32 (CUDA tensor cores for float32 matmuls); bfloat16 (autocast matmuls and "
                           "convolutions; weights, optimizer and masks stay float32)", "float32")
    sparse: str = _help("sparse execution of pruned fully-connected layers on CPU: auto (layers of at least 20,000 "
                        "weights per network below 15% density; dense on CUDA, with bfloat16 and data parallel), on "
                        "(every masked fully-connected layer; an error for other layers, CUDA, bfloat16, world_size > 1) "
                        "or off. Same results as dense up to floating-point summation order", "auto")
    warmup: int = _help("linear learning-rate warm-up over the first N iterations (0 = none)", 0)
    lr_drops: list[int] = _help("iterations at which the learning rate is multiplied by lr_gamma", [])
    lr_gamma: float = _help("factor of each learning-rate drop", 0.1)
    log_every: int = _help("print a progress line every N iterations, and at least every 10% of the round "
                                "and every 30 s (0 = none)", 500)
    checkpoint_seconds: float = _help("save a resume point every N seconds of a round (crash-safe; not a result param)", 120.0)
    stack: int = _help("networks trained together in one stack (0 = all of the round's trials and controls at once, "
                       "fastest for small networks, except convolutional networks on CPU: one at a time, never "
                       "slower there); fewer train group after group, e.g. 1 for a ResNet-50 per process group", 0)
    world_size: int = _help("processes that train one round together (data parallel, DistributedDataParallel): each "
                            "takes batch_size / world_size rows of every batch (batch_size stays the global batch)", 1)
    nodes: int = _help("machines the world_size processes spread over (> 1: through Ray Train on the Ray cluster "
                       "at train.address; not a result param)", 1)
    backend: str = _help("torch.distributed backend of a data-parallel round: auto (nccl on cuda, gloo on cpu), "
                         "gloo or nccl (not a result param)", "auto")
    address: str = _help("the Ray cluster a round with nodes > 1 runs on ('<head>:6379' or 'auto'; not a result "
                         "param)", "")


@dataclass
class EarlyBirdConfig:
    enabled: bool = _help("early-bird search (You et al. 2020): at every evaluation of a round, the mask the next round "
                          "would take from the ticket's weights; the next round prunes the weights of the evaluation "
                          "at which that mask has stabilised (the early-bird iteration) instead of the final ones", False)
    epsilon: float = _help("the mask has stabilised when the normalised Hamming distances (fraction of prunable "
                           "positions that differ) between successive evaluations' masks stay below this over the "
                           "last `window` evaluations, in (0, 1]", 0.1)
    window: int = _help("distances (evaluations) the stopping rule looks back over", 5)
    search: dict[str, Any] = _help("generated from `enabled` and the prune keys the search reads (conf/): those keys' "
                                   "values when enabled, {} when off", {})


@dataclass
class PruneConfig:
    strategy: str = _help("layerwise (each layer at its kind's rate) or global (one ranking over `global_kinds`)", "layerwise")
    rate: float = _help("fraction of remaining fully-connected weights pruned per round, in (0, 1)", 0.2)
    conv_rate: float | None = _help("rate of convolutional layers (null = `rate`)", None)
    output_rate: float | None = _help("rate of the output layer (null = half of `rate`)", None)
    global_kinds: list[str] = _help("layer kinds ranked together by the global strategy, at `rate`", ["conv"])
    criterion: str = _help("what is kept: magnitude (|w|), magnitude_increase (|w| - |w0|), random; with `at: init` "
                           "also snip, grasp, synflow (pruning at initialization)", "magnitude")
    schedule: str = _help("iterative (prune the previous round) or oneshot (prune r0 straight to round K's sparsity)", "iterative")
    rounds: int = _help(f"pruning rounds after the dense round r0, at most {MAX_ROUNDS}", 15)
    chain: dict[str, str] = _help("round -> the round it prunes; generated from `rounds` and `schedule` (conf/)", {})
    layers: list[str] = _help("your own network: glob patterns on parameter names choosing the prunable weights "
                              "([] = every nn.Linear and nn.Conv* weight)", [])
    ignore: list[str] = _help("your own network: glob patterns on parameter names never pruned", [])
    layer_rates: dict[str, float] = _help("glob pattern on a prunable weight's name -> its rate per round, in [0, 1), "
                                          "instead of its kind's rate (the first matching pattern wins)", {})
    at: str = _help("trained (score the previous round's trained ticket) or init (score the rewind point and prune "
                    "the dense mask straight to round K's planned counts, before any training)", "trained")
    score_batches: int = _help("training batches SNIP and GraSP score on (the first of each trial's data order; 2 x 60 "
                               "images: about the papers' 100)", 2)
    synflow_iterations: int = _help("SynFlow's pruning iterations per round (exponential schedule)", 100)
    early_bird: EarlyBirdConfig = field(default_factory=EarlyBirdConfig)


@dataclass
class RewindConfig:
    to: str = _help("init (θ0), iteration (θk of `iteration`), lr (keep weights, replay the schedule), finetune", "init")
    iteration: int = _help("k for `to: iteration`: init trains k iterations, rounds resume from k", 0)
    finetune_lr: float = _help("constant learning rate of `to: finetune`", 1e-4)


@dataclass
class SummaryConfig:
    tolerance: float = _help("a ticket 'wins' while its mean test accuracy >= dense mean minus this (pp)", 0.5)


@dataclass
class InstabilityConfig:
    enabled: bool = _help("train a second copy of every ticket (own data order) and measure linear mode connectivity", False)
    points: int = _help("points on the line between the two copies, both ends included (>= 2)", 30)
    threshold: float = _help("instability (pp of error) at or below which a ticket is stable", 2.0)
    train_subset: int = _help("training examples (fixed by data.split_seed) evaluated along the line, besides the test set", 5000)
    bn: str = _help("BatchNorm statistics along the line: interpolate or recompute", "interpolate")
    bn_batches: int = _help("batches of train.batch_size that re-estimate BatchNorm at each point (bn: recompute)", 20)


@dataclass
class TransferConfig:
    source: str = _help("an experiment name or git revision of this repository whose ticket is transferred: the mask "
                        "of its round `round`, trained on this experiment's data and optimizer beside the reinit and "
                        "random controls of that mask (the `transfer@<round>` stages; '' = off)", "")
    round: str = _help("the source's round whose ticket mask is transferred: r1, r2, ...", "r1")
    init: str = _help("where the transferred ticket starts: source (the source's θ0, or θk) or own (this experiment's "
                      "init); an output layer whose classes differ starts from this experiment's init either way", "source")
    stages: dict[str, str] = _help("generated from `source` and `round` (conf/): {round: round}, {} when off", {})


def transfer_stages(source: str, round_name: str) -> dict[str, str]:
    """The foreach of the transfer stages (conf/config.yaml's resolver): {round: round}, {} when transfer.source is ''
    (no transfer stage then). DVC templates have no conditionals: an empty foreach is how a stage is left out.
    The round becomes a stage name: it is checked here, before DVC reads it."""
    _check(isinstance(round_name, str) and re.fullmatch(ROUND_NAME, round_name) is not None and round_name != "r0",
           "transfer.round", round_name, "a pruned round's name: r1, r2, ...")
    _check(isinstance(source, str), "transfer.source", source, "an experiment name or git revision, '' = off")
    return {round_name: round_name} if source else {}


@dataclass
class DSTConfig:
    update_every: int = _help("controls rigl and set: iterations between two mask updates (ΔT)", 100)
    fraction: float = _help("controls rigl and set: fraction of each layer's kept weights replaced per update (α; "
                            "rigl decays it by a cosine to 0 at stop_at, set keeps it: ζ), in (0, 1)", 0.3)
    stop_at: float = _help("controls rigl and set: the masks stop moving after this fraction of train.iterations, "
                           "in (0, 1]", 0.75)
    distribution: str = _help("controls rigl and set: kept weights per layer: match (the ticket's counts), erk "
                              "(Erdős–Rényi-Kernel) or uniform (one density), at the ticket's total", "match")


@dataclass
class Config:
    seed: int = _help("base seed; trial t uses seed + t", 0)
    trials: int = _help("independent trials (init and data order) per variant", 2)
    controls: list[str] = _help("controls trained beside each ticket: reinit, random (= shuffle), invert (the lowest "
                                "scores at the ticket's per-layer counts), rigl and set (dynamic sparse training from "
                                "a fresh init at the ticket's counts: dst.*)", ["reinit", "random"])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    rewind: RewindConfig = field(default_factory=RewindConfig)
    summary: SummaryConfig = field(default_factory=SummaryConfig)
    instability: InstabilityConfig = field(default_factory=InstabilityConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    dst: DSTConfig = field(default_factory=DSTConfig)

    def value(self, key: str) -> Any:
        """The value of a dotted params key (`train.lr`) or a whole section (`rewind`), as plain data."""
        obj: Any = self
        for part in key.split("."):
            obj = getattr(obj, part)
        return _to_dict(obj)

    def digest(self, keys: list[str]) -> str:
        """Short digest of exactly the named keys (`STAGE_PARAMS` of a stage), recorded in artifact metadata.

        The keys only image folders read (FOLDER_KEYS) count only when data.dataset is one: the artifacts of
        tensor datasets keep the bytes they had before those keys existed. So does `train.sparse: off`: the key counts
        only when it is on or auto."""
        if self.data.dataset not in FOLDER_DATASETS:
            keys = [k for k in keys if k not in FOLDER_KEYS]
        if self.train.sparse == "off":
            keys = [k for k in keys if k != "train.sparse"]
        blob = json.dumps({k: self.value(k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def chain(rounds: int, schedule: str = "iterative") -> dict[str, str]:
    """{'r1': 'r0', 'r2': 'r1', ...}: each pruning round names the round it prunes (DVC has no arithmetic).

    The dense round r0 is not in it (it is the `dense` stage; `round@rK` is a foreach over the chain):
    `prune.rounds: 0` gives {}. One-shot pruning prunes the dense round every time: {'r1': 'r0', 'r2': 'r0', ...}.
    Also the resolver of conf/config.yaml (hydra_plugins/lottery_chain), so it checks its inputs:
    no odd value reaches a round name.
    """
    _check(isinstance(rounds, int) and not isinstance(rounds, bool) and 0 <= rounds <= MAX_ROUNDS,
           "prune.rounds", rounds, f"an integer in [0, {MAX_ROUNDS}]")
    _check(schedule in SCHEDULES, "prune.schedule", schedule, "one of " + ", ".join(SCHEDULES))
    prev = (lambda k: "r0") if schedule == "oneshot" else (lambda k: f"r{k - 1}")
    return {f"r{k}": prev(k) for k in range(1, rounds + 1)}


def round_names(prune: PruneConfig) -> list[str]:
    """Every round of the experiment, dense first: ['r0', 'r1', ...]."""
    return ["r0", *prune.chain]


def predecessor(prune: PruneConfig, name: str) -> str | None:
    """The round `name` prunes ('init' for the dense round r0; None for a round not in the experiment)."""
    return "init" if name == "r0" else prune.chain.get(name)


# The params keys each stage reads, so the keys its outputs depend on: dvc.yaml lists exactly these
# (tests/test_params_file.py) and each artifact's metadata records their digest (`Config.digest`), so a
# key a stage does not read (train.log_every, prune.rounds for a round, any prune.* for the dense round)
# changes neither its bytes nor its staleness. `check` reads the whole file but always runs; data.root is
# covered by data/raw.json, the raw files' digests `check` records for `prepare`.
# data.image_size and data.resize shape every image a round of an image folder decodes; data.workers changes no batch
# (every random draw is seeded by order seed, iteration and position, not by the worker), so it is in no list.
_TRAINING = ["seed", "trials", "model.name", "train.optimizer", "train.lr", "train.momentum", "train.weight_decay",
             "train.batch_size", "train.iterations", "train.eval_every", "train.device", "train.precision",
             "train.sparse", "train.warmup", "train.lr_drops", "train.lr_gamma", "train.world_size", "train.stack", "data.augment",
             "data.image_size", "data.resize"]
# The run's settings that metrics/report.md lists (and the figures' subtitle): summarize reads them, so they are
# among its params and a change to one reruns it; the report never shows settings of another run.
REPORT_SETTINGS = ["data.dataset", "model.name", "train.iterations", "prune.strategy", "prune.rate", "prune.rounds",
                   "prune.criterion", "controls", "trials", "seed"]
# The prune keys the early-bird search reads to take the next round's mask (`lottery.rounds.prune_trained` with
# prune.at: trained). Round stages list them all; the dense stage lists them through prune.early_bird.search, which
# holds their values only while the search is on (without it the dense round prunes nothing). Its early_bird.pt also
# records their digest, and r1 refuses one searched under other values (`lottery.rounds`).
SEARCH_KEYS = ["prune.strategy", "prune.rate", "prune.conv_rate", "prune.output_rate", "prune.global_kinds",
               "prune.layer_rates", "prune.criterion"]


def early_bird_search(enabled: bool, *values: Any) -> dict[str, Any]:
    """prune.early_bird.search (conf/config.yaml's resolver): the values of SEARCH_KEYS, in that order, when the
    search is enabled; {} when it is off. The dense stage lists prune.early_bird, so with the search on a changed
    prune.rate (or any search key) reruns the dense round, whose training is r1's search; with it off nothing changes."""
    _check(isinstance(enabled, bool), "prune.early_bird.enabled", enabled, "true or false")
    _check(len(values) == len(SEARCH_KEYS), "prune.early_bird.search", values, f"the values of {', '.join(SEARCH_KEYS)}")
    return {k.split(".", 1)[1]: v for k, v in zip(SEARCH_KEYS, values)} if enabled else {}


STAGE_PARAMS: dict[str, list[str]] = {
    "check": [],
    "prepare": ["data.split_seed", "data.dataset", "data.validation", "data.train_subset"],
    "init": ["seed", "trials", "model.name", "data.augment", "rewind.to", "rewind.iteration", "train.optimizer",
             "train.lr", "train.momentum", "train.weight_decay", "train.batch_size", "train.warmup", "train.lr_drops",
             "train.lr_gamma", "train.device", "train.precision", "train.sparse", "train.world_size", "prune.layers", "prune.ignore",
             "data.image_size", "data.resize"],
    # prune.layers / prune.ignore choose which weights are prunable (the masks' keys), even in the dense round;
    # prune.early_bird: the dense round's training is r1's search (`lottery.early_bird`)
    "dense": [*_TRAINING, "rewind.to", "rewind.iteration", "prune.layers", "prune.ignore", "prune.early_bird",
              "instability", "data.split_seed"],
    "round": [*_TRAINING, "controls", "prune.strategy", "prune.rate", "prune.conv_rate", "prune.output_rate",
              "prune.global_kinds", "prune.criterion", "prune.schedule", "prune.layers", "prune.ignore",
              "prune.layer_rates", "prune.at", "prune.score_batches", "prune.synflow_iterations", "prune.early_bird", "rewind",
              "instability", "data.split_seed", "dst"],
    "summarize": ["summary", *REPORT_SETTINGS, "transfer"],
    # transfer.source's round materialised under runs/transfer/source/ (always run: a source name may point elsewhere)
    "transfer-source": ["model.name", "data.dataset", "trials", "transfer", "prune.layers", "prune.ignore"],
    # its mask trained on this experiment's data: what the dense round reads, and the controls
    "transfer": [*_TRAINING, "controls", "rewind.to", "rewind.iteration", "prune.layers", "prune.ignore",
                 "data.split_seed", "transfer"],
}


def stage_of(round_name: str) -> str:
    """The STAGE_PARAMS entry whose keys a round's artifacts depend on: init, dense (r0) or round (rK)."""
    return "init" if round_name == "init" else "dense" if round_name == "r0" else "round"


def artifact_params(cfg: "Config", round_name: str) -> str:
    """The params digest a round's artifacts record (`init`, `r0`, `rK`), and what every reader expects of them."""
    return cfg.digest(STAGE_PARAMS[stage_of(round_name)])


def dvc_stage(round_name: str) -> str:
    """The dvc.yaml stage that writes a round's artifacts: init, dense or round@rK."""
    return {"init": "init", "dense": "dense"}.get(stage_of(round_name), f"round@{round_name}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"unknown key '{key}' (allowed in {prefix.rstrip('.') or 'params'}: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in raw:
            continue  # the dataclass default applies
        values[f.name] = _coerce(hints[f.name], raw[f.name], key)
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key + ".")
    origin, args = get_origin(tp), get_args(tp)
    if type(None) in args:  # Optional
        if value is None:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _coerce(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is Any:  # a generated value (prune.early_bird.search), checked against its rule by validate
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported type {tp} for {key}")  # a bug in this file, not in params


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed ({allowed})")


def _name(value: str, key: str, names: tuple[str, ...], what: str) -> None:
    """A registry name, or your own 'package.module:<what>' (its syntax only: the stages import it, config has no torch)."""
    if is_import_path(value):
        _check(IMPORT_PATH.fullmatch(value) is not None, key, value, f"an import path 'package.module:{what}'")
    else:
        _check(value in names, key, value, "one of " + ", ".join(names) + f", or 'package.module:{what}'")


def _prune_layers(p: PruneConfig, model: str) -> None:
    """prune.layers / prune.ignore (your own network only) and prune.layer_rates (glob patterns, matched by the stages)."""
    for key in ("layers", "ignore"):
        _check(not getattr(p, key) or is_import_path(model), f"prune.{key}", getattr(p, key),
               "[] unless model.name is your own network 'package.module:factory'")
    for pattern, r in p.layer_rates.items():
        _check(0 <= r < 1, f"prune.layer_rates.{pattern}", r, "a number in [0, 1)")


def validate(cfg: Config) -> Config:
    """Ranges and names that types alone do not catch."""
    for key, (lo, hi) in LIMITS.items():
        _check(lo <= cfg.value(key) <= hi, key, cfg.value(key), f"an integer in [{lo:,}, {hi:,}]")
    t = cfg.train
    _check(t.iterations // t.eval_every <= MAX_EVALUATIONS, "train.eval_every", t.eval_every,
           f"at most {MAX_EVALUATIONS:,} validation passes per round: train.iterations={t.iterations:,} needs "
           f"eval_every >= {-(-t.iterations // MAX_EVALUATIONS):,}")
    for i, c in enumerate(cfg.controls):
        _check(c in CONTROLS, f"controls[{i}]", c, "one of " + ", ".join(CONTROLS))
    _check(len(set(cfg.controls)) == len(cfg.controls), "controls", cfg.controls, "each control at most once")
    d = cfg.data
    _name(d.dataset, "data.dataset", DATASETS, "loader")
    _check(d.resize >= d.image_size, "data.resize", d.resize, f"at least data.image_size={d.image_size} (the evaluation "
           "transform center-crops image_size out of the resized image)")
    _name(cfg.model.name, "model.name", MODELS, "factory")
    if d.dataset in DATASETS and cfg.model.name in MODELS:
        takes = MODEL_DATASETS[cfg.model.name]
        _check(d.dataset in takes, "model.name", cfg.model.name,
               f"it does not take data.dataset {d.dataset!r}; {cfg.model.name} takes: {', '.join(takes)}")
    _check(t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer, "one of " + ", ".join(OPTIMIZERS))
    _check(0 < t.lr < math.inf, "train.lr", t.lr, "a finite number > 0")
    _check(0 <= t.momentum < 1, "train.momentum", t.momentum, "a number in [0, 1)")
    _check(0 <= t.weight_decay < math.inf, "train.weight_decay", t.weight_decay, "a finite number >= 0")
    _check(t.checkpoint_seconds > 0, "train.checkpoint_seconds", t.checkpoint_seconds, "a number > 0")
    _check(0 <= t.warmup < t.iterations, "train.warmup", t.warmup, f"an integer in [0, train.iterations={t.iterations})")
    for i, d in enumerate(t.lr_drops):
        _check(0 < d <= t.iterations, f"train.lr_drops[{i}]", d, f"an iteration in (0, {t.iterations}]")
    _check(t.lr_drops == sorted(set(t.lr_drops)), "train.lr_drops", t.lr_drops, "increasing iterations")
    _check(0 < t.lr_gamma <= 1, "train.lr_gamma", t.lr_gamma, "a number in (0, 1]")
    _check(t.device in DEVICES, "train.device", t.device, "one of " + ", ".join(DEVICES))
    _check(t.precision in PRECISIONS, "train.precision", t.precision, "one of " + ", ".join(PRECISIONS))
    _check(t.sparse in SPARSE, "train.sparse", t.sparse, "one of " + ", ".join(SPARSE))
    _check(t.backend in BACKENDS, "train.backend", t.backend, "one of " + ", ".join(BACKENDS))
    _check(t.batch_size % t.world_size == 0, "train.world_size", t.world_size,
           f"a divisor of train.batch_size={t.batch_size} (every process takes an equal share of each batch)")
    _check(t.world_size % t.nodes == 0, "train.nodes", t.nodes,
           f"a divisor of train.world_size={t.world_size} (the same number of processes on every node)")
    _check(t.nodes == 1 or bool(t.address), "train.address", t.address,
           f"the Ray cluster's address ('<head>:6379' or 'auto') when train.nodes={t.nodes} > 1")
    p = cfg.prune
    _check(p.strategy in STRATEGIES, "prune.strategy", p.strategy, "one of " + ", ".join(STRATEGIES))
    _check(0 < p.rate < 1, "prune.rate", p.rate, "a number in (0, 1)")
    if p.output_rate is not None:
        _check(0 <= p.output_rate < 1, "prune.output_rate", p.output_rate, "null or a number in [0, 1)")
    if p.conv_rate is not None:
        _check(0 <= p.conv_rate < 1, "prune.conv_rate", p.conv_rate, "null or a number in [0, 1)")
    for i, kind in enumerate(p.global_kinds):
        _check(kind in KINDS, f"prune.global_kinds[{i}]", kind, "one of " + ", ".join(KINDS))
    _check(p.criterion in CRITERIA, "prune.criterion", p.criterion, "one of " + ", ".join(CRITERIA))
    _check(p.schedule in SCHEDULES, "prune.schedule", p.schedule, "one of " + ", ".join(SCHEDULES))
    _check_pai(cfg)
    _check(0 <= p.rounds <= MAX_ROUNDS, "prune.rounds", p.rounds, f"an integer in [0, {MAX_ROUNDS}]")
    _prune_layers(p, cfg.model.name)
    for key, prev in p.chain.items():  # names reach DVC's templated stage commands: r<digits> only
        _check(re.fullmatch(ROUND_NAME, key) is not None, "prune.chain", key, "round names are r<digits>")
        _check(re.fullmatch(r"r\d+|init", prev) is not None, f"prune.chain.{key}", prev, "init or r<digits>")
    _check(
        p.chain == chain(p.rounds, p.schedule),
        "prune.chain",
        p.chain,
        f"must match prune.rounds={p.rounds} and prune.schedule={p.schedule}; params.yaml is generated from conf/config.yaml: "
        "change rounds with `dvc exp run -S prune.rounds=N` or `make params`",
    )
    r = cfg.rewind
    _check(r.to in REWINDS, "rewind.to", r.to, "one of " + ", ".join(REWINDS))
    _check(0 <= r.iteration < t.iterations, "rewind.iteration", r.iteration,
           f"an iteration in [0, train.iterations={t.iterations})")
    _check(r.to == "iteration" or r.iteration == 0, "rewind.iteration", r.iteration, "0 unless rewind.to is 'iteration'")
    _check(0 < r.finetune_lr < math.inf, "rewind.finetune_lr", r.finetune_lr, "a finite number > 0")
    _check(0 <= cfg.summary.tolerance <= 100, "summary.tolerance", cfg.summary.tolerance, "a number in [0, 100]")
    _validate_instability(cfg)
    _validate_early_bird(cfg)
    _validate_transfer(cfg)
    _validate_dst(cfg)
    return cfg


def _validate_early_bird(cfg: Config) -> None:
    e, p = cfg.prune.early_bird, cfg.prune
    _check(0 < e.epsilon <= 1, "prune.early_bird.epsilon", e.epsilon, "a number in (0, 1]: a fraction of positions")
    if e.enabled:
        why = "the early-bird search watches the mask the next round takes from this round's trained ticket"
        _check(p.at == "trained", "prune.early_bird.enabled", e.enabled, f"{why}: it needs prune.at: trained, not {p.at!r}")
        _check(p.schedule == "iterative", "prune.early_bird.enabled", e.enabled,
               f"{why}: it needs prune.schedule: iterative, not {p.schedule!r}")
        _check(cfg.rewind.to in ("init", "iteration"), "prune.early_bird.enabled", e.enabled,
               f"early-bird tickets are rewound: it needs rewind.to init or iteration, not {cfg.rewind.to!r}")
        _check(cfg.train.stack == 0, "prune.early_bird.enabled", e.enabled,
               f"the search watches the ticket inside the whole stack: it needs train.stack: 0, not {cfg.train.stack}")
    _check(e.search == early_bird_search(e.enabled, *(cfg.value(k) for k in SEARCH_KEYS)), "prune.early_bird.search",
           e.search, "must match prune.early_bird.enabled and " + ", ".join(SEARCH_KEYS) + "; params.yaml is generated "
           "from conf/config.yaml: `dvc exp run -S prune.rate=...` or `python -m lottery.params prune.rate=...`")


def _validate_transfer(cfg: Config) -> None:
    x = cfg.transfer
    _check(x.init in TRANSFER_INITS, "transfer.init", x.init, "one of " + ", ".join(TRANSFER_INITS))
    _check(x.stages == transfer_stages(x.source, x.round), "transfer.stages", x.stages,
           f"must match transfer.source={x.source!r} and transfer.round={x.round}; params.yaml is generated from "
           "conf/config.yaml: `dvc exp run -S transfer.source=...` or `python -m lottery.params transfer.source=...`")
    if x.source:
        _check(cfg.rewind.to in ("init", "iteration"), "transfer.source", x.source,
               f"a transferred ticket trains from a rewind point: rewind.to init or iteration, not {cfg.rewind.to!r}")


def _validate_dst(cfg: Config) -> None:
    s = cfg.dst
    _check(0 < s.fraction < 1, "dst.fraction", s.fraction, "a number in (0, 1)")
    _check(0 < s.stop_at <= 1, "dst.stop_at", s.stop_at, "a number in (0, 1]")
    _check(s.distribution in DST_DISTRIBUTIONS, "dst.distribution", s.distribution, "one of " + ", ".join(DST_DISTRIBUTIONS))
    dynamic = [c for c in cfg.controls if c in ("rigl", "set")]
    _check(not dynamic or cfg.prune.at == "trained", "controls", cfg.controls,
           f"{' and '.join(dynamic)} train at the counts of a ticket that training found: they need prune.at: trained, "
           f"not {cfg.prune.at!r}")


def _check_pai(cfg: Config) -> None:
    """Pruning at initialization: the keys that only make sense together."""
    p = cfg.prune
    _check(p.at in PRUNE_AT, "prune.at", p.at, "one of " + ", ".join(PRUNE_AT))
    _check(p.criterion not in PAI_CRITERIA or p.at == "init", "prune.criterion", p.criterion,
           f"{p.criterion} scores the rewind point before training: it needs prune.at: init, not {p.at!r}")
    _check(p.criterion != "magnitude_increase" or p.at == "trained", "prune.criterion", p.criterion,
           "|w| - |w0| is 0 at the rewind point: it needs prune.at: trained")
    _check("invert" not in cfg.controls or p.criterion != "random", "controls", cfg.controls,
           "invert keeps the lowest scores: it has no meaning with prune.criterion: random")
    _check(p.at == "trained" or cfg.rewind.to in ("init", "iteration"), "prune.at", p.at,
           f"pruning at initialization trains from the rewind point: rewind.to init or iteration, not {cfg.rewind.to!r}")


def _validate_instability(cfg: Config) -> None:
    i = cfg.instability
    _check(0 <= i.threshold < math.inf, "instability.threshold", i.threshold, "a finite number >= 0")
    _check(i.bn in BN_MODES, "instability.bn", i.bn, "one of " + ", ".join(BN_MODES))
    if i.bn == "recompute":
        _check(i.bn_batches * cfg.train.batch_size <= i.train_subset, "instability.bn_batches", i.bn_batches,
               f"bn_batches x train.batch_size={cfg.train.batch_size} must fit in instability.train_subset={i.train_subset}")
    if i.enabled:  # two copies of a ticket start from the same rewind point: undefined when training starts trained
        _check(cfg.rewind.to in ("init", "iteration"), "instability.enabled", i.enabled,
               f"undefined with rewind.to={cfg.rewind.to!r}; use rewind.to init or iteration")


def from_dict(raw: dict) -> Config:
    return validate(_build(Config, raw, ""))


def load(path: str | Path = "params.yaml", complete: bool = False) -> Config:
    """The validated params of `path`; with `complete`, every key must be in the file (as `make params` writes
    it; DVC stops a stage whose listed key is missing, and cannot read dvc.yaml without prune.chain)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of params, got {type(raw).__name__}")
    if complete:
        regenerate = "params.yaml is generated from conf/config.yaml: `make params` or `dvc exp run` rewrites it"
        if not raw:
            raise ConfigError(f"{path} is empty ({regenerate})")
        missing = [k for k in flatten(dataclasses.asdict(Config())) if not _has(raw, k)]
        if missing:
            raise ConfigError(f"{path}: {missing[0]} is missing" + (f" (and {len(missing) - 1} more keys)"
                                                                    if len(missing) > 1 else "") + f"; {regenerate}")
    return from_dict(raw or {})


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested params dict as {dotted key: value}; an empty dict (prune.chain of 0 rounds) is a value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _has(raw: dict, key: str) -> bool:
    """Whether the nested dict `raw` holds the dotted `key`."""
    for part in key.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True
