"""Resume points of interrupted rounds: `<resume dir>/<round>-<digest>.pt`, at most one per round, and the
finished groups of networks of a round trained group by group (train.stack): `<round>.g<group>-<digest>.pt`.

Torch-free: the `check` stage sweeps the folder on every `dvc repro` and `dvc exp run`. The loop state
itself is saved and restored by `lottery.training` (the digest covers the training's inputs, so a resume
point is only ever taken up by the same training).
"""
from __future__ import annotations

import re
from pathlib import Path

POINT = re.compile(r"(r\d+)(\.g\d+)?-[0-9a-f]+\.pt")


def point(folder: Path, label: str, digest: str) -> Path:
    """The resume file of round `label` training with inputs `digest`; a resume point of the same round with other
    inputs (other params, an edited previous round) can never be taken up again and is deleted: one per round."""
    path = Path(folder) / f"{label}-{digest}.pt"
    for old in Path(folder).glob(f"{label}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def group(folder: Path, label: str, index: int, digest: str) -> Path:
    """The file of group `index` of round `label`, trained from inputs `digest`: kept until the round is done."""
    return Path(folder) / f"{label}.g{index}-{digest}.pt"


def sweep(folder: Path, runs: Path) -> list[Path]:
    """Delete the resume points whose round has finished by any route since they were saved, and leftovers.

    DVC removes a stage's outputs before it runs the stage, so an interrupted round leaves no metrics.json;
    when runs/<round>/metrics.json is back, the round was trained or restored (from the run-cache, by
    `dvc checkout` or `dvc exp apply`) after its resume point was written. Also deleted: files of no round
    (an older naming) and the temporary files of a save killed half-way. Call it only when no stage of this
    workspace runs (DVC's lock: the `check` stage, first of every repro). Returns the deleted files."""
    gone = []
    for f in sorted(Path(folder).glob("*")) if Path(folder).is_dir() else []:
        m = POINT.fullmatch(f.name)
        if f.is_file() and (m is None or (Path(runs) / m.group(1) / "metrics.json").is_file()):
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone
