"""One experiment step per function: `init` (θ0 for every trial) and `run_round` (prune, rewind, train).

A round trains every network it needs as one stack: the ticket of each trial and, beside it,
each control (`reinit`: the ticket's mask on a fresh init; `random`: a random mask with the
ticket's per-layer sparsity on θ0; `rigl`, `set`: dynamic sparse training from a fresh init at the
ticket's counts, lottery.dst). Round r0 is the dense network and has no controls.
Files written per round (all under runs/<round>/):
  mask.pt      the ticket masks, one per trial
  model.pt     the ticket's trained weights, one per trial (the next round prunes these)
  controls.pt  masks and trained weights of the controls (and of the ticket's second copy, `copy`,
               with `instability.enabled`)
  early_bird.pt with `prune.early_bird.enabled`: the ticket's prunable weights at each trial's early-bird
               iteration, which the next round prunes instead of model.pt's (`lottery.early_bird`); else empty
  metrics.json per-network results (summarize reads these)
  live/        validation curves of every network, in DVCLive's layout (`dvc plots show`)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import artifacts, distributed, dst, early_bird, flops, generic, instability, masks, models, pruning, resume, saliency, sparse
from .artifacts import ArtifactError
from .config import SEARCH_KEYS, Config, ConfigError, artifact_params, dvc_stage, is_import_path, predecessor
from .data import CLASSES, SHAPES, TensorData, load_prepared, prepared_params, sized_by_data
from .runtime import one_thread, resolve_device
from .training import Clock, Result, digest, train


def trial_seeds(cfg: Config) -> list[int]:
    return [cfg.seed + t for t in range(cfg.trials)]


def derived_seed(*parts: object) -> int:
    """A stable 31-bit seed from labels (for controls): recorded with every result."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def round_index(name: str) -> int:
    return int(name[1:])


def _meta(cfg: Config, kind: str, round_name: str, **extra) -> dict:
    """Artifact metadata; its params digest covers exactly the keys of the stage that writes it (STAGE_PARAMS)."""
    return {"kind": kind, "model": cfg.model.name, "round": round_name, "seeds": trial_seeds(cfg),
            "params": artifact_params(cfg, round_name), **extra}


def build_model(cfg: Config, seeds: list[int], io: tuple[int, tuple[int, ...]] | None = None) -> torch.nn.Module:
    """The stack of `cfg.model.name` (a registry name or 'package.module:factory') for the data's classes and
    input shape: `io`, else data.dataset's (a named dataset)."""
    return models.build(cfg.model.name, seeds, *(io or (CLASSES[cfg.data.dataset], SHAPES[cfg.data.dataset])))


def own(cfg: Config) -> bool:
    """Your own network, or data sized by its files (your own dataset, an image folder): sizes recorded in init's
    metadata, a dry forward before training."""
    return is_import_path(cfg.model.name) or sized_by_data(cfg.data.dataset)


def init_io(cfg: Config, runs: Path) -> tuple[int, tuple[int, ...]] | None:
    """The classes and input shape init recorded (your own dataset's, an image folder's come from its data), else None."""
    if not sized_by_data(cfg.data.dataset):
        return None
    _, meta = artifacts.load(runs / "init" / "model.pt", "weights")
    return meta["num_classes"], tuple(meta["input_shape"])


def dry_check(cfg: Config, model: torch.nn.Module, data: TensorData) -> None:
    """Your own network or dataset: a dry forward on one batch before any training."""
    if own(cfg):
        classes = data.classes if sized_by_data(cfg.data.dataset) else CLASSES[cfg.data.dataset]
        x, _ = next(data.train.chunks(cfg.train.batch_size))
        generic.check(model, x, data.train.y, classes)


def _io_meta(cfg: Config, io: tuple[int, tuple[int, ...]] | None) -> dict:
    """What rebuilding your own network needs besides its name (ticket export) and what the rounds of your own
    dataset build with: classes and input shape ({} for a registry network on a named dataset)."""
    if not own(cfg):
        return {}
    classes, shape = io or (CLASSES[cfg.data.dataset], SHAPES[cfg.data.dataset])
    return {"num_classes": classes, "input_shape": list(shape)}


def rewind_point(cfg: Config) -> int:
    """k of θk, the iteration rounds rewind to (0 = θ0)."""
    return cfg.rewind.iteration if cfg.rewind.to == "iteration" else 0


