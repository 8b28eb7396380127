"""One experiment step per function: `init` (θ0 for every trial) and `run_round` (prune, rewind, train).

A round trains every network it needs as one stack: the ticket of each trial and, beside it,
each control (`reinit`: the ticket's mask on a fresh init; `random`: a random mask with the
ticket's per-layer sparsity on θ0). Round r0 is the dense network and has no controls.
Files written per round (all under runs/<round>/):
  mask.pt      the ticket masks, one per trial
  model.pt     the ticket's trained weights, one per trial (the next round prunes these)
  controls.pt  masks and trained weights of the controls
  metrics.json per-network results and validation curves (summarize reads these)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import artifacts, masks, models, pruning
from .artifacts import ArtifactError
from .config import Config
from .data import load_prepared
from .training import resolve_device, train


def trial_seeds(cfg: Config) -> list[int]:
    return [cfg.seed + t for t in range(cfg.trials)]


def derived_seed(*parts: object) -> int:
    """A stable 31-bit seed from labels (for controls): recorded with every result."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def round_index(name: str) -> int:
    return int(name[1:])


def _meta(cfg: Config, kind: str, round_name: str, **extra) -> dict:
    digest = cfg.section_digest("seed", "trials", "controls", "model", "data", "train", "prune", "rewind")
    return {"kind": kind, "model": cfg.model.name, "round": round_name, "seeds": trial_seeds(cfg), "params": digest, **extra}


def rewind_point(cfg: Config) -> int:
    """k of θk, the iteration rounds rewind to (0 = θ0)."""
    return cfg.rewind.iteration if cfg.rewind.to == "iteration" else 0


def init(cfg: Config, out: Path, data_path: Path | None = None, log=print) -> None:
    """The rewind point of every trial and the all-ones mask of the dense round.

    θ0 (network t from seed + t); with `rewind.to: iteration`, θk: the dense networks
    trained for `rewind.iteration` iterations (data from `data_path`).
    """
    seeds = trial_seeds(cfg)
    model = models.build(cfg.model.name, seeds)
    names = models.prunable(model)
    mask = masks.ones(model, names)
    k = rewind_point(cfg)
    if k:
        device = resolve_device(cfg.train.device, cfg.train.precision)
        data = load_prepared(data_path, device)
        model.to(device)
        log(f"[init] training {len(seeds)} dense network(s) to iteration {k} (the rewind point θk)")
        head = dataclasses.replace(cfg.train, iterations=k, eval_every=k)
        train(model, {n: m.to(device) for n, m in mask.items()}, data, head, order_seeds=seeds, label="init",
              log=log, augment=cfg.data.augment)
    artifacts.save(out / "model.pt", model.state_dict(), _meta(cfg, "weights", "init", iteration=k))
    artifacts.save(out / "mask.pt", mask, _meta(cfg, "mask", "init"))


def _load_round(cfg: Config, runs: Path, name: str, reference: dict[str, torch.Tensor], names: list[str]):
    """The ticket weights and mask a round wrote, checked against each other and this run."""
    expect = {"model": cfg.model.name, "round": name, "seeds": trial_seeds(cfg)}
    weights, meta = artifacts.load(runs / name / "model.pt", "weights", expect)
    artifacts.check_like(runs / name / "model.pt", weights, reference)
    mask, _ = artifacts.load(runs / name / "mask.pt", "mask", expect)
    artifacts.check_like(runs / name / "mask.pt", mask, {k: reference[k] for k in names})
    return weights, {k: m.bool() for k, m in mask.items()}, meta


@dataclass
class Stack:
    """The networks of one round before training: rewound weights and masks, variant-major."""

    model: torch.nn.Module
    mask: masks.Mask
    ticket_mask: masks.Mask
    variants: list[str]
    init_seeds: list[int]
    mask_seeds: list[int | None]
    names: list[str]
    start: int = 0  # iteration the schedule resumes at (rewinding to θk)
    constant_lr: float | None = None  # fine-tuning

    def rows(self, variant: str) -> slice:
        n_t = len(self.init_seeds) // len(self.variants)
        j = self.variants.index(variant)
        return slice(j * n_t, (j + 1) * n_t)


