"""Every round's metrics -> one tidy table, headline numbers, figures and a report.

Rows of the tidy table: one per round x variant x trial. `headline` computes the numbers
of metrics/summary.json from that table alone, so it can be checked on a hand-made CSV.

Three steps, so that a bad input never leaves a half-rewritten metrics/: `collect` reads and checks
every input, `outputs` computes every file in memory, `write` writes them.
"""
from __future__ import annotations

import io
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import flops
from .artifacts import ArtifactError, atomic_write_bytes, load
from .config import REPORT_SETTINGS, Config, artifact_params

COLUMNS = [
    "round", "index", "variant", "trial", "seed", "init_seed", "mask_seed", "weights_remaining",
    "early_stop_iteration", "test_accuracy", "final_test_accuracy", "min_val_loss",
]
RUN_COLUMNS = ["criterion", "at"]  # how the round pruned (prune.criterion, prune.at), from its metrics.json
# Compute (lottery.flops): each network's own training in its round (its metrics.json), then what it took to reach
# it: its own training plus the trainings its mask and start weights needed, along its chain. Empty (NaN) for
# rounds written before compute accounting.
COST_COLUMNS = ["iterations", "forward_macs", "train_flops"]
FLOPS_KEYS = ["train_flops", "cumulative_flops", "cumulative_iterations"]  # per round and variant in rounds.json
# The ticket's early-bird search (prune.early_bird.enabled; empty otherwise and for controls): the early-bird
# iteration (empty when the mask never stabilised) and the fraction of the round's iterations the search saved
EARLY_BIRD_COLUMNS = ["early_bird_iteration", "early_bird_saved"]
VARIANTS = ["ticket", "reinit", "random", "invert", "rigl", "set"]
CONTROLS = VARIANTS[1:]
ROUND_KEYS = ["weights_remaining", "test_accuracy", "early_stop_iteration", "final_test_accuracy"]
NETWORK_KEYS = [*COLUMNS[3:], "variant", "layers_remaining"]
# The figures of a capability that may be off (instability.enabled). Declared outputs of summarize all the same,
# always written (a placeholder that says so when it is off, not linked from report.md): a file summarize removed
# instead would be missing after DVC restores an earlier run that measured it from the run-cache (DVC restores
# declared outputs only), and one it left alone would be stale.
OPTIONAL_FIGURES = {"instability.png": "instability.enabled", "interpolation.png": "instability.enabled"}
# The dense network "did not train" when its mean test accuracy is at most chance (100/C %) plus this many
# points: a network stuck at one class scores 100/C on a balanced test set (a few points more on a skewed
# one), while any dense network that learned scores far above (LeNet on Fashion-MNIST ~87%; the tests'
# 200-iteration mnist1d MLP well above 15%). No ticket can be declared winning against such a baseline.
CHANCE_MARGIN = 5.0
NONE = "—"  # a number that does not exist (a variant that never wins), in the report and the printed verdict


@dataclass
class Study:
    """Everything summarize reads, loaded and checked: nothing is written before all of it is."""

    df: pd.DataFrame  # the tidy table (with the ticket's instability columns when measured)
    curves: pd.DataFrame  # validation curves: round, index, iteration, variant, trial, val_loss, val_acc
    layers: pd.DataFrame  # the ticket's weights remaining per layer and round
    inst: pd.DataFrame  # instability per round x trial (empty when not measured)
    points: pd.DataFrame  # error along the line per round x trial x point (empty when not measured)
    classes: int  # outputs of the network (chance accuracy is 100/classes %)
    last: str  # the last round
    first_layer: torch.Tensor  # the last round's ticket mask of the first layer ((trials, out, in))


def _read(path: Path, name: str) -> dict:
    """A round's metrics.json: a missing, corrupt or malformed file, or another round's, stops summarize naming it."""
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run `dvc repro` to train that round") from None
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON
        raise ArtifactError(f"{path}: corrupt metrics file ({e}); `dvc repro -f` the round that writes it") from None
    problem = _malformed(m)
    if problem:
        raise ArtifactError(f"{path}: malformed metrics file ({problem}); `dvc repro -f` the round that writes it")
    if m["round"] != name:
        raise ArtifactError(f"{path}: holds the metrics of round {m['round']!r}, not {name!r}; "
                            "`dvc repro -f` the round that writes it")
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
        if not isinstance(item["layers_remaining"], dict):
            return f"networks[{i}]['layers_remaining'] is not an object"
    if not any(n["variant"] == "ticket" for n in m["networks"]):
        return "no ticket network"
    return None