def init(cfg: Config, out: Path, data_path: Path | None = None, log=print) -> None:
    """The rewind point of every trial and the all-ones mask of the dense round.

    θ0 (network t from seed + t); with `rewind.to: iteration`, θk: the dense networks
    trained for `rewind.iteration` iterations (data from `data_path`).
    """
    seeds = trial_seeds(cfg)
    prepared = load_prepared(data_path, params=prepared_params(cfg), data=cfg.data) if own(cfg) else None
    io = (prepared.classes, prepared.example_shape) if sized_by_data(cfg.data.dataset) else None
    model = build_model(cfg, seeds, io)
    names = models.prunable(model, cfg.prune.layers, cfg.prune.ignore)
    mask = masks.ones(model, names)
    sparse.check(model, names, cfg.train)  # (train.sparse: on without a sparse path stops here, before any training)
    k = rewind_point(cfg)
    if prepared is not None:  # bad input stops here, before any round trains
        dry_check(cfg, model, prepared)
    if k:
        device = resolve_device(cfg.train.device, cfg.train.precision)
        data = load_prepared(data_path, device, prepared_params(cfg), cfg.data)
        models.to_device(model, device)
        log(f"[init] training {len(seeds)} dense network(s) to iteration {k} (the rewind point θk)")
        head = dataclasses.replace(cfg.train, iterations=k, eval_every=k)
        train(model, {n: m.to(device) for n, m in mask.items()}, data, head, order_seeds=seeds, label="init",
              log=log, augment=cfg.data.augment)
        if not distributed.is_main():  # rank 0 of a data-parallel init writes θk
            return
    artifacts.save(out / "model.pt", model.state_dict(), _meta(cfg, "weights", "init", iteration=k,
                                                                 **_io_meta(cfg, io)))
    artifacts.save(out / "mask.pt", mask, _meta(cfg, "mask", "init"))


def _load_round(cfg: Config, runs: Path, name: str, reference: dict[str, torch.Tensor], names: list[str]):
    """The ticket weights and mask a round wrote, checked against each other and this run."""
    expect = {"model": cfg.model.name, "round": name, "seeds": trial_seeds(cfg), "params": artifact_params(cfg, name)}
    weights, meta = artifacts.load(runs / name / "model.pt", "weights", expect)
    artifacts.check_like(runs / name / "model.pt", weights, reference)
    mask, _ = artifacts.load(runs / name / "mask.pt", "mask", expect)
    artifacts.check_like(runs / name / "mask.pt", mask, {k: reference[k] for k in names})
    return weights, {k: m.bool() for k, m in mask.items()}, meta


def _check_kept(cfg: Config, path: Path, mask: masks.Mask, kinds: dict[str, str], name: str) -> None:
    """A loaded ticket mask keeps exactly what the plan of the round that wrote it keeps (init: every weight)."""
    dense = {k: m[0].numel() for k, m in mask.items()}
    kept = masks.kept(mask)
    k = 0 if name == "init" else round_index(name)
    for layers, planned in pruning.planned_kept(cfg.prune, kinds, dense, k):
        for t, n in enumerate(sum(kept[key] for key in layers).tolist()):
            if n != planned:
                raise ArtifactError(f"{path}: {', '.join(layers)} of trial {t} keep {n} weights, the plan of {name} "
                                    f"keeps {planned}; `dvc repro -f` the stage that writes it")


@dataclass
class Stack:
    """The networks of one round before training: rewound weights and masks, variant-major (see `rows`)."""

    variants: list[str]
    trials: int
    names: list[str]
    ticket_mask: masks.Mask
    model: torch.nn.Module | None = None
    mask: masks.Mask | None = None
    init_seeds: list[int] = field(default_factory=list)
    mask_seeds: list[int | None] = field(default_factory=list)
    order_seeds: list[int] = field(default_factory=list)  # data order of each network: its trial's seed
    start: int = 0  # iteration the schedule resumes at (rewinding to θk)
    constant_lr: float | None = None  # fine-tuning
    kinds: dict[str, str] = field(default_factory=dict)  # prunable layer -> conv, fc or output
    theta0: dict[str, torch.Tensor] = field(default_factory=dict)  # the rewind point (magnitude_increase scores it)

    def rows(self, variant: str, trial: int | None = None) -> slice | int:
        """The rows of `variant` in every stacked tensor (a slice over its trials), or the row of one trial."""
        j = self.variants.index(variant) * self.trials
        return slice(j, j + self.trials) if trial is None else j + trial