def build_stack(cfg: Config, name: str, prev: str, runs: Path) -> Stack:
    """Prune the previous round's ticket and rewind: the ticket and every control, ready to train."""
    k = round_index(name)
    if cfg.prune.chain.get(name) != prev:
        raise ValueError(f"round {name} prunes {cfg.prune.chain.get(name)!r} under prune.schedule={cfg.prune.schedule}, not {prev!r}")
    seeds = trial_seeds(cfg)
    variants = ["ticket"] + (list(cfg.controls) if k > 0 else [])
    reference = models.build(cfg.model.name, [0] * cfg.trials).state_dict()
    one = models.build(cfg.model.name, [0])
    names, kinds = models.prunable(one), models.kinds(one)

    theta0, _, init_meta = _load_round(cfg, runs, "init", reference, names)
    want_k = rewind_point(cfg)
    if init_meta.get("iteration", 0) != want_k:
        raise ArtifactError(f"{runs / 'init' / 'model.pt'}: rewind point at iteration {init_meta.get('iteration', 0)}, "
                            f"rewind.iteration asks for {want_k}; `dvc repro init`")
    prev_weights, prev_mask, _ = _load_round(cfg, runs, prev, reference, names)

    # Prune the trained ticket of the round named by the chain (round 0 prunes nothing).
    if k == 0:
        ticket_mask = prev_mask
    else:
        steps = k if cfg.prune.schedule == "oneshot" else 1
        kind_rates = {kind: pruning.oneshot_rate(r, steps) for kind, r in cfg.kind_rates.items()}
        rates = pruning.kind_rates(kinds, kind_rates)
        pooled = [n for n in names if kinds[n] in cfg.prune.global_kinds] if cfg.prune.strategy == "global" else []
        pooled_rate = pruning.oneshot_rate(cfg.prune.rate, steps)
        gen = torch.Generator().manual_seed(derived_seed(cfg.seed, "criterion", name))
        score = pruning.scores(cfg.prune.criterion, {n: prev_weights[n] for n in names}, theta0, gen)
        ticket_mask = pruning.prune(score, prev_mask, rates, pooled, pooled_rate)
        _check_planned(ticket_mask, prev_mask, rates, pooled, pooled_rate)

    # Where training starts: θ0 / θk (init artifact), or the trained weights (lr rewinding, fine-tuning).
    start_weights = prev_weights if cfg.rewind.to in ("lr", "finetune") else theta0

    init_seeds, mask_seeds = [], []
    for v in variants:
        for t, s in enumerate(seeds):
            init_seeds.append(derived_seed(cfg.seed, "reinit", t, name) if v == "reinit" else s)
            mask_seeds.append(derived_seed(cfg.seed, "random", t, name) if v == "random" else None)
    model = models.build(cfg.model.name, init_seeds)
    state = model.state_dict()
    n_t, net_masks = len(seeds), []
    for j, v in enumerate(variants):
        if v != "reinit":  # rewind to the start weights, read from the artifacts
            for key in state:
                state[key][j * n_t : (j + 1) * n_t] = start_weights[key]
        if v == "random":
            gen = torch.Generator().manual_seed(mask_seeds[j * n_t])
            net_masks.append(pruning.random_like(ticket_mask, gen))
        else:
            net_masks.append(ticket_mask)
    model.load_state_dict(state)
    mask = {key: torch.cat([m[key] for m in net_masks]) for key in names}
    masks.apply(model, mask)
    constant_lr = cfg.rewind.finetune_lr if cfg.rewind.to == "finetune" and k > 0 else None
    return Stack(model, mask, ticket_mask, variants, init_seeds, mask_seeds, names, want_k, constant_lr)


