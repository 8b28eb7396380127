"""Transfer (Morcos et al. 2019, "One ticket to win them all"): another experiment's ticket trained on this
experiment's data with its optimizer, beside the controls of that mask and the ticket this data found.

`transfer.source` (an experiment name or git revision of this repository) and `transfer.round` (rK) name the
ticket; while transfer.source is set, dvc.yaml has two more stages (an empty foreach leaves them out otherwise):

  transfer-source@rK  always runs: the source's runs/rK/mask.pt and runs/init/model.pt (its θ0, or θk), read
                      through `lottery.revisions` (git, the DVC cache, the default remote) and checked, copied to
                      runs/transfer/source/ with source.json (its model, data, classes, input shape, seeds). Its
                      outputs change only when the source's files do: a name that now points at other artifacts
                      (a moved branch, a re-run experiment) reruns the transfer, one that does not reruns nothing.
                      A source that does not exist or lacks the round, another architecture or input shape: refused
                      here, in one line, before anything trains.
  transfer@rK         the source's mask from the source's θ0 (transfer.init: source) or this experiment's
                      (own), and its `reinit` and `random` controls (`rounds.assemble`, as a round builds them),
                      trained on this experiment's data and train.* -> runs/transfer/metrics.json and live/.

The output layer: when the classes differ, its weights and bias start from this experiment's θ0 (a fresh init of
the right shape) and its mask is a random one at the source output layer's density (seeded per trial), in the
transferred ticket and in both controls. Every other parameter must have the source's shape.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import yaml

from . import artifacts, distributed, flops, masks, models, pruning, rounds
from .config import TRANSFER_CONTROLS, Config, LotteryError
from .data import CLASSES, SHAPES, load_prepared, prepared_params
from .revisions import Revision, RevisionError, parse
from .runtime import resolve_device

SOURCE = Path("transfer") / "source"  # under runs/: the materialised source
FILES = {"mask.pt": "mask", "model.pt": "weights"}  # what the source contributes, and each artifact's kind


class TransferError(LotteryError, ValueError):
    """A source ticket that cannot be trained here: another architecture, input shape, or too few trials."""


def _io(meta: dict, dataset: str) -> tuple[int, list[int]]:
    """(classes, input shape) of an experiment: its init artifact's record (your own network or data), else
    data.dataset's tables."""
    if "num_classes" in meta:
        return meta["num_classes"], list(meta["input_shape"])
    return CLASSES[dataset], list(SHAPES[dataset])


def output_params(kinds: dict[str, str], keys) -> list[str]:
    """The parameters of the output layer: its weight (kind 'output') and its module's others (the bias)."""
    layer = next(k for k, kind in kinds.items() if kind == "output").rsplit(".", 1)[0]
    return [k for k in keys if k.rsplit(".", 1)[0] == layer]


def fetch(cfg: Config, runs: Path, repo: str | Path = ".", log=print) -> dict:
    """transfer-source: the source's round mask and θ0 checked against this experiment and copied with source.json
    to runs/transfer/source/; returns source.json's record."""
    x = cfg.transfer
    rev = Revision(x.source, repo)
    params = parse(rev.read("params.yaml"), "params.yaml", x.source, yaml.safe_load, dict)
    try:
        model, dataset, chain = params["model"]["name"], params["data"]["dataset"], params["prune"]["chain"]
        seeds = [params["seed"] + t for t in range(params["trials"])]
    except (TypeError, KeyError):
        raise RevisionError(f"params.yaml of '{x.source}' has no model.name, data.dataset, prune.chain, seed or "
                            "trials: not an experiment of this project") from None
    if x.round not in chain:
        raise TransferError(f"transfer.round: '{x.source}' has no round {x.round} (its pruned rounds: "
                            f"{', '.join(chain) or 'none'})")
    blobs = {"mask.pt": rev.round_file(x.round, "mask.pt"), "model.pt": rev.read("runs/init/model.pt")}
    with tempfile.TemporaryDirectory() as tmp:
        loaded = {}
        for name, blob in blobs.items():
            (Path(tmp) / name).write_bytes(blob)
            path = f"runs/{x.round if name == 'mask.pt' else 'init'}/{name}"
            try:
                loaded[name] = artifacts.load(Path(tmp) / name, FILES[name])
            except artifacts.ArtifactError as e:
                raise RevisionError(f"{path} of '{x.source}': {str(e).replace(str(Path(tmp) / name) + ': ', '')}") from None
    (mask, _), (theta, meta) = loaded["mask.pt"], loaded["model.pt"]
    classes, shape = _io(meta, dataset)
    record = {"source": x.source, "round": x.round, "model": model, "dataset": dataset, "classes": classes,
              "input_shape": shape, "seeds": seeds, "iteration": meta.get("iteration", 0)}
    check(cfg, runs, record, mask, theta)
    for name, blob in blobs.items():
        artifacts.atomic_write_bytes(runs / SOURCE / name, blob)
    artifacts.atomic_write_bytes(runs / SOURCE / "source.json", (json.dumps(record, indent=1) + "\n").encode())
    log(f"[transfer] '{x.source}' ({model} on {dataset}, seeds {seeds}): round {x.round}'s mask "
        f"({float(masks.percent_remaining({k: m[:1] for k, m in mask.items()})[0]):.2f}% of weights remaining in "
        f"trial 0) and θ0 -> {runs / SOURCE}/")
    return record