def collect(runs: Path, round_names: list[str], cfg: Config | None = None) -> Study:
    """Read and check every input of the named rounds: metrics, validation curves, instability records, and
    the masks summarize draws from (the dense round's and the last round's, which must say they are theirs,
    and with `cfg`, that they were written with its params)."""
    runs = Path(runs)
    rows, curves, layers, seeds, costs = [], [], [], {}, {}
    for name in round_names:
        m = _read(runs / name / "metrics.json", name)
        costs[name] = m.get("cost")
        saved = {e["trial"]: e["saved"] for e in m.get("early_bird", {}).get("trials", [])}
        for n in m["networks"]:
            bird = {"early_bird_iteration": n.get("early_bird_iteration"),
                    "early_bird_saved": saved.get(n["trial"]) if n["variant"] == "ticket" else None}
            rows.append({"round": name, "index": m["index"], **{k: n[k] for k in COLUMNS[3:]}, "variant": n["variant"],
                         "criterion": m.get("criterion"), "at": m.get("at"),  # none for the dense round
                         **{k: n.get(k) for k in COST_COLUMNS}, **bird})
        curves.append(read_curves(runs / name / "live").assign(round=name, index=m["index"]))
        tickets = sorted((n for n in m["networks"] if n["variant"] == "ticket"), key=lambda n: n["trial"])
        seeds[name] = [n["seed"] for n in tickets]  # what the round's mask must record
        for layer in tickets[0]["layers_remaining"]:
            pct = sum(n["layers_remaining"][layer] for n in tickets) / len(tickets)
            layers.append({"round": name, "index": m["index"], "layer": layer, "percent_remaining": pct})
    df = pd.DataFrame(rows, columns=COLUMNS + RUN_COLUMNS + COST_COLUMNS + EARLY_BIRD_COLUMNS)
    df[COST_COLUMNS] = df[COST_COLUMNS].apply(pd.to_numeric)
    df = pd.concat([df, flops.cumulative(df, costs)], axis=1)
    df = df[[c for c in df.columns if c not in EARLY_BIRD_COLUMNS] + EARLY_BIRD_COLUMNS]  # the newest columns last
    inst, points = read_instability(runs, round_names)
    if not inst.empty:  # the ticket rows of the tidy table get their instability
        df = df.merge(inst[["round", "variant", "trial", *INSTABILITY_COLUMNS]], how="left", on=["round", "variant", "trial"])
    if "r0" not in seeds:
        raise ArtifactError("no dense round (r0) in the results")
    def expect(name: str) -> dict:
        return {"round": name, "seeds": seeds[name], **({"params": artifact_params(cfg, name)} if cfg else {})}

    dense, _ = load(runs / "r0" / "mask.pt", "mask", expect("r0"))
    last = round_names[-1]
    mask, _ = load(runs / last / "mask.pt", "mask", expect(last))
    return Study(df, pd.concat(curves, ignore_index=True), pd.DataFrame(layers), inst, points,
                 classes=int(list(dense.values())[-1].shape[1]), last=last, first_layer=next(iter(mask.values())))


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
    """Mean over trials of the round keys (and the FLOPs, where the table has them), one row per round and variant."""
    keys = ROUND_KEYS + [k for k in FLOPS_KEYS if k in df]
    return df.groupby(["index", "round", "variant"], sort=True)[keys].mean().reset_index()


def _flops(row: pd.Series) -> dict:
    """A row of `_means`' FLOPs as whole numbers (None where not recorded), for rounds.json."""
    return {k: None if pd.isna(row[k]) else int(round(float(row[k]))) for k in FLOPS_KEYS if k in row}


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
        entry = {**{k: round(float(r[k]), 4) for k in ROUND_KEYS}, **_flops(r)}
        for v in CONTROLS:
            c = mean[(mean["round"] == r["round"]) & (mean["variant"] == v)]
            if not c.empty:
                entry[v] = {**{k: round(float(c[k].iloc[0]), 4) for k in ROUND_KEYS[1:]}, **_flops(c.iloc[0])}
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


def _pct(x: float | None) -> str:
    """A percentage with two decimals, or NONE."""
    return NONE if x is None else f"{x:.2f}%"


