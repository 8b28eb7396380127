"""`dvc exp show`, narrowed to the headline: one short table, from the first experiment on.

    python -m lottery.show                 # dense accuracy, each variant's verdict, the ticket's gain, changed params
    python -m lottery.show -A              # also experiments made on earlier commits
    python -m lottery.show --keep '.*gain$'   # any `dvc exp show` option is passed on (--md, --csv: DVC's own table)

Plain `dvc exp show` lists every param, metric and dependency: over 1,000 characters a row here. DVC 3.67
has no setting that hides columns (`.dvc/config` has no `exp show` options; the command takes `--drop`,
`--keep`, `--only-changed` and `--param-deps`), and `--drop`/`--keep` match with `re.match`, anchored at the
start of the column name. DVC's own table also pads every column and folds what does not fit the terminal
into `…`; this one is printed from DVC's CSV, two spaces between columns.
"""
from __future__ import annotations

import csv
import io
import subprocess
import sys

# Columns the headline keeps even when equal in every row (--only-changed drops the others that are): the row's
# name and kind, dense accuracy, every variant's verdict (the sparsest % of weights remaining still winning),
# the ticket's gain.
KEEP = [r"(Experiment|rev|typ)$", r"dense_acc$", r"(ticket|reinit|random|invert|rigl|set)\.win$", r"ticket\.gain$"]
# Columns it drops: every dependency (`data/raw.json`, `lottery/*.py`, `runs/r1/mask.pt`: a '/', or `runs`), the
# round list prune.rounds generates, the creation time, and the other metrics (`metrics/summary.json` has them).
DROP = [r".*/", r"runs$", r"Created$", r"prune\.chain\.", r"dense_trained$", r"criterion$", r"at$",
        r"(ticket|reinit|random|invert|rigl|set)\.(speedup|gain)$", r"instability\.(dense|stable)$"]
OWN_FORMAT = ("--csv", "--md", "--json")  # options that ask for DVC's own output


def command(args: list[str]) -> list[str]:
    """The `dvc exp show` command line for the headline view, with the caller's own options after it."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--no-pager", "--only-changed"]
    for pattern in KEEP:
        cmd += ["--keep", pattern]
    for pattern in DROP:
        cmd += ["--drop", pattern]
    return cmd + args


def table(text: str) -> str:
    """DVC's CSV as aligned columns: `workspace` and each commit, its experiments indented below it."""
    head, *rows = list(csv.reader(io.StringIO(text)))
    cols = [i for i, h in enumerate(head) if h not in ("Experiment", "rev", "typ", "parent")]
    lines = [["Experiment"] + [head[i] for i in cols]]
    for row in rows:
        cell = dict(zip(head, row))
        name = cell["rev"] if cell["typ"] == "baseline" else f"  {cell['Experiment'] or cell['rev']}"
        lines.append([name] + [row[i] or "-" for i in cols])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(__doc__.strip() + "\n\nThe options of `dvc exp show` follow.\n", flush=True)
    if any(a in OWN_FORMAT + ("-h", "--help") for a in args):
        return subprocess.run(command(args)).returncode
    p = subprocess.run(command(args + ["--csv"]), capture_output=True, text=True)
    sys.stderr.write(p.stderr)
    if p.returncode == 0:
        print(table(p.stdout))
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
