"""Every round's metrics -> one tidy table, headline numbers and figures.

Rows of the tidy table: one per round x variant x trial. `headline` computes the numbers
of metrics/summary.json from that table alone, so it can be checked on a hand-made CSV.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from .artifacts import ArtifactError, atomic_write, atomic_write_bytes, load

COLUMNS = [
    "round", "index", "variant", "trial", "seed", "init_seed", "mask_seed", "weights_remaining",
    "early_stop_iteration", "test_accuracy", "final_test_accuracy", "min_val_loss",
]
RUN_COLUMNS = ["criterion", "at"]  # how the round pruned (prune.criterion, prune.at), from its metrics.json
VARIANTS = ["ticket", "reinit", "random", "invert"]
ROUND_KEYS = ["weights_remaining", "test_accuracy", "early_stop_iteration", "final_test_accuracy"]
NETWORK_KEYS = [*COLUMNS[3:], "variant", "layers_remaining"]
# The dense network "did not train" when its mean test accuracy is at most chance (100/C %) plus this many
# points: a network stuck at one class scores 100/C on a balanced test set (a few points more on a skewed
# one), while any dense network that learned scores far above (LeNet on Fashion-MNIST ~87%; the tests'
# 200-iteration mnist1d MLP well above 15%). No ticket can be declared winning against such a baseline.
CHANCE_MARGIN = 5.0


def _read(path: Path) -> dict:
    """A round's metrics.json: a missing, corrupt or malformed file stops summarize naming it."""
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run `dvc repro` to train that round") from None
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON
        raise ArtifactError(f"{path}: corrupt metrics file ({e}); `dvc repro -f` the round that writes it") from None
    problem = _malformed(m)
    if problem:
        raise ArtifactError(f"{path}: malformed metrics file ({problem}); `dvc repro -f` the round that writes it")
    return m


def _malformed(m) -> str | None:
    """What a metrics.json lacks of what summarize reads (None when nothing)."""
    if not isinstance(m, dict):
        return "not a JSON object"
    missing = [k for k in ("round", "index", "networks") if k not in m]
    if missing:
        return f"no {missing[0]!r}"
    if not isinstance(m["index"], int) or not isinstance(m["networks"], list) or not m["networks"]:
        return "'index' is not an integer or 'networks' not a non-empty list"
    for i, item in enumerate(m["networks"]):
        if not isinstance(item, dict) or any(k not in item for k in NETWORK_KEYS):
            return f"networks[{i}] is not an object with {', '.join(NETWORK_KEYS)}"
    return None


def collect(runs: Path, round_names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy results, validation curves) of the named rounds."""
    rows, curves = [], []
    for name in round_names:
        m = _read(Path(runs) / name / "metrics.json")
        for n in m["networks"]:
            rows.append({"round": name, "index": m["index"], **{k: n[k] for k in COLUMNS[3:]}, "variant": n["variant"],
                         "criterion": m.get("criterion"), "at": m.get("at")})  # none for the dense round
        curves.append(read_curves(Path(runs) / name / "live").assign(round=name, index=m["index"]))
    return pd.DataFrame(rows, columns=COLUMNS + RUN_COLUMNS), pd.concat(curves, ignore_index=True)


def read_curves(folder: Path) -> pd.DataFrame:
    """A round's validation curves as DVCLive wrote them (`rounds.log_curves`): one row per iteration,
    variant and trial, with val_loss and val_acc (%)."""
    frames = []
    for acc in sorted((folder / "plots" / "metrics").glob("*/*/val_acc.tsv")):
        try:
            a = pd.read_csv(acc, sep="\t")
            loss = pd.read_csv(acc.with_name("val_loss.tsv"), sep="\t")
            frames.append(pd.DataFrame({"iteration": a["step"], "variant": acc.parent.parent.name,
                                        "trial": int(acc.parent.name), "val_loss": loss["val_loss"], "val_acc": a["val_acc"]}))
        except (OSError, ValueError, KeyError) as e:
            raise ArtifactError(f"{acc.parent}: unreadable validation curve ({type(e).__name__}: {e}); "
                                "`dvc repro -f` the round that writes it") from None
    if not frames:
        raise ArtifactError(f"{folder}: no validation curves; `dvc repro -f` the round that writes it")
    return pd.concat(frames, ignore_index=True)


def _means(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over trials of the round keys, one row per round and variant."""
    return df.groupby(["index", "round", "variant"], sort=True)[ROUND_KEYS].mean().reset_index()


def _dense(mean: pd.DataFrame) -> pd.Series:
    """The dense round's ticket row of `_means`."""
    dense = mean[(mean["index"] == 0) & (mean["variant"] == "ticket")]
    if dense.empty:
        raise ArtifactError("no dense round (r0) in the results")
    return dense.iloc[0]


def _winners(mean: pd.DataFrame, variant: str, tolerance: float) -> pd.DataFrame:
    """The winning-ticket rule: pruned rounds of `variant` whose mean test accuracy is within `tolerance`
    of the dense mean (r0's ticket), sparsest first."""
    sub = mean[(mean["variant"] == variant) & (mean["index"] > 0)]
    wins = sub[sub["test_accuracy"] >= float(_dense(mean)["test_accuracy"]) - tolerance]
    return wins.sort_values("weights_remaining", kind="stable")


def by_round(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max over trials per round and variant."""
    g = df.groupby(["index", "round", "variant"], sort=True)
    return g[ROUND_KEYS].agg(["mean", "min", "max"])


def dense_trained(dense_accuracy: float, classes: int | None) -> bool:
    """False when the dense network ended within CHANCE_MARGIN points of chance (100/classes %); True if unknown."""
    return classes is None or dense_accuracy > 100 / classes + CHANCE_MARGIN


def headline(df: pd.DataFrame, tolerance: float, classes: int | None = None) -> dict:
    """The headline numbers: dense, per round (metrics/rounds.json) and per variant (`declared`:
    metrics/summary.json). With `classes`, a dense network at chance accuracy
    gets `dense_trained: false` and no winning-ticket verdict (every `smallest_winning_weights_remaining` null)."""
    mean = _means(df)
    dense_acc, dense_es = float(_dense(mean)["test_accuracy"]), float(_dense(mean)["early_stop_iteration"])
    out: dict = {"dense": {"test_accuracy": round(dense_acc, 4), "early_stop_iteration": round(dense_es, 1)}}
    trained = dense_trained(dense_acc, classes)
    pruned = df[df["index"] > 0] if "criterion" in df else df.iloc[:0]
    if len(pruned):  # how the tickets were pruned (rounds >= 1; the dense round prunes nothing)
        out["criterion"], out["at"] = str(pruned["criterion"].iloc[0]), str(pruned["at"].iloc[0])
    out["rounds"] = {}
    for _, r in mean[mean["variant"] == "ticket"].iterrows():
        entry = {k: round(float(r[k]), 4) for k in ROUND_KEYS}
        for v in VARIANTS[1:]:
            c = mean[(mean["round"] == r["round"]) & (mean["variant"] == v)]
            if not c.empty:
                entry[v] = {k: round(float(c[k].iloc[0]), 4) for k in ROUND_KEYS[1:]}
        out["rounds"][r["round"]] = entry
    for v in VARIANTS:
        sub = mean[(mean["variant"] == v) & (mean["index"] > 0)]
        if sub.empty:
            continue
        wins = _winners(mean, v, tolerance) if trained else []
        out[v] = {
            # the winning-ticket verdict: the sparsest round still within `tolerance` of dense
            "smallest_winning_weights_remaining": round(float(wins["weights_remaining"].iloc[0]), 4) if len(wins) else None,
            "max_early_stop_speedup": round(dense_es / float(sub["early_stop_iteration"].min()), 4),
            "max_accuracy_gain": round(float(sub["test_accuracy"].max()) - dense_acc, 4),
        }
    out["dense_trained"] = trained
    out["verdict"] = verdict(out, tolerance, classes)
    return out


# metrics/summary.json, the metrics DVC compares experiments on (`dvc exp show`, `dvc metrics diff`):
# short keys, so that a readable table fits a terminal. headline() key -> declared key.
DECLARED = {"smallest_winning_weights_remaining": "win", "max_early_stop_speedup": "speedup",
            "max_accuracy_gain": "gain"}


def declared(summary: dict) -> dict:
    """The headline as DVC metrics: dense_acc, and per variant win (the sparsest % of weights remaining
    still within tolerance of dense), speedup (max early-stop speed-up) and gain (max accuracy gain, pp).
    The per-round numbers go to metrics/rounds.json, not here: one column each would flood `dvc exp show`."""
    out: dict = {"dense_acc": summary["dense"]["test_accuracy"], "dense_trained": summary["dense_trained"]}
    if "criterion" in summary:  # how the tickets were pruned (prune.criterion, prune.at)
        out["criterion"], out["at"] = summary["criterion"], summary["at"]
    for v in VARIANTS:
        if v in summary:
            out[v] = {short: summary[v][long] for long, short in DECLARED.items()}
    if "instability" in summary:  # the dense network's instability (pp) and the sparsest stable round's % remaining
        inst = summary["instability"]
        out["instability"] = {"dense": inst["rounds"].get("r0", {}).get("ticket_instability"),
                              "stable": inst["sparsest_stable_weights_remaining"]}
    return out


def verdict(summary: dict, tolerance: float, classes: int | None) -> str:
    """The winning-ticket verdict in words (summary.json, report.md, summarize's printed line)."""
    acc = summary["dense"]["test_accuracy"]
    if not summary["dense_trained"]:
        return f"the dense network did not train (test accuracy {acc:.2f}% ≈ chance {100 / classes:.2f}%)"
    if "ticket" not in summary:
        return f"dense only (test accuracy {acc:.2f}%): no pruned round"
    smallest = summary["ticket"]["smallest_winning_weights_remaining"]
    if smallest is None:
        return f"no pruned ticket stays within {tolerance} pp of dense ({acc:.2f}%)"
    return f"the ticket stays within {tolerance} pp of dense ({acc:.2f}%) down to {smallest}% of the weights remaining"


def output_classes(runs: Path) -> int:
    """C, the number of classes: outputs of the last prunable layer in the dense round's mask ((trials, C, in))."""
    mask, _ = load(Path(runs) / "r0" / "mask.pt", "mask")
    return int(list(mask.values())[-1].shape[1])


def winning_round(df: pd.DataFrame, tolerance: float) -> str:
    """The sparsest round whose mean ticket accuracy is within `tolerance` of dense (r0 if none)."""
    wins = _winners(_means(df), "ticket", tolerance)
    return str(wins["round"].iloc[0]) if len(wins) else "r0"


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per round: ticket weights remaining and each variant's mean test accuracy.

    At r0 every network is dense, so the controls take the dense value there. Every variant of VARIANTS
    has a column, empty where it was not trained: `dvc plots show` drops the whole plot when a field
    dvc.yaml's top-level plot names is missing from the file.
    """
    mean = df.groupby(["index", "variant"])[["weights_remaining", "test_accuracy"]].mean().reset_index()
    wide = mean.pivot(index="index", columns="variant", values="test_accuracy")
    table = pd.DataFrame({"round": [f"r{i}" for i in wide.index]}, index=wide.index)
    table["weights_remaining"] = mean[mean["variant"] == "ticket"].set_index("index")["weights_remaining"].round(4)
    for v in VARIANTS:
        table[v] = wide[v].fillna(wide["ticket"]).round(4) if v in wide else float("nan")
    return table.reset_index(drop=True)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:]))
    fig.clf()
    return path


def _round_panels(plt, table: pd.DataFrame):
    """One panel each for the dense, a middle and the last round of `table` (an `index` column): fig, axes, rounds."""
    idx = sorted(table["index"].unique())
    chosen = sorted({idx[0], idx[len(idx) // 2], idx[-1]})
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.6), dpi=110, sharey=True, squeeze=False)
    return fig, axes, chosen


def figures(df: pd.DataFrame, curves: pd.DataFrame, layers: pd.DataFrame, out: Path) -> list[Path]:
    """PNG figures (offline): accuracy and early stop vs sparsity, validation curves, per-layer sparsity."""
    plt = _plt()
    stats = by_round(df).reset_index()
    paths = []
    for key, ylabel, fname in [
        ("test_accuracy", "test accuracy at early stop (%)", "accuracy.png"),
        ("early_stop_iteration", "early-stop iteration", "early_stop.png"),
    ]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for v in VARIANTS:
            s = stats[stats["variant"] == v]
            if s.empty:
                continue
            x, y = s[("weights_remaining", "mean")], s[(key, "mean")]
            ax.errorbar(x, y, yerr=[y - s[(key, "min")], s[(key, "max")] - y], marker="o", ms=3, capsize=2, label=v)
        ax.set_xscale("log")
        ticks = [t for t in (100, 51.3, 26.3, 13.5, 6.9, 3.6, 1.8, 0.9, 0.5) if t >= 0.9 * df["weights_remaining"].min()]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.invert_xaxis()  # sparsest on the right, as in the paper
        ax.set_xlabel("percent of weights remaining (log)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(title=f"mean, min-max over {df['trial'].nunique()} trial(s)")
        paths.append(_save(fig, out / fname))
        plt.close(fig)

    # Validation accuracy against iteration: the dense round, a middle one and the last.
    fig, axes, chosen = _round_panels(plt, curves)
    for ax, k in zip(axes[0], chosen):
        c = curves[curves["index"] == k].groupby(["variant", "iteration"])["val_acc"].mean().reset_index()
        for v in VARIANTS:
            s = c[c["variant"] == v]
            if not s.empty:
                ax.plot(s["iteration"], s["val_acc"], label=v)
        rem = df[(df["index"] == k) & (df["variant"] == "ticket")]["weights_remaining"].mean()
        ax.set_title(f"r{k}: {rem:.1f}% remaining")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    axes[0][-1].legend()
    paths.append(_save(fig, out / "validation.png"))
    plt.close(fig)

    # Per-layer weights remaining of the ticket, per round.
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for layer, s in layers.groupby("layer", sort=False):
        ax.plot(s["index"], s["percent_remaining"], marker="o", ms=3, label=layer)
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("weights remaining in the layer (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    paths.append(_save(fig, out / "layers.png"))
    plt.close(fig)
    return paths


def first_layer_image(mask_first: torch.Tensor, title: str, path: Path) -> Path:
    """Fraction of first-layer weights kept per input: a 28x28 image for MNIST-like inputs, a strip otherwise."""
    plt = _plt()
    kept = mask_first.float().mean(dim=(0, 1))  # over trials and hidden units
    kept = kept.reshape(28, 28) if kept.numel() == 784 else kept.reshape(1, -1)
    fig, ax = plt.subplots(figsize=(4.2, 4.0 if kept.shape[0] > 1 else 1.8), dpi=120)
    im = ax.imshow(kept.numpy(), cmap="viridis", vmin=0, vmax=float(kept.max()), aspect="auto" if kept.shape[0] == 1 else None)
    ax.set_title(title)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of weights kept")
    _save(fig, path)
    plt.close(fig)
    return path


def layer_table(runs: Path, round_names: list[str]) -> pd.DataFrame:
    """Ticket weights remaining per layer and round (mean over trials)."""
    rows = []
    for name in round_names:
        m = _read(Path(runs) / name / "metrics.json")
        nets = [n for n in m["networks"] if n["variant"] == "ticket"]
        for layer in nets[0]["layers_remaining"]:
            pct = sum(n["layers_remaining"][layer] for n in nets) / len(nets)
            rows.append({"round": name, "index": m["index"], "layer": layer, "percent_remaining": pct})
    return pd.DataFrame(rows)


def report(summary: dict, df: pd.DataFrame, tolerance: float, images: list[Path], path: Path) -> None:
    """metrics/report.md: the figures and the per-round table, readable offline."""
    lines = [
        "# Lottery ticket report",
        "",
        f"Dense test accuracy: **{summary['dense']['test_accuracy']:.2f}%** "
        f"(early stop at iteration {summary['dense']['early_stop_iteration']:.0f}), "
        f"{df['trial'].nunique()} trial(s). Tickets pruned by **{summary.get('criterion', 'magnitude')}** "
        f"(prune.at: {summary.get('at', 'trained')}).",
        "",
        f"Winning-ticket verdict: **{summary['verdict']}**.",
        "",
        "| variant | smallest winning % remaining | max early-stop speed-up | max accuracy gain (pp) |",
        "|---|---|---|---|",
    ]
    for v in VARIANTS:
        if v in summary:
            h = summary[v]
            lines.append(f"| {v} | {h['smallest_winning_weights_remaining']} | {h['max_early_stop_speedup']:.2f}x "
                         f"| {h['max_accuracy_gain']:+.2f} |")
    if "instability" in summary:
        lines += ["", f"Instability: the ticket's mean test instability stays at or below the threshold down to "
                  f"**{summary['instability']['sparsest_stable_weights_remaining']}%** of the weights remaining."]
    lines += ["", "## Per round (mean over trials)", "", "```", format_table(df), "```", ""]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


INSTABILITY_COLUMNS = ["test_instability", "train_instability", "stable"]


def read_instability(runs: Path, round_names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per round x trial: the ticket's instability, its verdict and threshold; one row per round x trial x
    point: α and the test and train error there), empty where no round measured it (instability.enabled)."""
    rows, points = [], []
    for name in round_names:
        path = Path(runs) / name / "metrics.json"
        m = _read(path)
        if "instability" not in m:
            continue
        line = m["instability"]
        try:
            remaining = {n["trial"]: n["weights_remaining"] for n in m["networks"] if n["variant"] == "ticket"}
            for t in line["trials"]:
                rows.append({"round": name, "index": m["index"], "variant": "ticket", "trial": t["trial"],
                             "weights_remaining": remaining[t["trial"]], "threshold": line["threshold"],
                             **{k: t[k] for k in INSTABILITY_COLUMNS}})
                points += [{"round": name, "index": m["index"], "trial": t["trial"], "alpha": a, "test_error": e,
                            "train_error": r} for a, e, r in zip(line["alphas"], t["test_error"], t["train_error"])]
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{path}: malformed instability record ({e!r}); `dvc repro -f` the round that writes it") from None
    return pd.DataFrame(rows), pd.DataFrame(points)


def instability_headline(inst: pd.DataFrame) -> dict:
    """Headline candidates: per round the ticket's mean instability (test, pp) and its stable trials; the sparsest
    round whose mean instability is at or below the threshold."""
    mean = inst.groupby(["index", "round"], sort=True).agg(
        weights_remaining=("weights_remaining", "mean"), ticket_instability=("test_instability", "mean"),
        train_instability=("train_instability", "mean"), stable_trials=("stable", "sum"),
        threshold=("threshold", "first")).reset_index()
    rounds = {r["round"]: {"weights_remaining": round(float(r["weights_remaining"]), 4),
                           "ticket_instability": round(float(r["ticket_instability"]), 4),
                           "train_instability": round(float(r["train_instability"]), 4),
                           "stable_trials": int(r["stable_trials"])} for _, r in mean.iterrows()}
    stable = mean[mean["ticket_instability"] <= mean["threshold"]]
    sparsest = round(float(stable["weights_remaining"].min()), 4) if len(stable) else None
    return {"rounds": rounds, "sparsest_stable_weights_remaining": sparsest}


def instability_figures(inst: pd.DataFrame, points: pd.DataFrame, out: Path) -> list[Path]:
    """instability.png (the ticket's test instability vs weights remaining, min-max over trials) and
    interpolation.png (test error along the line, every trial, of the dense, a middle and the last round)."""
    plt = _plt()
    g = inst.groupby("index").agg(x=("weights_remaining", "mean"), y=("test_instability", "mean"),
                                  lo=("test_instability", "min"), hi=("test_instability", "max"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.errorbar(g["x"], g["y"], yerr=[g["y"] - g["lo"], g["hi"] - g["y"]], marker="o", ms=3, capsize=2, label="ticket")
    ax.axhline(float(inst["threshold"].iloc[0]), color="gray", ls="--", label="stability threshold")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("percent of weights remaining (log)")
    ax.set_ylabel("instability: test error increase along the line (pp)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title=f"mean, min-max over {inst['trial'].nunique()} trial(s)")
    paths = [_save(fig, out / "instability.png")]
    plt.close(fig)

    fig, axes, chosen = _round_panels(plt, points)
    for ax, k in zip(axes[0], chosen):
        for t, s in points[points["index"] == k].groupby("trial"):
            ax.plot(s["alpha"], s["test_error"], marker=".", label=f"trial {t}")
        rem = inst[inst["index"] == k]["weights_remaining"].mean()
        ax.set_title(f"r{k}: {rem:.1f}% remaining")
        ax.set_xlabel("α (0: ticket, 1: its copy)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test error (%)")
    axes[0][-1].legend()
    paths.append(_save(fig, out / "interpolation.png"))
    plt.close(fig)
    return paths


def write(runs: Path, round_names: list[str], tolerance: float, out: Path) -> tuple[dict, pd.DataFrame]:
    """Everything under metrics/; returns the headline numbers and the tidy table."""
    df, curves = collect(runs, round_names)
    inst, points = read_instability(runs, round_names)
    if not inst.empty:  # the ticket rows of the tidy table get their instability
        df = df.merge(inst[["round", "variant", "trial", *INSTABILITY_COLUMNS]], how="left", on=["round", "variant", "trial"])
    atomic_write_bytes(out / "rounds.csv", df.to_csv(index=False).encode())
    atomic_write_bytes(out / "accuracy.csv", accuracy_table(df).to_csv(index=False).encode())
    summary = headline(df, tolerance, output_classes(runs))
    if not inst.empty:
        summary["instability"] = instability_headline(inst)
        for name, entry in summary["instability"]["rounds"].items():
            summary["rounds"][name]["instability"] = entry
    atomic_write_bytes(out / "summary.json", (json.dumps(declared(summary), indent=2) + "\n").encode())
    atomic_write_bytes(out / "rounds.json", (json.dumps(summary["rounds"], indent=2) + "\n").encode())
    images = figures(df, curves, layer_table(runs, round_names), out)
    last = round_names[-1]
    first, _ = load(Path(runs) / last / "mask.pt", "mask")
    images.append(first_layer_image(next(iter(first.values())), f"{last}: first-layer weights kept per input",
                                    out / "mask_first_layer.png"))
    if not inst.empty:
        images += instability_figures(inst, points, out)
    report(summary, df, tolerance, images, out / "report.md")
    return summary, df


def format_table(df: pd.DataFrame) -> str:
    """The per-round table printed by summarize (means over trials)."""
    mean = df.groupby(["index", "variant"])[ROUND_KEYS].mean().reset_index()
    lines = [f"{'round':>5} {'variant':>7} {'remaining %':>11} {'test acc %':>10} {'early stop':>10} {'final acc %':>11}"]
    for _, r in mean.iterrows():
        lines.append(
            f"{'r' + str(r['index']):>5} {r['variant']:>7} {r['weights_remaining']:>11.2f} {r['test_accuracy']:>10.2f} "
            f"{r['early_stop_iteration']:>10.0f} {r['final_test_accuracy']:>11.2f}"
        )
    return "\n".join(lines)
