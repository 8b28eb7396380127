"""`dvc exp show`, narrowed to the headline: a table that fits 120 columns from the first experiment on.

    python -m lottery.show                 # dense accuracy, each variant's verdict, the ticket's gain, changed params
    python -m lottery.show -A              # also experiments made on earlier commits
    python -m lottery.show --keep '.*gain$' --md   # any other `dvc exp show` option is passed on

Plain `dvc exp show` lists every param, metric and dependency: about 3,000 characters a row here. DVC 3.67
has no setting that hides dependency columns (`dvc exp show` takes only `--drop`/`--keep`/`--only-changed`
and `--param-deps`, none of them in `.dvc/config`), and `--drop`/`--keep` match with `re.match`, anchored at
the start of the column name: a pattern for a column must match it from its first character.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

# Columns the headline keeps (protected from --only-changed and --drop): dense accuracy, every variant's
# verdict (the sparsest % of weights remaining still winning), the ticket's best gain over dense.
KEEP = [r"Experiment$", r"dense_acc$", r"(ticket|reinit|random|invert)\.win$", r"ticket\.gain$"]
# Columns it drops: every dependency (`data/raw.json`, `lottery/*.py`, `runs/r1/mask.pt`: a '/' or `runs`),
# the round list prune.rounds generates, the creation time, and the other headline metrics.
DROP = [r".*/", r"runs$", r"Created$", r"prune\.chain\.", r"dense_trained$", r"criterion$", r"at$",
        r"(ticket|reinit|random|invert)\.(speedup|gain)$", r"instability\.(dense|stable)$"]


def command(args: list[str]) -> list[str]:
    """The `dvc exp show` command line for the headline view, with the caller's own options after it."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--no-pager", "--only-changed"]
    for pattern in KEEP:
        cmd += ["--keep", pattern]
    for pattern in DROP:
        cmd += ["--drop", pattern]
    return cmd + args


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    env = dict(os.environ)
    # DVC's table takes the terminal's width, or 80 columns when piped: 80 would fold the view to '…'
    env.setdefault("COLUMNS", str(shutil.get_terminal_size(fallback=(120, 24)).columns))
    return subprocess.run(command(args), env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
