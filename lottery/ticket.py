"""A winning ticket as one standalone file: mask, θ0 and trained weights (pruned weights stored sparse).

    from lottery.ticket import load_ticket
    net = load_ticket("metrics/ticket.pt")            # trained ticket, a ready nn.Module
    net0 = load_ticket("metrics/ticket.pt", "init")   # the same subnetwork at θ0, to retrain
    logits = net(x)                                   # x: raw inputs, (batch, 1, 28, 28) pixels 0..255 for LeNet

The file records the input normalisation the network was trained with (the training split's mean and std,
from data/prepared.pt); the loaded module applies it first (`net.mean`, `net.std`; `net.net` takes
normalised inputs).

`summarize` exports the sparsest winning round's ticket; any round of any experiment or revision:

    python -m lottery.ticket <exp-or-rev> --round r5 [--trial 0] [-o ticket.pt]
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import artifacts, models
from .config import Config, ConfigError, artifact_params
from .data import prepared_params


class Single(nn.Module):
    """One network of a stack as an ordinary module: raw inputs (B, ...) -> (B, classes), normalised first as in
    training ((x - mean) / std, the training split's statistics recorded in the ticket)."""

    def __init__(self, stacked: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.net = stacked
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x.float() - self.mean) / self.std)[None])[0]


def export(runs: Path, round_name: str, path: Path, prepared: Path, trial: int = 0) -> None:
    """Trial `trial` of round `round_name` as one file, with the input normalisation of `prepared` (mean, std);
    the round's mask and model must say they are that round's."""
    artifacts.save(Path(path), *build(runs, round_name, prepared, trial))


def build(runs: Path, round_name: str, prepared: Path, trial: int = 0,
          cfg: Config | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata of `export`, loaded and checked (nothing written); with `cfg`, the artifacts
    (and `prepared`) must have been written with its params."""
    runs = Path(runs)
    params = (lambda name: {"params": artifact_params(cfg, name)}) if cfg else (lambda name: {})
    theta0, init_meta = artifacts.load(runs / "init" / "model.pt", "weights", params("init"))
    model, seeds = init_meta.get("model"), init_meta.get("seeds")
    if not 0 <= trial < len(seeds):
        raise ConfigError(f"--trial {trial}: the experiment has trials 0 to {len(seeds) - 1}")
    io = {k: init_meta[k] for k in ("num_classes", "input_shape") if k in init_meta}  # your own network's sizes
    reference = models.build(model, [0] * len(seeds), **io).state_dict()
    artifacts.check_like(runs / "init" / "model.pt", theta0, reference)
    init_mask, _ = artifacts.load(runs / "init" / "mask.pt", "mask", {"model": model, "seeds": seeds, **params("init")})
    names = [k for k in init_mask if k in reference]  # the prunable weights init chose (prune.layers / ignore)
    artifacts.check_like(runs / "init" / "mask.pt", init_mask, {k: reference[k] for k in names})
    expect = {"model": model, "round": round_name, "seeds": seeds, **params(round_name)}
    trained, meta = artifacts.load(runs / round_name / "model.pt", "weights", expect)
    artifacts.check_like(runs / round_name / "model.pt", trained, reference)
    mask, _ = artifacts.load(runs / round_name / "mask.pt", "mask", expect)
    artifacts.check_like(runs / round_name / "mask.pt", mask, {k: reference[k] for k in names})
    tensors = {}
    for key in trained:
        w0, w = theta0[key][trial], trained[key][trial]
        if key in mask:
            m = mask[key][trial]
            tensors[f"mask/{key}"] = m
            w0, w = (w0 * m).to_sparse(), (w * m).to_sparse()
        tensors[f"init/{key}"], tensors[f"trained/{key}"] = w0, w
    data, _ = artifacts.load(Path(prepared), "prepared", {"params": prepared_params(cfg)} if cfg else None)
    tensors["input/mean"], tensors["input/std"] = data["mean"], data["std"]
    kept = sum(int(m[trial].sum()) for m in mask.values())
    total = sum(m[trial].numel() for m in mask.values())
    return tensors, {"kind": "ticket", "model": meta["model"], "round": round_name, "trial": trial,
                     "seed": meta["seeds"][trial], "weights_remaining": 100.0 * kept / total, **io}


def load_ticket(path: str | Path, weights: str = "trained") -> nn.Module:
    """The exported ticket as a ready module with `weights` = "trained" or "init" (θ0), pruned weights zero; it takes
    raw inputs and applies the recorded normalisation (`.mean`, `.std`)."""
    if weights not in ("trained", "init"):
        raise ValueError(f"weights: {weights!r} is not allowed (trained or init)")
    tensors, meta = artifacts.load(Path(path), "ticket")
    if "input/mean" not in tensors:
        raise artifacts.ArtifactError(f"{path}: no input normalisation recorded (an older export); "
                                      "rerun `dvc repro -f summarize`")
    model = models.build(meta["model"], [0], **{k: meta[k] for k in ("num_classes", "input_shape") if k in meta})
    state = {k.split("/", 1)[1]: v.to_dense()[None] for k, v in tensors.items() if k.startswith(weights + "/")}
    model.load_state_dict(state)
    return Single(model, tensors["input/mean"], tensors["input/std"]).eval()


def main() -> None:
    import argparse
    import tempfile

    from .cli import output
    from .revisions import Revision, check_round

    ap = argparse.ArgumentParser(description="Export one round's ticket of an experiment or git revision as one "
                                 "file (load_ticket reads it).")
    ap.add_argument("rev", metavar="EXP", help="a DVC experiment name or git revision")
    ap.add_argument("--round", required=True, help="the round, e.g. r5 (r0: the dense network)")
    ap.add_argument("--trial", type=int, default=0)
    ap.add_argument("-o", "--out", default="ticket.pt")
    args = ap.parse_args()
    out = output(args.out, "-o", (".pt",))
    rev = Revision(args.rev)
    check_round(args.round, args.rev)
    with tempfile.TemporaryDirectory(prefix="lottery-ticket-") as tmp:
        runs = Path(tmp)
        for name in ("init", args.round):
            (runs / name).mkdir()
            for f in ("model.pt", "mask.pt"):
                data = rev.read(f"runs/init/{f}") if name == "init" else rev.round_file(name, f)
                (runs / name / f).write_bytes(data)
        (runs / "prepared.pt").write_bytes(rev.read("data/prepared.pt"))
        try:
            export(runs, args.round, out, runs / "prepared.pt", args.trial)
        except artifacts.ArtifactError as e:
            raise artifacts.ArtifactError(f"'{args.rev}': {str(e).replace(tmp, 'runs')}") from None
    print(f"wrote {out}: round {args.round}, trial {args.trial} of '{args.rev}'")


if __name__ == "__main__":
    from .cli import run

    run(main)
