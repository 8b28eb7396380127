"""Shared entry point of the stage scripts: clear one-line errors and a non-zero exit."""
from __future__ import annotations

import sys
from typing import Callable


def run(main: Callable[[], None]) -> None:
    from .artifacts import ArtifactError
    from .config import ConfigError
    from .data import DataError
    from .pruning import PruningError
    from .training import NumericalError

    try:
        main()
    except (ConfigError, ArtifactError, DataError, NumericalError, PruningError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