def build_stack(cfg: Config, name: str, prev: str, runs: Path, data: TensorData | None = None, log=print) -> Stack:
    """Prune the previous round's ticket and rewind: the ticket and every control, ready to train.

    `data` (load_prepared): the batches SNIP and GraSP score, the input shape of SynFlow (prune.at: init)."""
    k = round_index(name)
    if predecessor(cfg.prune, name) != prev:
        raise ConfigError(f"round {name} prunes {predecessor(cfg.prune, name)!r} under prune.schedule={cfg.prune.schedule}, "
                          f"not {prev!r}")
    io = init_io(cfg, runs)
    reference = build_model(cfg, [0] * cfg.trials, io).state_dict()
    one = build_model(cfg, [0], io)
    chosen = (cfg.prune.layers, cfg.prune.ignore)  # your own network's prune.layers / prune.ignore
    names, kinds = models.prunable(one, *chosen), models.kinds(one, *chosen)

    theta0, _, init_meta = _load_round(cfg, runs, "init", reference, names)
    want_k = rewind_point(cfg)
    if init_meta.get("iteration", 0) != want_k:
        raise ArtifactError(f"{runs / 'init' / 'model.pt'}: rewind point at iteration {init_meta.get('iteration', 0)}, "
                            f"rewind.iteration asks for {want_k}; `dvc repro init`")
    prev_weights, prev_mask, _ = _load_round(cfg, runs, prev, reference, names)
    _check_kept(cfg, runs / prev / "mask.pt", prev_mask, kinds, prev)
    searched = prev_weights  # the weights this round prunes: the early-bird iteration's with prune.early_bird
    if cfg.prune.early_bird.enabled and k > 0:
        searched = _load_early_bird(cfg, runs, prev, {n: reference[n] for n in names})

    # Prune the trained ticket of the round named by the chain (round 0 prunes nothing); prune.at: init
    # prunes the rewind point instead, and ignores the previous round's weights.
    ticket_mask, inverted = prev_mask, None
    if k > 0:
        ticket_mask, inverted = _prune(cfg, name, kinds, theta0, searched, prev_mask, data, log)
        if cfg.prune.at == "init":
            _check_kept(cfg, runs / name / "mask.pt", ticket_mask, kinds, name)

    # The ticket's second copy (instability) comes last: every other network keeps its rows and data order.
    variants = ["ticket"] + (list(cfg.controls) if k > 0 else []) + (["copy"] if cfg.instability.enabled else [])
    # Where training starts: θ0 / θk (init artifact), or the trained weights (lr rewinding, fine-tuning).
    start_weights = prev_weights if cfg.rewind.to in ("lr", "finetune") else theta0
    stack = assemble(cfg, name, variants, names, ticket_mask, start_weights, io, inverted, start=want_k,
                     constant_lr=cfg.rewind.finetune_lr if cfg.rewind.to == "finetune" and k > 0 else None)
    stack.kinds, stack.theta0 = kinds, {n: theta0[n] for n in names}  # (what the early-bird search prunes with)
    return stack


def assemble(cfg: Config, label: str, variants: list[str], names: list[str], ticket_mask: masks.Mask,
             start_weights: dict[str, torch.Tensor], io, inverted: masks.Mask | None = None, start: int = 0,
             constant_lr: float | None = None) -> Stack:
    """The stack of `variants` x trials: the ticket (`ticket_mask` on `start_weights`) and its controls, `reinit`
    (the same mask on a fresh init), `random` (a random mask at the ticket's per-layer counts on the start weights),
    `invert` (`inverted`), `copy` (the ticket again, its own data order); the controls' seeds derive from each
    trial's seed and `label` (a round's name; lottery.transfer's own)."""
    seeds = trial_seeds(cfg)
    stack = Stack(variants, cfg.trials, names, ticket_mask, start=start, constant_lr=constant_lr)
    n = len(variants) * cfg.trials
    stack.init_seeds, stack.mask_seeds, stack.order_seeds = [0] * n, [None] * n, [0] * n
    for v in variants:
        for t, s in enumerate(seeds):
            i = stack.rows(v, t)
            # every draw of a trial derives from its own seed alone, so trials of experiments that differ only
            # in `seed` are the trials of one bigger experiment (lottery.pool)
            stack.init_seeds[i] = derived_seed(s, v, label) if v in ("reinit", *dst.METHODS) else s
            stack.mask_seeds[i] = derived_seed(s, "random", label) if v == "random" else \
                derived_seed(s, f"{v}/mask", label) if v in dst.METHODS else None
            stack.order_seeds[i] = derived_seed(s, "copy") if v == "copy" else s

    stack.model = build_model(cfg, stack.init_seeds, io)
    state = stack.model.state_dict()
    stack.mask = {key: torch.zeros(state[key].shape, dtype=torch.bool) for key in names}
    for v in variants:
        rows = stack.rows(v)
        if v not in ("reinit", *dst.METHODS):  # rewind to the start weights, read from the artifacts
            for key in state:
                state[key][rows] = start_weights[key]
        net_mask = ticket_mask
        if v == "random":
            net_mask = pruning.random_like(ticket_mask, stack.mask_seeds[rows])
        if v == "invert":
            net_mask = inverted
        if v in dst.METHODS:  # random positions at the ticket's per-layer counts (dst.distribution: match)
            net_mask = dst.initial_mask(ticket_mask, cfg.dst.distribution, stack.mask_seeds[rows])
        for key in names:
            stack.mask[key][rows] = net_mask[key]
    stack.model.load_state_dict(state)
    masks.apply(stack.model, stack.mask)
    return stack


