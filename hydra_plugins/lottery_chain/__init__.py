"""OmegaConf resolver used by conf/config.yaml: `${chain:${prune.rounds}}`.

DVC's Hydra composition (`dvc exp run -S prune.rounds=12`) imports this package from
`plugins_path` (.dvc/config) and writes the resolved chain {r0: init, r1: r0, ...} to
params.yaml, because DVC templates have no arithmetic to name a round's predecessor.
"""
from omegaconf import OmegaConf


def _chain(rounds):
    rounds = int(rounds)
    return OmegaConf.create({f"r{k}": ("init" if k == 0 else f"r{k - 1}") for k in range(max(rounds, 0) + 1)})


if not OmegaConf.has_resolver("chain"):
    OmegaConf.register_new_resolver("chain", _chain)
