"""OmegaConf resolver used by conf/config.yaml: `${chain:${prune.rounds},${prune.schedule}}`.

DVC's Hydra composition (`dvc exp run -S prune.rounds=12`) imports this package from
`plugins_path` (.dvc/config: the repository root, on sys.path while plugins load) and writes
the resolved chain {r1: r0, r2: r1, ...} (the dense round r0 is its own stage) to params.yaml, because DVC templates have no
arithmetic to name a round's predecessor. The rule and its checks are `lottery.config.chain`:
a bad prune.rounds or prune.schedule fails the composition with a message naming the key.
"""
from omegaconf import OmegaConf

from lottery.config import chain


def _chain(rounds, schedule="iterative"):
    return OmegaConf.create(chain(rounds, schedule))


if not OmegaConf.has_resolver("chain"):
    OmegaConf.register_new_resolver("chain", _chain)