def _prune(cfg: Config, name: str, kinds: dict[str, str], theta0, prev_weights, prev_mask: masks.Mask,
           data: TensorData | None, log) -> tuple[masks.Mask, masks.Mask | None]:
    """Round `name`'s ticket mask and the `invert` control's (None unless in `controls`).

    prune.at: trained prunes the previous ticket by its trained weights' scores; prune.at: init scores the
    rewind point θ0/θk (`init`) and prunes the dense mask straight to the round's planned counts.
    `invert` keeps the lowest of the same scores among the same mask, at the ticket's per-layer counts."""
    p, k, seeds = cfg.prune, round_index(name), criterion_seeds(cfg, name)
    if p.at == "trained":
        ticket, score = prune_trained(cfg, name, kinds, theta0, prev_weights, prev_mask)
        base = prev_mask
    else:
        needs_data = p.criterion in ("snip", "grasp", "synflow")
        if needs_data and data is None:
            raise ConfigError(f"prune.criterion: {p.criterion} needs the prepared data to score round {name}")
        model = models.build(cfg.model.name, trial_seeds(cfg))
        model.load_state_dict(theta0)
        base = {n: torch.ones_like(m) for n, m in prev_mask.items()}
        t0, c0 = time.perf_counter(), time.process_time()
        batches, shape = (data.first_batches(trial_seeds(cfg), cfg.train.batch_size, p.score_batches),
                          data.example_shape) if needs_data else ([], None)
        with one_thread():  # small ops: one thread is ~10x faster on a shared CPU (runtime.one_thread)
            ticket, score = saliency.prune_at_init(p, model, base, kinds, k, batches, shape, seeds, "invert" in cfg.controls)
        log(f"[{name}] scored by {p.criterion} in {time.perf_counter() - t0:.2f}s wall, "  # wall >> CPU: a busy machine
            f"CPU {time.process_time() - c0:.2f}s")
    inverted = saliency.invert(score, base, masks.kept(ticket)) if "invert" in cfg.controls else None
    return ticket, inverted


def criterion_seeds(cfg: Config, name: str, trials: list[int] | None = None) -> list[int]:
    """The seed of round `name`'s random criterion, per trial (of `trials`, default all)."""
    seeds = trial_seeds(cfg)
    return [derived_seed(seeds[t], "criterion", name) for t in (range(cfg.trials) if trials is None else trials)]


def prune_trained(cfg: Config, name: str, kinds: dict[str, str], theta0, weights, mask: masks.Mask,
                  trials: list[int] | None = None) -> tuple[masks.Mask, dict[str, torch.Tensor]]:
    """Round `name`'s ticket mask (prune.at: trained) from the trained `weights` and `mask` of the round it prunes,
    and the scores; `trials` (default: all) names the trials the stacked tensors hold, in order."""
    seeds = criterion_seeds(cfg, name, trials)
    plan = pruning.plan(cfg.prune, kinds, round_index(name))
    score = pruning.scores(cfg.prune.criterion, {n: weights[n] for n in kinds}, theta0, seeds)
    new = pruning.prune(score, mask, plan)
    pruning.check(plan, new, mask)
    return new, score


