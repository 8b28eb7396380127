"""OmegaConf resolvers used by conf/config.yaml: `${chain:${prune.rounds},${prune.schedule}}`, and
`${transfer_stages:${transfer.source},${transfer.round}}` (`lottery.config.transfer_stages`: {} when off) and
`${early_bird_search:...}` (`lottery.config.early_bird_search`: the search's prune keys, {} when off).

DVC's Hydra composition (`dvc exp run -S prune.rounds=12`) imports this package from
`plugins_path` (.dvc/config: the repository root, on sys.path while plugins load) and writes
the resolved chain {r1: r0, r2: r1, ...} (the dense round r0 is its own stage) to params.yaml, because DVC templates have no
arithmetic to name a round's predecessor. The rule and its checks are `lottery.config.chain`:
a bad prune.rounds or prune.schedule fails the composition with a ChainError, our one line naming the key.
"""
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from lottery.config import ConfigError, chain, early_bird_search, transfer_stages

try:
    from dvc.exceptions import DvcException
except ImportError:  # composed without DVC (OmegaConf alone)
    DvcException = Exception


class ChainError(DvcException, InterpolationResolutionError, ConfigError):
    """A bad prune.rounds or prune.schedule, in the words of `lottery.config.chain`. Each layer it crosses takes it
    as its own: OmegaConf passes an InterpolationResolutionError on as it is (it wraps any other exception in
    "... raised while resolving interpolation"), DVC prints a DvcException as its one `ERROR: ...` line (any other
    exception as an "unexpected error"), and our commands print a ConfigError as `error: ...`, exit 2."""


def _resolver(rule):
    """`rule` (lottery.config) as an OmegaConf resolver: its result a DictConfig, its ConfigError a ChainError."""
    def resolve(*args):
        try:
            return OmegaConf.create(rule(*args))
        except ConfigError as e:
            raise ChainError(str(e)) from None
    return resolve


for _name, _rule in (("chain", chain), ("transfer_stages", transfer_stages), ("early_bird_search", early_bird_search)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver(_rule))
