"""Shared entry point of the stage scripts: the project's own errors in one line and exit 2."""
from __future__ import annotations

import sys
from typing import Callable

from .config import LotteryError


def run(main: Callable[[], None]) -> None:
    """Run a stage's `main`: a project error (LotteryError) prints one line naming its cause and exits 2;
    any other exception is a bug and keeps its traceback."""
    try:
        main()
    except LotteryError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