def _load_early_bird(cfg: Config, runs: Path, name: str, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ticket weights of round `name` at its early-bird iterations (`early_bird.pt`), checked."""
    expect = {"model": cfg.model.name, "round": name, "seeds": trial_seeds(cfg), "params": artifact_params(cfg, name)}
    path = runs / name / "early_bird.pt"
    weights, meta = artifacts.load(path, "weights", expect)
    if meta.get("searched_with") != cfg.digest(SEARCH_KEYS):
        raise ArtifactError(f"{path}: searched for the next round's mask under other values of "
                            f"{', '.join(SEARCH_KEYS)} than params.yaml's; `dvc repro -f {dvc_stage(name)}`")
    artifacts.check_like(path, weights, reference)
    return weights


def _search(cfg: Config, name: str, stack: Stack) -> early_bird.Search | None:
    """The early-bird search of the round after `name` in this round's ticket training (None when off)."""
    e = cfg.prune.early_bird
    if not e.enabled:
        return None
    following, tick = f"r{round_index(name) + 1}", stack.rows("ticket")

    def next_mask(weights: dict[str, torch.Tensor], trials: list[int]) -> masks.Mask:
        theta0 = {n: v[trials] for n, v in stack.theta0.items()}
        mask = {n: m[tick][trials] for n, m in stack.mask.items()}
        return prune_trained(cfg, following, stack.kinds, theta0, weights, mask, trials)[0]

    return early_bird.Search(tick, {n: m[tick] for n, m in stack.mask.items()}, next_mask, e.epsilon, e.window)


def run_round(cfg: Config, name: str, prev: str, runs: Path, data_path: Path, log=print,
              resume_dir: Path | None = None, started: float | None = None) -> dict:
    """Round `name`: prune `prev`, train the stack, write runs/<name>/; returns its metrics. `started`: when the
    stage process started (before its imports), for the start-up in the round's time line (the last log line)."""
    clock, begun = Clock(), time.perf_counter() if started is None else started
    device = resolve_device(cfg.train.device, cfg.train.precision)
    data = load_prepared(data_path, device, prepared_params(cfg), cfg.data)
    stack = build_stack(cfg, name, prev, runs, data, log)
    models.to_device(stack.model, device)
    dry_check(cfg, stack.model, data)
    dev_mask = {key: m.to(device) for key, m in stack.mask.items()}
    subset = _instability_subset(cfg, len(data.train))  # bad input stops the round before training
    log(f"[{name}] {len(stack.init_seeds)} networks ({', '.join(stack.variants)} x {stack.trials} trials), "
        f"{float(masks.percent_remaining(stack.ticket_mask)[0]):.2f}% of weights remaining, device {device}")
    looped = [k for k, path in models.conv_paths(stack.model).items() if path == "loop"]
    if looped:
        log(f"[{name}] conv layers network by network (models.conv_loop): {', '.join(looped)}")
    search = _search(cfg, name, stack)
    t0 = time.perf_counter()
    clock.add("start-up", t0 - begun)
    if started is not None:
        log(f"[{name}] start-up {t0 - started:.2f}s (imports, artifacts, data) before the first iteration")
    result = train_groups(cfg, stack, dev_mask, data, name, log, resume_dir, init_io(cfg, runs), watch=search,
                          clock=clock)
    seconds = time.perf_counter() - t0
    for key, m in dev_mask.items():  # the final masks (rigl and set move theirs during training)
        stack.mask[key].copy_(m.cpu())
    if not distributed.is_main():  # rank 0 of a data-parallel round writes the round
        return {}

    trained = {key: v.detach().cpu() for key, v in stack.model.state_dict().items()}
    _check_saved(trained, stack.mask, name)
    if search is not None:
        search.finish(trained)
        found = ["none (the next round prunes the final weights)" if it is None else str(it) for it in search.iteration]
        log(f"[{name}] early-bird iteration  " + "  ".join(f"trial {t}: {f}" for t, f in enumerate(found)))
    line = None
    if subset is not None:
        t1 = time.perf_counter()
        with clock("instability"):
            line = measure_instability(cfg, stack, stack.model.state_dict(), data, subset)
        log(f"[{name}] instability (test) " + "  ".join(f"trial {t['trial']}: {t['test_instability']:.2f} pp"
            for t in line["trials"]) + f"  ({cfg.instability.points} points in {time.perf_counter() - t1:.1f}s)")
    with clock("saving"):
        metrics = write_round(cfg, name, stack, trained, result, runs / name, line, data.example_shape, prev, search)
    for v in stack.variants:
        rows = [n for n in metrics["networks"] if n["variant"] == v]
        log(f"[{name}] {v:>6}: {rows[0]['weights_remaining']:6.2f}% remaining  "
            f"test acc {sum(r['test_accuracy'] for r in rows) / len(rows):.2f}%  "
            f"early stop {sum(r['early_stop_iteration'] for r in rows) / len(rows):.0f}")
    log(f"[{name}] trained in {seconds:.1f}s")
    log(f"[{name}] {clock.line(time.perf_counter() - begun)}")
    return metrics


def train_groups(cfg: Config, stack: Stack, mask: masks.Mask, data: TensorData, name: str, log=print,
                 resume_dir: Path | None = None, io=None, watch: early_bird.Search | None = None,
                 clock: Clock | None = None) -> Result:
    """Train the round's networks (`stack`, in place): all at once, or `train.stack` at a time, group after group
    (`train.stack: 0`: all at once, or one at a time where `models.one_at_a_time` says so and no early-bird search
    watches the stack).

    Every network of a stack trains on its own, so a group trains as it would in the whole stack (the same up to
    the order of float sums in batched kernels). A finished group is kept in `resume_dir` until the round is
    done (`resume.group`), so an interrupted round resumes at the group it was training."""
    n = len(stack.order_seeds)
    size = cfg.train.stack or (1 if watch is None and models.one_at_a_time(stack.model, data.device) else n)
    why = f"train.stack={size}" if cfg.train.stack else "train.stack=0: one at a time, a conv stack on CPU"
    kw = dict(log=log, resume_dir=resume_dir, checkpoint_seconds=cfg.train.checkpoint_seconds, start=stack.start,
              constant_lr=stack.constant_lr, augment=cfg.data.augment, clock=clock or Clock())
    methods = [v if v in dst.METHODS else None for v in stack.variants for _ in range(stack.trials)]
    update = dst.Updater(cfg.dst, methods, stack.mask_seeds, cfg.train.iterations).rows(slice(0, n))
    if size >= n:
        return train(stack.model, mask, data, cfg.train, order_seeds=stack.order_seeds, label=name, watch=watch,
                     update=update, **kw)
    if watch is not None:  # (config.validate refuses the combination; a guard for library callers)
        raise ConfigError(f"prune.early_bird: not with train.stack={size} < the round's {n} networks")
    state, parts = stack.model.state_dict(), []
    for g, lo in enumerate(range(0, n, size)):
        rows = slice(lo, min(lo + size, n))
        seeds = stack.order_seeds[rows]
        net = models.to_device(build_model(cfg, stack.init_seeds[rows], io), data.device)  # (channels-last on CUDA)
        net.load_state_dict({k: v[rows] for k, v in state.items()})
        net_mask = {k: m[rows] for k, m in mask.items()}  # (views: a mask that moves during training moves in `mask`)
        hook = update and update.rows(rows)
        extra = (hook.key(),) if hook else ()
        done = resume_dir and resume.group(resume_dir, name, g, digest(net, net_mask, cfg.train, seeds, len(data.train),
                                                                      extra))
        if done and done.is_file():
            kept = torch.load(done, map_location=data.device, weights_only=True)
            net.load_state_dict(kept["state"])
            for k, m in kept.get("mask", {}).items():
                net_mask[k].copy_(m)
            result = Result(**kept["result"])
            log(f"[{name}] networks {lo}-{rows.stop - 1} of {n}: trained before, read from {done}")
        else:
            log(f"[{name}] networks {lo}-{rows.stop - 1} of {n} ({why})")
            result = train(net, net_mask, data, cfg.train, order_seeds=seeds, label=name, update=hook, **kw)
            if done and distributed.is_main():
                with kw["clock"]("saving"):
                    artifacts.atomic_save({"state": net.state_dict(), "result": dataclasses.asdict(result),
                                           "mask": net_mask}, done)
        with torch.no_grad():
            for k, v in net.state_dict().items():
                state[k][rows] = v
        parts.append(result)
    return Result.concat(parts)


def _instability_subset(cfg: Config, n_train: int) -> torch.Tensor | None:
    """The fixed training subset the line is evaluated on (None when instability is off)."""
    if not cfg.instability.enabled:
        return None
    return instability.train_subset(n_train, cfg.instability.train_subset, cfg.data.split_seed)


def measure_instability(cfg: Config, stack: Stack, state: dict[str, torch.Tensor], data: TensorData,
                        subset: torch.Tensor) -> dict:
    """The error along the line between each trial's trained ticket and its copy; the verdict on the test set."""
    i = cfg.instability
    tick, copy = stack.rows("ticket"), stack.rows("copy")
    c = instability.curve(cfg.model.name, {k: v[tick] for k, v in state.items()}, {k: v[copy] for k, v in state.items()},
                          data, subset, points=i.points, bn=i.bn, bn_batches=i.bn_batches, batch_size=cfg.train.batch_size)
    trials = [{
        "trial": t, "order_seed": stack.order_seeds[tick][t], "copy_order_seed": stack.order_seeds[copy][t],
        "test_error": c["test_error"][t], "train_error": c["train_error"][t],
        "test_instability": round(c["test_instability"][t], 6), "train_instability": round(c["train_instability"][t], 6),
        "stable": c["test_instability"][t] <= i.threshold,
    } for t in range(stack.trials)]
    return {"points": i.points, "threshold": i.threshold, "bn": i.bn, "train_subset": len(subset),
            "alphas": c["alphas"], "trials": trials}


def write_round(cfg: Config, name: str, stack: Stack, trained: dict[str, torch.Tensor], result, out: Path,
                line: dict | None, example_shape: tuple[int, ...], prev: str,
                search: early_bird.Search | None = None) -> dict:
    """The round's outputs: mask.pt and model.pt (the ticket), controls.pt, early_bird.pt, metrics.json; returns
    the metrics.

    metrics.json records each network's compute (`iterations` trained in this round, `forward_macs` per example,
    `train_flops`) and the round's `cost`: where its mask and start weights come from and θk's training
    (`lottery.flops`), from which summarize adds up what each network took to reach its sparsity."""
    mask, names, seeds = stack.mask, stack.names, trial_seeds(cfg)
    tick = stack.rows("ticket")
    artifacts.save(out / "mask.pt", stack.ticket_mask, _meta(cfg, "mask", name))
    artifacts.save(out / "model.pt", {key: v[tick] for key, v in trained.items()}, _meta(cfg, "weights", name))
    controls = {}
    for v in stack.variants[1:]:
        rows = stack.rows(v)
        controls.update({f"{v}/mask/{key}": mask[key][rows] for key in names})
        controls.update({f"{v}/weights/{key}": val[rows] for key, val in trained.items()})
    artifacts.save(out / "controls.pt", controls, _meta(cfg, "controls", name, variants=stack.variants[1:]))
    artifacts.save(out / "early_bird.pt", search.weights if search else {},
                   _meta(cfg, "weights", name, early_bird_iteration=search.iteration if search else None,
                         searched_with=cfg.digest(SEARCH_KEYS)))

    k, batch, iterations = round_index(name), cfg.train.batch_size, cfg.train.iterations - stack.start
    where = flops.positions(stack.model, example_shape)
    macs = flops.forward_macs(stack.model, mask, where)
    pooled = k > 0 and bool({"random", *dst.METHODS} & set(stack.variants)) and \
        len(pruning.plan(cfg.prune, models.kinds(stack.model, cfg.prune.layers, cfg.prune.ignore), k).pooled) > 1
    dense = flops.forward_macs(stack.model, {}, where)[0]
    cost = {"sources": flops.sources(k, prev, cfg.prune.at, cfg.rewind.to, pooled, stack.variants),
            "init": {"iterations": stack.start,  # θk: the dense network trained k iterations (once per trial)
                     "train_flops": flops.train_flops(dense, batch, stack.start)}}
    updates = sum(dst.due(it, cfg.dst, cfg.train.iterations) for it in range(stack.start + 1, cfg.train.iterations + 1))
    networks = network_rows(stack, result, seeds, macs, batch, iterations)
    for n, (v, _, i) in zip(networks, order(stack)):
        if v == "rigl":  # rigl's dense gradient on its update steps
            n["train_flops"] += updates * (dense - macs[i]) * batch
    metrics = {"round": name, "index": k, "networks": networks, "cost": cost}
    series = {}
    if search is not None:
        metrics["early_bird"] = _early_bird_record(cfg, name, stack, search)
        for n in networks[:stack.trials]:  # the ticket's rows come first
            n["early_bird_iteration"] = search.iteration[n["trial"]]
        series = {("ticket", t): {"mask_distance": [(it, round(d, 6)) for it, d in c]}
                  for t, c in enumerate(search.curve)}
    if round_index(name) > 0:  # how this round pruned (the dense round prunes nothing and lists no prune.* params)
        metrics.update(criterion=cfg.prune.criterion, at=cfg.prune.at)
    if line is not None:
        metrics["instability"] = line
    artifacts.atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=1) + "\n").encode())
    log_curves(out / "live", order(stack), result.curve, series)
    return metrics


