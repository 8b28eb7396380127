"""Write params.yaml from conf/config.yaml, exactly as `dvc exp run` does (Hydra composition),
then validate it: an unknown key, a missing one or a bad value exits 2 naming it.

    python -m lottery.params                      # defaults
    python -m lottery.params prune.rounds=3 trials=1
    python -m lottery.params --check              # validate params.yaml as it is, rewrite nothing
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .config import ConfigError, load


def compose(overrides: list[str], root: Path = Path("."), output: str = "params.yaml") -> Path:
    """Compose conf/ with `overrides` into `output`; a ConfigError naming the override or the key otherwise
    (the resolver's own ChainError is one: a bad prune.rounds)."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    root = root.resolve()
    try:
        compose_and_dump(root / output, str(root / "conf"), None, "config", str(root), overrides)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException) as e:  # an unknown key, a malformed override, a bad conf/
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(" ".join(lines)) from None  # Hydra's message names the override
    return root / output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, as `dvc exp run -S` takes them")
    ap.add_argument("--check", action="store_true", help="only validate params.yaml: every key present and valid")
    args = ap.parse_args()
    if args.check and args.overrides:
        ap.error("--check validates params.yaml as it is: no overrides")
    path = Path("params.yaml") if args.check else compose(args.overrides)
    try:
        load(path, complete=True)
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    print(f"{path} valid" if args.check else f"wrote {path}")


if __name__ == "__main__":
    from .cli import run

    run(main)