def _here(cfg: Config, runs: Path) -> tuple[tuple[int, list[int]], dict[str, torch.Tensor], dict[str, str]]:
    """This experiment's (classes, input shape), one network's parameters and its prunable weights' kinds."""
    io = rounds.init_io(cfg, runs)
    one = rounds.build_model(cfg, [0], io)
    classes, shape = io or (CLASSES[cfg.data.dataset], SHAPES[cfg.data.dataset])
    return (classes, list(shape)), one.state_dict(), models.kinds(one, cfg.prune.layers, cfg.prune.ignore)


def check(cfg: Config, runs: Path, record: dict, mask: masks.Mask, theta: dict[str, torch.Tensor]) -> None:
    """Refuse, naming what differs, a source ticket this experiment cannot train: model.name, input shape, a
    parameter's shape (the output layer's may differ when the classes do), the prunable weights, too few trials."""
    src = f"transfer.source '{record['source']}'"
    if record["model"] != cfg.model.name:
        raise TransferError(f"{src} is a {record['model']} network, this experiment a {cfg.model.name}: a ticket "
                            "transfers between networks of one architecture (model.name)")
    (classes, shape), one, kinds = _here(cfg, runs)
    if record["input_shape"] != shape:
        raise TransferError(f"{src} takes inputs of shape {tuple(record['input_shape'])} ({record['dataset']}), this "
                            f"experiment's data {tuple(shape)} ({cfg.data.dataset}): the input shapes must match")
    head = set(output_params(kinds, one)) if record["classes"] != classes else set()
    for key, ref in one.items():
        there = tuple(theta[key].shape[1:]) if key in theta else None
        if key not in head and there != tuple(ref.shape[1:]):
            raise TransferError(f"{src}: parameter '{key}' has shape {there} there, {tuple(ref.shape[1:])} here: not "
                                "the same architecture")
    if set(theta) != set(one):
        raise TransferError(f"{src}: parameters {sorted(set(theta) - set(one))} are not this network's")
    if set(mask) != set(kinds):
        raise TransferError(f"{src} prunes {sorted(mask)}, this experiment {sorted(kinds)} (prune.layers, "
                            "prune.ignore)")
    if len(record["seeds"]) < cfg.trials:
        raise TransferError(f"{src} ran {len(record['seeds'])} trial(s), this experiment's trials={cfg.trials} needs "
                            "a source ticket for each")


def read(cfg: Config, runs: Path) -> tuple[dict, masks.Mask, dict[str, torch.Tensor], dict]:
    """The materialised source: source.json's record, the round's mask and θ0 (its first `trials` networks)."""
    folder = runs / SOURCE
    try:
        record = json.loads((folder / "source.json").read_text())
    except (OSError, ValueError) as e:
        raise artifacts.ArtifactError(f"{folder / 'source.json'}: unreadable ({type(e).__name__}); `dvc repro` the "
                                      f"transfer-source@{cfg.transfer.round} stage") from None
    if (record.get("source"), record.get("round")) != (cfg.transfer.source, cfg.transfer.round):
        raise artifacts.ArtifactError(f"{folder}: holds '{record.get('source')}' {record.get('round')}, params.yaml "
                                      f"asks for '{cfg.transfer.source}' {cfg.transfer.round}; `dvc repro`")
    mask, _ = artifacts.load(folder / "mask.pt", "mask", {"round": cfg.transfer.round})
    theta, meta = artifacts.load(folder / "model.pt", "weights", {"round": "init"})
    check(cfg, runs, record, mask, theta)
    t = cfg.trials
    return record, {k: m[:t].bool() for k, m in mask.items()}, {k: v[:t] for k, v in theta.items()}, meta


