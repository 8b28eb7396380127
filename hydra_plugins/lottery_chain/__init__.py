"""OmegaConf resolver used by conf/config.yaml: `${chain:${prune.rounds},${prune.schedule}}`.

DVC's Hydra composition (`dvc exp run -S prune.rounds=12`) imports this package from
`plugins_path` (.dvc/config) and writes the resolved chain {r0: init, r1: r0, ...} to
params.yaml, because DVC templates have no arithmetic to name a round's predecessor.
"""
from omegaconf import OmegaConf


def _chain(rounds, schedule="iterative"):
    """Same rule as lottery.config.chain (which validates it): one-shot rounds all prune r0."""
    rounds = int(rounds)
    prev = (lambda k: "r0") if schedule == "oneshot" else (lambda k: f"r{k - 1}")
    return OmegaConf.create({f"r{k}": ("init" if k == 0 else prev(k)) for k in range(max(rounds, 0) + 1)})


if not OmegaConf.has_resolver("chain"):
    OmegaConf.register_new_resolver("chain", _chain)
