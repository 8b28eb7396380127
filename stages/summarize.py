"""summarize: runs/<round>/metrics.json of every round -> metrics/ (summary.json, CSVs, figures, report, ticket).

Every input is read and checked, and every output computed, before the first file is written: a bad input
stops it in one line with metrics/ untouched.
"""
import argparse
import dataclasses
from pathlib import Path

from lottery import artifacts, config, summary, ticket
from lottery.cli import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="metrics")
    ap.add_argument("--prepared", default="data/prepared.pt", help="the input normalisation the ticket records")
    args = ap.parse_args()
    cfg = config.load(args.params)
    study = summary.collect(Path(args.runs), config.round_names(cfg.prune), cfg)
    settings = summary.settings(dataclasses.asdict(cfg), summary.commit())
    result, files = summary.outputs(study, cfg.summary.tolerance, settings)
    files["report.md"] += summary.transfer_section(Path(args.runs), dataclasses.asdict(cfg.transfer), study.df).encode()
    # Export the sparsest winning round's ticket (the dense network when no pruned round wins).
    best = summary.winning_round(study.df, cfg.summary.tolerance) if result["dense_trained"] else "r0"
    exported = ticket.build(Path(args.runs), best, Path(args.prepared), cfg=cfg)
    summary.write(files, Path(args.out))
    artifacts.save(Path(args.out) / "ticket.pt", *exported)
    print(summary.format_table(study.df))
    print(f"[summarize] {result['verdict']} (exported {best}) -> {args.out}/ (report.md, ticket.pt)")


if __name__ == "__main__":
    run(main)
