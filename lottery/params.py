"""Write params.yaml from conf/config.yaml, exactly as `dvc exp run` does (Hydra composition),
then validate it: an unknown key or a bad value exits non-zero naming it.

    python -m lottery.params                      # defaults
    python -m lottery.params prune.rounds=3 trials=1
"""
from __future__ import annotations

import sys
from pathlib import Path


def compose(overrides: list[str], root: Path = Path("."), output: str = "params.yaml") -> Path:
    from dvc.utils.hydra import compose_and_dump

    root = root.resolve()
    compose_and_dump(root / output, str(root / "conf"), None, "config", str(root), overrides)
    return root / output


if __name__ == "__main__":
    from .config import ConfigError, load

    path = compose(sys.argv[1:])
    try:
        load(path)
    except ConfigError as e:
        sys.exit(f"error: {path}: {e}")
    print(f"wrote {path}")