def start(cfg: Config, runs: Path, record: dict, mask: masks.Mask, theta: dict[str, torch.Tensor], meta: dict):
    """The transferred ticket before training: (mask, start weights, the iteration its schedule starts at, whether
    the output layer was re-initialised)."""
    (classes, _), one, kinds = _here(cfg, runs)
    names = list(kinds)
    reference = {k: v.expand(cfg.trials, *v.shape[1:]) for k, v in one.items()}
    own, _, own_meta = rounds._load_round(cfg, runs, "init", reference, names)
    weights, iteration = (theta, meta.get("iteration", 0)) if cfg.transfer.init == "source" else \
        (own, own_meta.get("iteration", 0))
    weights, mask = dict(weights), dict(mask)
    reinit = record["classes"] != classes
    if reinit:  # a fresh output layer: this experiment's θ0, and a random mask at the source's density
        for key in output_params(kinds, weights):
            weights[key] = own[key]
        out = next(k for k in names if kinds[k] == "output")
        counts = [round(float(m.float().mean()) * own[out][0].numel()) for m in mask[out]]
        flat = torch.zeros(own[out].shape, dtype=torch.bool).flatten(1)
        for t, n in enumerate(counts):
            flat[t, :n] = True
        seeds = [rounds.derived_seed(s, "transfer-output", cfg.transfer.round) for s in rounds.trial_seeds(cfg)]
        mask[out] = pruning.random_like({out: flat.view_as(own[out])}, seeds)[out]
    if iteration >= cfg.train.iterations:
        raise TransferError(f"transfer.source '{cfg.transfer.source}': its θ0 is θk at iteration {iteration}, not "
                            f"before train.iterations={cfg.train.iterations}")
    return mask, weights, iteration, reinit


def run(cfg: Config, runs: Path, data_path: Path, log=print, resume_dir: Path | None = None) -> dict:
    """transfer@rK: train the source's ticket and its controls here; runs/transfer/metrics.json and live/."""
    x = cfg.transfer
    device = resolve_device(cfg.train.device, cfg.train.precision)
    data = load_prepared(data_path, device, prepared_params(cfg), cfg.data)
    record, src_mask, theta, meta = read(cfg, runs)
    mask, weights, iteration, reinit = start(cfg, runs, record, src_mask, theta, meta)
    io = rounds.init_io(cfg, runs)
    variants = ["ticket", *[c for c in cfg.controls if c in TRANSFER_CONTROLS]]
    label = f"transfer-{x.round}"
    stack = rounds.assemble(cfg, label, variants, list(mask), mask, weights, io, start=iteration)
    models.to_device(stack.model, device)
    rounds.dry_check(cfg, stack.model, data)
    log(f"[{label}] '{x.source}' {x.round} ({record['model']} on {record['dataset']}) on {cfg.data.dataset} with "
        f"{cfg.train.optimizer}: {len(stack.init_seeds)} networks ({', '.join(variants)} x {cfg.trials} trials), "
        f"{float(masks.percent_remaining(stack.mask)[0]):.2f}% of weights remaining"
        + (", output layer re-initialised" if reinit else ""))
    dev_mask = {k: m.to(device) for k, m in stack.mask.items()}
    result = rounds.train_groups(cfg, stack, dev_mask, data, label, log, resume_dir, io)
    if not distributed.is_main():  # rank 0 of a data-parallel transfer writes it
        return {}
    macs = flops.forward_macs(stack.model, stack.mask, flops.positions(stack.model, data.example_shape))
    iterations = cfg.train.iterations - stack.start
    metrics = {"round": x.round, "index": rounds.round_index(x.round), "source": x.source, "init": x.init, "source_model": record["model"],
               "source_dataset": record["dataset"], "source_seeds": record["seeds"][:cfg.trials],
               "output_layer": "reinitialised" if reinit else "transferred", "optimizer": cfg.train.optimizer,
               "networks": rounds.network_rows(stack, result, rounds.trial_seeds(cfg), macs, cfg.train.batch_size,
                                               iterations)}
    out = runs / "transfer"
    artifacts.atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=1) + "\n").encode())
    rounds.log_curves(out / "live", rounds.order(stack), result.curve)
    for v in variants:
        rows = [n for n in metrics["networks"] if n["variant"] == v]
        log(f"[{label}] {v:>6}: {rows[0]['weights_remaining']:6.2f}% remaining  test acc "
            f"{sum(r['test_accuracy'] for r in rows) / len(rows):.2f}%")
    return metrics
