"""Shared entry point of the stage scripts and commands: the project's own errors in one line and exit 2."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from .config import LotteryError

IMAGES = (".png", ".svg", ".pdf")


def run(main: Callable[[], None]) -> None:
    """Run a stage's `main`: a project error (LotteryError) prints one line naming its cause and exits 2;
    any other exception is a bug and keeps its traceback."""
    try:
        main()
    except LotteryError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def output(path: str | Path, flag: str, suffixes: tuple[str, ...] = IMAGES) -> Path:
    """A file a command will write (`flag` names its option), checked before any work: its suffix is one of
    `suffixes` and its folder exists (created if missing); a LotteryError naming it otherwise."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise LotteryError(f"{flag} {str(path)!r}: the file name must end in {', '.join(suffixes)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LotteryError(f"{flag} {str(path)!r}: cannot create its folder ({e.strerror})") from None
    if path.is_dir():
        raise LotteryError(f"{flag} {str(path)!r} is a folder, not a file")
    return path