def control_wins(summary: dict) -> dict[str, float]:
    """The controls that also win (within tolerance of dense at some pruned round): control -> its sparsest winning %."""
    return {v: summary[v]["smallest_winning_weights_remaining"] for v in CONTROLS
            if v in summary and summary[v]["smallest_winning_weights_remaining"] is not None}


def verdict(summary: dict, tolerance: float, classes: int | None) -> str:
    """The winning-ticket verdict in words (report.md, summarize's printed line), naming the controls that win too."""
    acc = summary["dense"]["test_accuracy"]
    if not summary["dense_trained"]:
        return f"the dense network did not train (test accuracy {acc:.2f}% ≈ chance {100 / classes:.2f}%)"
    if "ticket" not in summary:
        return f"dense only (test accuracy {acc:.2f}%): no pruned round"
    smallest = summary["ticket"]["smallest_winning_weights_remaining"]
    also = control_wins(summary)
    named = ", ".join(f"{v} down to {_pct(w)}" for v, w in also.items())
    if smallest is None:
        text = f"no pruned ticket stays within {tolerance} pp of dense ({acc:.2f}%)"
        return text + (f"; but {'a control does' if len(also) == 1 else 'controls do'}: {named}" if also else "")
    text = f"the ticket stays within {tolerance} pp of dense ({acc:.2f}%) down to {_pct(smallest)} of the weights remaining"
    return text + (f"; {'a control wins' if len(also) == 1 else 'controls win'} too: {named}" if also else "")


def winning_round(df: pd.DataFrame, tolerance: float) -> str:
    """The sparsest round whose mean ticket accuracy is within `tolerance` of dense (r0 if none)."""
    wins = _winners(_means(df), "ticket", tolerance)
    return str(wins["round"].iloc[0]) if len(wins) else "r0"


def margins(df: pd.DataFrame) -> pd.DataFrame:
    """Per pruned round: weights remaining, the ticket's mean test accuracy and, per control trained, its mean
    accuracy and the ticket's margin over it (pp): the columns `<control>` and `<control>_margin`."""
    mean = _means(df)
    acc = mean.pivot(index=["index", "round"], columns="variant", values="test_accuracy")
    remaining = mean[mean["variant"] == "ticket"].set_index(["index", "round"])["weights_remaining"]
    out = pd.DataFrame({"weights_remaining": remaining, "ticket": acc["ticket"]})
    for v in CONTROLS:
        if v in acc:
            out[v], out[f"{v}_margin"] = acc[v], acc["ticket"] - acc[v]
    return out[out.index.get_level_values("index") > 0].reset_index()


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


# ---------------------------------------------------------------- the run's settings


def commit(cwd: Path | str = ".") -> str:
    """The git HEAD summarize runs at (12 hex digits, `revisions.head`), or why there is none: a repository without
    a commit (`git init` then `dvc repro`) or no repository at all is a plain statement, not an error."""
    from .revisions import RevisionError, head

    try:
        sha = head(cwd)
    except RevisionError:
        return "none (not a git repository)"
    return sha[:12] if sha else "none (no commit yet)"


def format_seeds(seeds: list[int]) -> str:
    """'0, 1' or, for a run of more than two consecutive seeds, '0–9'."""
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def settings(params: dict, head: str, seeds: list[int] | None = None) -> dict[str, str]:
    """The run's settings as report.md lists them (params key -> text): the keys of config.REPORT_SETTINGS in
    `params` (nested, as params.yaml), `trials` with its trial seeds (`seeds`: pooled ones), and the commit."""
    def value(key: str):
        v = params
        for part in key.split("."):
            v = v.get(part, NONE) if isinstance(v, dict) else NONE  # a key an older params.yaml lacks: NONE
        return v

    out = {}
    for key in REPORT_SETTINGS:
        if key == "seed":
            continue
        v = value(key)
        out[key] = (", ".join(v) or "none") if isinstance(v, list) else str(v)
    seeds = seeds if seeds is not None else [value("seed") + t for t in range(value("trials"))]
    out["trials"] = f"{len(seeds)} (seeds {format_seeds(seeds)})"
    out["summary.tolerance"] = f"{value('summary.tolerance')} pp"
    out["commit"] = head
    return out


