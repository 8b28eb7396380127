"""summarize: runs/<round>/metrics.json of every round -> metrics/ (summary.json, CSVs, figures)."""
import argparse
from pathlib import Path

from lottery import config, summary, ticket
from lottery.cli import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="metrics")
    ap.add_argument("--prepared", default="data/prepared.pt", help="the input normalisation the ticket records")
    args = ap.parse_args()
    cfg = config.load(args.params)
    names = config.round_names(cfg.prune)
    result, df = summary.write(Path(args.runs), names, cfg.summary.tolerance, Path(args.out))
    print(summary.format_table(df))
    # Export the sparsest winning round's ticket (the dense network when no pruned round wins).
    best = summary.winning_round(df, cfg.summary.tolerance) if result["dense_trained"] else "r0"
    ticket.export(Path(args.runs), best, Path(args.out) / "ticket.pt", Path(args.prepared))
    print(f"[summarize] {result['verdict']} (exported {best}) -> {args.out}/ (report.md, ticket.pt)")


if __name__ == "__main__":
    run(main)