def _early_bird_record(cfg: Config, name: str, stack: Stack, search: early_bird.Search) -> dict:
    """What the early-bird search of round `name` found, per trial: the early-bird iteration (None: the mask never
    stabilised, the next round prunes the final weights), the iterations the search trained, and the fraction of
    the round's training iterations it saved (the FLOPs a search that stops there saves, per network)."""
    e, its, start = cfg.prune.early_bird, cfg.train.iterations, stack.start
    trials = []
    for t, it in enumerate(search.iteration):
        searched = its if it is None else it
        trials.append({"trial": t, "iteration": it, "search_iterations": searched - start,
                       "saved": round((its - searched) / (its - start), 6)})
    return {"epsilon": e.epsilon, "window": e.window, "next_round": f"r{round_index(name) + 1}", "trials": trials}


def order(stack: Stack) -> list[tuple[str, int, int]]:
    """(variant, trial, row) of every network of a trained stack, variant-major."""
    return [(v, t, stack.rows(v, t)) for v in stack.variants for t in range(stack.trials)]


def network_rows(stack: Stack, result: Result, seeds: list[int], macs: list[int], batch: int, iterations: int) -> list[dict]:
    """metrics.json's `networks`: each network's seeds, sparsity, accuracy, early stop and compute."""
    mask = stack.mask
    remaining, per_layer = masks.percent_remaining(mask), masks.kept(mask)
    return [{
        "variant": v, "trial": t, "seed": seeds[t], "init_seed": stack.init_seeds[i], "mask_seed": stack.mask_seeds[i],
        "weights_remaining": round(float(remaining[i]), 4),
        "layers_remaining": {key: round(100.0 * int(per_layer[key][i]) / mask[key][i].numel(), 4) for key in stack.names},
        "early_stop_iteration": result.early_stop_iteration[i],
        "test_accuracy": round(100 * result.test_accuracy[i], 4),
        "final_test_accuracy": round(100 * result.final_test_accuracy[i], 4),
        "min_val_loss": round(result.min_val_loss[i], 6),
        "iterations": iterations, "forward_macs": macs[i], "train_flops": flops.train_flops(macs[i], batch, iterations),
    } for v, t, i in order(stack)]