def run_round(cfg: Config, name: str, prev: str, runs: Path, data_path: Path, log=print,
              resume_dir: Path | None = None, started: float | None = None) -> dict:
    stack = build_stack(cfg, name, prev, runs)
    model, mask, variants, names = stack.model, stack.mask, stack.variants, stack.names
    init_seeds, mask_seeds, ticket_mask = stack.init_seeds, stack.mask_seeds, stack.ticket_mask
    seeds, k = trial_seeds(cfg), round_index(name)
    n_t = len(seeds)

    device = resolve_device(cfg.train.device, cfg.train.precision)
    data = load_prepared(data_path, device)
    model.to(device)
    dev_mask = {key: m.to(device) for key, m in mask.items()}
    log(f"[{name}] {len(variants) * n_t} networks ({', '.join(variants)} x {n_t} trials), "
        f"{float(masks.percent_remaining(ticket_mask)[0]):.2f}% of weights remaining, device {device}")
    t0 = time.perf_counter()
    if started is not None:
        log(f"[{name}] start-up {t0 - started:.2f}s (imports, artifacts, data) before the first iteration")
    result = train(model, dev_mask, data, cfg.train, order_seeds=seeds * len(variants), label=name, log=log,
                   resume_dir=resume_dir, checkpoint_seconds=cfg.train.checkpoint_seconds,
                   start=stack.start, constant_lr=stack.constant_lr, augment=cfg.data.augment)
    seconds = time.perf_counter() - t0

    trained = {key: v.detach().cpu() for key, v in model.state_dict().items()}
    _check_saved(trained, mask, name)

    # 3. Outputs.
    out = runs / name
    tick = stack.rows("ticket")
    artifacts.save(out / "mask.pt", ticket_mask, _meta(cfg, "mask", name))
    artifacts.save(out / "model.pt", {key: v[tick] for key, v in trained.items()}, _meta(cfg, "weights", name))
    controls = {}
    for v in variants[1:]:
        rows = stack.rows(v)
        controls.update({f"{v}/mask/{key}": mask[key][rows] for key in names})
        controls.update({f"{v}/weights/{key}": val[rows] for key, val in trained.items()})
    artifacts.save(out / "controls.pt", controls, _meta(cfg, "controls", name, variants=variants[1:]))

    remaining = masks.percent_remaining(mask)
    per_layer = masks.kept(mask)
    networks = []
    for i in range(len(init_seeds)):
        v, t = variants[i // n_t], i % n_t
        networks.append({
            "variant": v, "trial": t, "seed": seeds[t], "init_seed": init_seeds[i], "mask_seed": mask_seeds[i],
            "weights_remaining": round(float(remaining[i]), 4),
            "layers_remaining": {key: round(100.0 * int(per_layer[key][i]) / mask[key][i].numel(), 4) for key in names},
            "early_stop_iteration": result.early_stop_iteration[i],
            "test_accuracy": round(100 * result.test_accuracy[i], 4),
            "final_test_accuracy": round(100 * result.final_test_accuracy[i], 4),
            "min_val_loss": round(result.min_val_loss[i], 6),
        })
    curve = [
        {"iteration": row["iteration"], "variant": variants[i // n_t], "trial": i % n_t,
         "val_loss": round(row["val_loss"][i], 6), "val_acc": round(100 * row["val_acc"][i], 4)}
        for row in result.curve for i in range(len(init_seeds))
    ]
    metrics = {"round": name, "index": k, "networks": networks, "curve": curve}
    artifacts.atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=1) + "\n").encode())
    for v in variants:
        rows = [n for n in networks if n["variant"] == v]
        log(f"[{name}] {v:>6}: {rows[0]['weights_remaining']:6.2f}% remaining  "
            f"test acc {sum(r['test_accuracy'] for r in rows) / len(rows):.2f}%  "
            f"early stop {sum(r['early_stop_iteration'] for r in rows) / len(rows):.0f}")
    log(f"[{name}] trained in {seconds:.1f}s")
    return metrics


def _check_planned(new: masks.Mask, old: masks.Mask, rates: dict[str, float], pooled=(), pooled_rate=0.0) -> None:
    """Invariants of a pruning step: masks only shrink, and each group lost exactly its planned count."""
    if not masks.is_subset(new, old):
        raise ArtifactError("pruning revived a weight: the new mask is not a subset of the previous one")
    before, after = masks.kept(old), masks.kept(new)
    if pooled:
        b, a = sum(before[n] for n in pooled), sum(after[n] for n in pooled)
        for i in range(len(b)):
            if int(a[i]) != int(b[i]) - pruning.n_to_prune(pooled_rate, int(b[i])):
                raise ArtifactError(f"global pruning kept {int(a[i])} weights, planned {int(b[i]) - pruning.n_to_prune(pooled_rate, int(b[i]))}")
    for key in new:
        if key in pooled:
            continue
        for i in range(len(before[key])):
            planned = int(before[key][i]) - pruning.n_to_prune(rates[key], int(before[key][i]))
            if int(after[key][i]) != planned:
                raise ArtifactError(f"layer '{key}' kept {int(after[key][i])} weights, planned {planned}")


def _check_saved(weights: dict[str, torch.Tensor], mask: masks.Mask, name: str) -> None:
    for key, m in mask.items():
        if (weights[key][~m] != 0).any():
            raise ArtifactError(f"[{name}] pruned weights of '{key}' are not zero; refusing to save")