def subtitle(settings: dict[str, str], width: int = 120) -> str:
    """The settings in a figure's subtitle, wrapped to `width` characters: every one but the pooled experiments,
    which report.md lists."""
    text = "   ".join(f"{k}={v}" for k, v in settings.items() if k != "experiments")
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False))


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, title: str = "") -> bytes:
    """The figure as PNG bytes (closed), `title` (the settings) as a small subtitle above it."""
    if title:
        fig.suptitle(title, fontsize=6.5, color="0.3")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fig.clf()
    _plt().close(fig)
    return buf.getvalue()


def _save(fig, path: Path) -> Path:
    atomic_write_bytes(path, _png(fig))
    return path


# Each series its own colour, marker and line; hollow markers and lines thinning from the first: identical
# curves (a control equal to another, a layer pruned like another) stay visible, one inside the other.
MARKERS, LINES = ["o", "s", "^", "D", "v", "P", "X", "*"], ["-", "--", ":", "-."]


def _style(i: int) -> dict:
    return {"marker": MARKERS[i % len(MARKERS)], "ms": max(11 - 3 * i, 3.5), "mfc": "none", "mew": 1.2,
            "lw": max(2.6 - 0.6 * i, 1.0), "ls": LINES[i % len(LINES)], "color": f"C{i}"}


SHIFT = 0.012  # variant i's error bars drawn i x 1.2% of the axis width to the right: none hides another's


def _round_ticks(ax, x: list[float], names: list[str], pad: float = 1.0) -> None:
    """A log axis of % weights remaining (sparsest right) with every round's value labelled below and its name
    above (one in every few past 30 rounds), no minor ticks and no powers-of-ten labels; `pad`: a factor of
    room on the right (for shifted series)."""
    step = max(1, math.ceil(len(x) / 30))
    x, names = x[::step], names[::step]
    ax.set_xscale("log")
    ax.set_xlim(max(x) * 1.08, min(x) / 1.08 / pad)  # inverted: sparsest on the right, as in the paper
    ax.set_xticks(x, [f"{v:.3g}" for v in x], rotation=90 if len(x) > 12 else 0, fontsize=8)
    ax.minorticks_off()
    top = ax.secondary_xaxis("top")
    top.set_xticks(x, names, fontsize=7, rotation=90 if len(x) > 12 else 0)
    top.minorticks_off()
    ax.set_xlabel("percent of weights remaining (log scale; round above)")


def _log_ticks(ax, lo: float, hi: float) -> None:
    """Readable ticks on a log y axis from lo to hi: 1, 2, 5 x 10^k (every integer multiple within one decade)."""
    subs = range(1, 10) if hi / lo < 10 else (1, 2, 5)
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in subs]
    ticks = [t for t in ticks if lo / 1.05 <= t <= hi * 1.05]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()