def log_curves(folder: Path, order: list[tuple[str, int, int]], curve: list[dict],
               series: dict[tuple[str, int], dict[str, list[tuple[int, float]]]] | None = None) -> None:
    """Every network's validation curve in DVCLive's layout (step = iteration), so `dvc plots show` and DVC's
    editor integrations display them: folder/plots/metrics/<variant>/<trial>/val_{acc,loss}.tsv (accuracy in %)
    and folder/metrics.json (the last values), plus the (iteration, value) `series` of a (variant, trial) as
    <key>.tsv beside them (the early-bird search's mask_distance). Written directly, not through `dvclive.Live`,
    which asks git for the current revision (it fails in a repository with no commit) and costs most of a second
    per round.
    Written beside `folder` and renamed into place: never half a folder."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    last: dict = {}
    for v, t, i in order:
        net = {"val_acc": [(row["iteration"], round(100 * row["val_acc"][i], 4)) for row in curve],
               "val_loss": [(row["iteration"], round(row["val_loss"][i], 6)) for row in curve],
               **(series or {}).get((v, t), {})}
        sub = tmp / "plots" / "metrics" / v / str(t)
        sub.mkdir(parents=True, exist_ok=True)
        for key, values in net.items():
            lines = [f"step\t{key}"] + [f"{it}\t{x}" for it, x in values]
            (sub / f"{key}.tsv").write_text("\n".join(lines) + "\n")
        last.setdefault(v, {})[str(t)] = {key: values[-1][1] for key, values in net.items() if values}
    (tmp / "metrics.json").write_text(json.dumps({**last, "step": curve[-1]["iteration"] if curve else 0}, indent=4) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _check_saved(weights: dict[str, torch.Tensor], mask: masks.Mask, name: str) -> None:
    for key, m in mask.items():
        if (weights[key][~m] != 0).any():
            raise ArtifactError(f"[{name}] pruned weights of '{key}' are not zero; refusing to save")
