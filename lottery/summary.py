"""Every round's metrics -> one tidy table, headline numbers and figures.

Rows of the tidy table: one per round x variant x trial. `headline` computes the numbers
of metrics/summary.json from that table alone, so it can be checked on a hand-made CSV.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

COLUMNS = [
    "round", "index", "variant", "trial", "seed", "init_seed", "mask_seed", "weights_remaining",
    "early_stop_iteration", "test_accuracy", "final_test_accuracy", "min_val_loss",
]
VARIANTS = ["ticket", "reinit", "random"]
ROUND_KEYS = ["weights_remaining", "test_accuracy", "early_stop_iteration", "final_test_accuracy"]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run `dvc repro` to train that round") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt metrics file ({e})") from None


def collect(runs: Path, round_names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy results, validation curves) of the named rounds."""
    rows, curves = [], []
    for name in round_names:
        m = _read(Path(runs) / name / "metrics.json")
        for n in m["networks"]:
            rows.append({"round": name, "index": m["index"], **{k: n[k] for k in COLUMNS[3:]}, "variant": n["variant"]})
        curves += [{"round": name, "index": m["index"], **c} for c in m["curve"]]
    return pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(curves)


def by_round(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max over trials per round and variant."""
    g = df.groupby(["index", "round", "variant"], sort=True)
    return g[["weights_remaining", "test_accuracy", "early_stop_iteration", "final_test_accuracy"]].agg(
        ["mean", "min", "max"]
    )


def headline(df: pd.DataFrame, tolerance: float) -> dict:
    """The numbers of metrics/summary.json (stable keys)."""
    mean = df.groupby(["index", "round", "variant"], sort=True)[ROUND_KEYS].mean().reset_index()
    dense = mean[(mean["index"] == 0) & (mean["variant"] == "ticket")]
    if dense.empty:
        raise ValueError("no dense round (r0) in the results")
    dense_acc = float(dense["test_accuracy"].iloc[0])
    dense_es = float(dense["early_stop_iteration"].iloc[0])
    out: dict = {"dense": {"test_accuracy": round(dense_acc, 4), "early_stop_iteration": round(dense_es, 1)}}
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
        wins = sub[sub["test_accuracy"] >= dense_acc - tolerance]
        out[v] = {
            # the winning-ticket verdict: the sparsest round still within `tolerance` of dense
            "smallest_winning_weights_remaining": round(float(wins["weights_remaining"].min()), 4) if len(wins) else None,
            "max_early_stop_speedup": round(dense_es / float(sub["early_stop_iteration"].min()), 4),
            "max_accuracy_gain": round(float(sub["test_accuracy"].max()) - dense_acc, 4),
        }
    return out


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per round: ticket weights remaining and each variant's mean test accuracy.

    At r0 every network is dense, so the controls take the dense value there.
    """
    mean = df.groupby(["index", "variant"])[["weights_remaining", "test_accuracy"]].mean().reset_index()
    wide = mean.pivot(index="index", columns="variant", values="test_accuracy")
    table = pd.DataFrame({"round": [f"r{i}" for i in wide.index]}, index=wide.index)
    table["weights_remaining"] = mean[mean["variant"] == "ticket"].set_index("index")["weights_remaining"].round(4)
    for v in VARIANTS:
        if v in wide:
            table[v] = wide[v].fillna(wide["ticket"]).round(4)
    return table.reset_index(drop=True)


def figures(df: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
            x = s[("weights_remaining", "mean")]
            y = s[(key, "mean")]
            err = [y - s[(key, "min")], s[(key, "max")] - y]
            ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=v)
        ax.set_xscale("log")
        ax.invert_xaxis()  # sparsest on the right, as in the paper
        ax.set_xlabel("percent of weights remaining (log)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(title=f"mean, min-max over {df['trial'].nunique()} trial(s)")
        fig.tight_layout()
        path = Path(out) / fname
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write(runs: Path, round_names: list[str], tolerance: float, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    df, _ = collect(runs, round_names)
    df.to_csv(out / "rounds.csv", index=False)
    accuracy_table(df).to_csv(out / "accuracy.csv", index=False)
    summary = headline(df, tolerance)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    figures(df, out)
    return summary


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