def figures(df: pd.DataFrame, curves: pd.DataFrame, layers: pd.DataFrame, tolerance: float,
            title: str = "") -> dict[str, bytes]:
    """PNG figures (offline): accuracy and early stop vs sparsity, validation curves, per-layer sparsity."""
    plt = _plt()
    stats = by_round(df).reset_index()
    dense = _dense(_means(df))
    ticket = stats[stats["variant"] == "ticket"]
    x, names = list(ticket[("weights_remaining", "mean")]), list(ticket["round"])
    files = {}
    for key, ylabel, fname in [
        ("test_accuracy", "test accuracy at early stop (%)", "accuracy.png"),
        ("early_stop_iteration", "early-stop iteration", "early_stop.png"),
    ]:
        fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
        base = float(dense[key])
        if key == "test_accuracy":
            ax.axhspan(base - tolerance, base, color="0.85", lw=0, label=f"winning: within {tolerance} pp of dense")
            ax.axhline(base, color="0.2", lw=1, label=f"dense: {base:.2f}%")
        else:
            ax.axhline(base, color="0.2", lw=1, label=f"dense: {base:.0f}")
        drawn = [(i, v) for i, v in enumerate(VARIANTS) if v in set(stats["variant"])]
        shift = (max(x) / min(x)) ** SHIFT
        for i, v in drawn:
            s = stats[stats["variant"] == v]
            y = s[(key, "mean")]
            ax.errorbar(s[("weights_remaining", "mean")] / shift ** i, y, yerr=[y - s[(key, "min")], s[(key, "max")] - y],
                        capsize=2, label=v, **_style(i))
        _round_ticks(ax, x, names, pad=shift ** drawn[-1][0])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(title=f"mean, min-max over {df['trial'].nunique()} trial(s)\n(controls drawn slightly apart in x)",
                  fontsize=8, title_fontsize=8)
        files[fname] = _png(fig, title)

    # Validation accuracy against iteration: the dense round, a middle one and the last.
    fig, axes, chosen = _round_panels(plt, curves)
    for ax, k in zip(axes[0], chosen):
        c = curves[curves["index"] == k].groupby(["variant", "iteration"])["val_acc"].mean().reset_index()
        for i, v in enumerate(VARIANTS):
            s = c[c["variant"] == v]
            if not s.empty:
                ax.plot(s["iteration"], s["val_acc"], label=v, markevery=max(1, len(s) // 10), **_style(i))
        rem = df[(df["index"] == k) & (df["variant"] == "ticket")]["weights_remaining"].mean()
        ax.set_title(f"r{k}: {rem:.2f}% remaining", fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%, mean over trials)")
    axes[0][-1].legend(fontsize=8)
    files["validation.png"] = _png(fig, title)

    # Per-layer weights remaining of the ticket, per round.
    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=120)
    for i, (layer, s) in enumerate(layers.groupby("layer", sort=False)):
        ax.plot(s["index"], s["percent_remaining"], label=layer, **_style(i))
    ax.set_yscale("log")
    _log_ticks(ax, float(layers["percent_remaining"].min()), float(layers["percent_remaining"].max()))
    rounds = sorted(layers["index"].unique())
    step = max(1, math.ceil(len(rounds) / 30))
    ax.set_xticks(rounds[::step], [f"r{k}" for k in rounds[::step]], rotation=90 if len(rounds) > 16 else 0)
    ax.set_xlabel("round")
    ax.set_ylabel("weights remaining in the layer (%, log scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    files["layers.png"] = _png(fig, title)
    return files


def recorded(df: pd.DataFrame) -> bool:
    """Whether every network of the table has its cumulative FLOPs (rounds that recorded their compute)."""
    return "cumulative_flops" in df and bool(df["cumulative_flops"].notna().all())


def flops_figure(df: pd.DataFrame, tolerance: float, title: str = "") -> bytes | None:
    """flops.png: each variant's test accuracy against the training FLOPs it took to reach its round (cumulative,
    `lottery.flops`; log scale), mean and min-max over trials, the ticket's points labelled with their % remaining.
    None where the rounds did not record their compute (metrics.json written before compute accounting)."""
    if not recorded(df):
        return None
    plt = _plt()
    g = df.groupby(["index", "round", "variant"], sort=True).agg(
        x=("cumulative_flops", "mean"), y=("test_accuracy", "mean"), lo=("test_accuracy", "min"),
        hi=("test_accuracy", "max"), w=("weights_remaining", "mean")).reset_index()
    base = float(_dense(_means(df))["test_accuracy"])
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    ax.axhspan(base - tolerance, base, color="0.85", lw=0, label=f"winning: within {tolerance} pp of dense")
    ax.axhline(base, color="0.2", lw=1, label=f"dense: {base:.2f}%")
    shift = (g["x"].max() / g["x"].min()) ** SHIFT  # a control at the ticket's FLOPs (reinit) stays visible
    for i, v in enumerate(VARIANTS):
        s = g[g["variant"] == v]
        if s.empty:
            continue
        x = s["x"] * shift ** i
        ax.errorbar(x, s["y"], yerr=[s["y"] - s["lo"], s["hi"] - s["y"]], capsize=2, label=v, **_style(i))
        for xi, (_, r) in zip(x, s.iterrows()):  # every point's round (the ticket's on its left, with its % remaining)
            text, left = (f"{r['round']} ({r['w']:.3g}%)", True) if v == "ticket" else (r["round"], False)
            ax.annotate(text, (xi, r["y"]), textcoords="offset points", xytext=(-7 if left else 6, 3), fontsize=6.5,
                        ha="right" if left else "left", color=f"C{i}")
    ax.set_xscale("log")
    ax.margins(x=0.12)
    ax.set_xlabel("cumulative training FLOPs to reach the round (3 x multiply-adds of the kept weights x batch x "
                  "iterations; log scale)", fontsize=8)
    ax.set_ylabel("test accuracy at early stop (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title=f"mean, min-max over {df['trial'].nunique()} trial(s)\n(controls drawn slightly apart in x)",
              fontsize=8, title_fontsize=8)
    return _png(fig, title)


def _round_panels(plt, table: pd.DataFrame):
    """One panel each for the dense, a middle and the last round of `table` (an `index` column): fig, axes, rounds."""
    idx = sorted(table["index"].unique())
    chosen = sorted({idx[0], idx[len(idx) // 2], idx[-1]})
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.9), dpi=110, sharey=True, squeeze=False)
    return fig, axes, chosen


def first_layer_image(mask_first: torch.Tensor, heading: str, title: str = "") -> bytes:
    """Fraction of first-layer weights kept per input: a 28x28 image for MNIST-like inputs, a strip otherwise."""
    plt = _plt()
    kept = mask_first.float().mean(dim=(0, 1))  # over trials and hidden units
    kept = kept.reshape(28, 28) if kept.numel() == 784 else kept.reshape(1, -1)
    fig, ax = plt.subplots(figsize=(4.8, 4.4 if kept.shape[0] > 1 else 2.8), dpi=120)
    im = ax.imshow(kept.numpy(), cmap="viridis", vmin=0, vmax=float(kept.max()), aspect="auto" if kept.shape[0] == 1 else None)
    ax.set_title(heading, fontsize=10)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction kept")
    return _png(fig, title)


def placeholder(text: str, title: str = "") -> bytes:
    """A figure that only says `text`: what stands for a figure of a capability that is off."""
    fig, ax = _plt().subplots(figsize=(7.2, 1.6), dpi=120)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    ax.axis("off")
    return _png(fig, title)


# ---------------------------------------------------------------- instability

INSTABILITY_COLUMNS = ["test_instability", "train_instability", "stable"]


def read_instability(runs: Path, round_names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per round x trial: the ticket's instability, its verdict and threshold; one row per round x trial x
    point: α and the test and train error there), empty where no round measured it (instability.enabled)."""
    rows, points = [], []
    for name in round_names:
        path = Path(runs) / name / "metrics.json"
        m = _read(path, name)
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


def instability_figures(inst: pd.DataFrame, points: pd.DataFrame, title: str = "") -> dict[str, bytes]:
    """instability.png (the ticket's test instability vs weights remaining, min-max over trials) and
    interpolation.png (test error along the line, every trial, of the dense, a middle and the last round)."""
    plt = _plt()
    g = inst.groupby(["index", "round"]).agg(x=("weights_remaining", "mean"), y=("test_instability", "mean"),
                                             lo=("test_instability", "min"), hi=("test_instability", "max")).reset_index()
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    ax.axhline(float(inst["threshold"].iloc[0]), color="0.3", ls="--", lw=1, label="stability threshold")
    ax.errorbar(g["x"], g["y"], yerr=[g["y"] - g["lo"], g["hi"] - g["y"]], capsize=2, label="ticket", **_style(0))
    _round_ticks(ax, list(g["x"]), list(g["round"]))
    ax.set_ylabel("instability: test error increase along the line (pp)")
    ax.grid(alpha=0.3)
    ax.legend(title=f"mean, min-max over {inst['trial'].nunique()} trial(s)", fontsize=8, title_fontsize=8)
    files = {"instability.png": _png(fig, title)}

    fig, axes, chosen = _round_panels(plt, points)
    for ax, k in zip(axes[0], chosen):
        for i, (t, s) in enumerate(points[points["index"] == k].groupby("trial")):
            ax.plot(s["alpha"], s["test_error"], label=f"trial {t}", **_style(i))
        rem = inst[inst["index"] == k]["weights_remaining"].mean()
        ax.set_title(f"r{k}: {rem:.2f}% remaining", fontsize=10)
        ax.set_xlabel("α (0: ticket, 1: its copy)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test error (%)")
    axes[0][-1].legend(fontsize=8)
    files["interpolation.png"] = _png(fig, title)
    return files


# ---------------------------------------------------------------- report, outputs, write


def report(summary: dict, df: pd.DataFrame, tolerance: float, settings: dict[str, str], images: list[str]) -> str:
    """metrics/report.md: the run's settings, the verdict against the controls, the figures and the per-round
    tables, readable offline."""
    dense = summary["dense"]["test_accuracy"]
    lines = ["# Lottery ticket report", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in settings.items()]
    lines += [
        "",
        f"Dense test accuracy: **{dense:.2f}%** (early stop at iteration {summary['dense']['early_stop_iteration']:.0f}), "
        f"{df['trial'].nunique()} trial(s). Tickets pruned by **{summary.get('criterion', 'magnitude')}** "
        f"(prune.at: {summary.get('at', 'trained')}).",
        "",
        f"Winning-ticket verdict: **{summary['verdict']}**.",
    ]
    also = control_wins(summary) if "ticket" in summary else {}
    if also:
        lines += ["", f"**{'A control wins' if len(also) == 1 else 'Controls win'} too** "
                  f"({', '.join(f'{v} down to {_pct(w)}' for v, w in also.items())} of the weights remaining): "
                  "down to there, winning alone does not set the ticket apart; its margin over the controls (below) "
                  "does. Short runs often look like this: the controls fall behind with longer training and deeper "
                  "pruning."]
    lines += ["", "| variant | smallest winning % remaining | max early-stop speed-up | max accuracy gain (pp) |",
              "|---|---|---|---|"]
    for v in VARIANTS:
        if v in summary:
            h = summary[v]
            lines.append(f"| {v} | {_pct(h['smallest_winning_weights_remaining'])} | {h['max_early_stop_speedup']:.2f}x "
                         f"| {h['max_accuracy_gain']:+.2f} |")
    if "instability" in summary:
        lines += ["", f"Instability: the ticket's mean test instability stays at or below the threshold down to "
                  f"**{_pct(summary['instability']['sparsest_stable_weights_remaining'])}** of the weights remaining."]
    else:
        lines += ["", "Instability: not measured (instability.enabled: false)."]
    m = margins(df)
    controls = [v for v in CONTROLS if v in m]
    if len(m) and controls:
        win = lambda a: f"{a:.2f} ✓" if summary["dense_trained"] and a >= dense - tolerance else f"{a:.2f}"  # noqa: E731
        lines += ["", "## The ticket against its controls", "",
                  "Mean test accuracy over trials (%) and the ticket's margin over each control (percentage points). "
                  f"✓: within {tolerance} pp of dense ({dense:.2f}%), the winning rule.", "",
                  "| round | % remaining | ticket | " + " | ".join(f"{v} | margin over {v}" for v in controls) + " |",
                  "|---|---|---|" + "---|---|" * len(controls)]
        for _, r in m.iterrows():
            lines.append(f"| {r['round']} | {r['weights_remaining']:.2f} | {win(r['ticket'])} | "
                         + " | ".join(f"{win(r[v])} | {r[f'{v}_margin']:+.2f}" for v in controls) + " |")
    lines += ["", "## Per round (mean over trials)", "", "```", format_table(df), "```", ""]
    if recorded(df):
        lines += ["Training FLOPs: 3 x the forward multiply-adds of the kept weights x batch size x iterations "
                  "(forward + backward, RigL's convention; a multiply-add is one operation). `train FLOPs`: the "
                  "round's own training; `cumul. FLOPs`: every training it took to reach it (the ticket: its chain "
                  "of rounds; reinit: the search up to the previous round and its own; random, rigl, set: their own, "
                  "rigl's with the dense weight gradient of its mask updates; θk's training when rewinding to "
                  "iteration k). flops.png: test accuracy against the cumulative FLOPs.", ""]
    lines += [f"![{Path(name).stem}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def transfer_section(runs: Path, transfer: dict, df: pd.DataFrame) -> str:
    """report.md's section on a transferred ticket (`lottery.transfer`, runs/transfer/metrics.json, while
    transfer.source is set): it and its controls against the ticket this data found at the same round; '' when off."""
    if not transfer["source"]:
        return ""
    m = _read(runs / "transfer" / "metrics.json", transfer["round"])
    if m.get("source") != transfer["source"]:
        raise ArtifactError(f"{runs / 'transfer' / 'metrics.json'}: holds '{m.get('source')}' {m.get('round')}, "
                            f"params.yaml's transfer asks for '{transfer['source']}' {transfer['round']}; `dvc repro`")
    k = m["round"]

    def row(label: str, nets: list[dict]) -> str:
        acc = [n["test_accuracy"] for n in nets]
        return (f"| {label} | {sum(n['weights_remaining'] for n in nets) / len(nets):.2f} | {sum(acc) / len(acc):.2f} "
                f"[{min(acc):.2f}, {max(acc):.2f}] | {sum(n['early_stop_iteration'] for n in nets) / len(nets):.0f} |")

    lines = ["", f"## Transfer: the ticket of '{m['source']}' {k} trained on this data",
             "", f"The mask of round {k} of '{m['source']}' ({m['source_model']} on {m['source_dataset']}), from "
             f"{'its' if m['init'] == 'source' else 'this experiment’s'} θ0 (transfer.init: {m['init']}), trained here "
             f"with {m['optimizer']}; output layer {m['output_layer']}. Mean test accuracy over trials [min, max] (%).",
             "", "| network | % remaining | test accuracy | early stop |", "|---|---|---|---|"]
    for v in dict.fromkeys(n["variant"] for n in m["networks"]):
        label = "transferred ticket" if v == "ticket" else f"{v} of the transferred mask"
        lines.append(row(label, [n for n in m["networks"] if n["variant"] == v]))
    own = df[(df["round"] == k) & (df["variant"] == "ticket")]
    if len(own):
        lines.append(row(f"this data's ticket at {k}", own.to_dict("records")))
    else:
        lines.append(f"| this data's ticket at {k} | not run here (prune.rounds) | | |")
    return "\n".join(lines) + "\n"


def outputs(study: Study, tolerance: float, settings: dict[str, str]) -> tuple[dict, dict[str, bytes]]:
    """The headline numbers and every file of metrics/ (name -> bytes), computed in memory; nothing is written."""
    df = study.df
    summary = headline(df, tolerance, study.classes)
    if not study.inst.empty:
        summary["instability"] = instability_headline(study.inst)
        for name, entry in summary["instability"]["rounds"].items():
            summary["rounds"][name]["instability"] = entry
    title = subtitle(settings)
    files = {
        "rounds.csv": df.to_csv(index=False).encode(),
        "accuracy.csv": accuracy_table(df).to_csv(index=False).encode(),
        "summary.json": (json.dumps(declared(summary), indent=2) + "\n").encode(),
        "rounds.json": (json.dumps(summary["rounds"], indent=2) + "\n").encode(),
        **figures(df, study.curves, study.layers, tolerance, title),
        "mask_first_layer.png": first_layer_image(study.first_layer, f"{study.last}: first-layer weights kept per input",
                                                  subtitle(settings, 80)),
    }
    if not study.inst.empty:
        files.update(instability_figures(study.inst, study.points, title))
    drawn = flops_figure(df, tolerance, title)
    if drawn is not None:
        files["flops.png"] = drawn
    images = [name for name in files if name.endswith(".png")]
    files.setdefault("flops.png", placeholder("flops: compute not recorded by these rounds (written before compute "
                                              "accounting)", title))
    for name, key in OPTIONAL_FIGURES.items():
        files.setdefault(name, placeholder(f"{Path(name).stem}: not measured in this run ({key}: false)", title))
    files["report.md"] = report(summary, df, tolerance, settings, images).encode()
    return summary, files


def write(files: dict[str, bytes], out: Path) -> None:
    """Write `files` under `out`, each atomically."""
    for name, data in files.items():
        atomic_write_bytes(Path(out) / name, data)


def format_table(df: pd.DataFrame) -> str:
    """The per-round table printed by summarize (means over trials): with the FLOPs of the round's own training
    and the cumulative FLOPs to reach it (`lottery.flops`) where the table has them."""
    mean = _means(df)
    cost = "cumulative_flops" in mean and mean["cumulative_flops"].notna().any()
    lines = [f"{'round':>5} {'variant':>7} {'remaining %':>11} {'test acc %':>10} {'early stop':>10} {'final acc %':>11}"
             + (f" {'train FLOPs':>11} {'cumul. FLOPs':>12}" if cost else "")]
    for _, r in mean.iterrows():
        lines.append(
            f"{'r' + str(r['index']):>5} {r['variant']:>7} {r['weights_remaining']:>11.2f} {r['test_accuracy']:>10.2f} "
            f"{r['early_stop_iteration']:>10.0f} {r['final_test_accuracy']:>11.2f}"
            + (f" {r['train_flops']:>11.3e} {r['cumulative_flops']:>12.3e}" if cost else "")
        )
    return "\n".join(lines)
