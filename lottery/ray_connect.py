"""Joining a Ray cluster, the one home for it: the sweep driver (`lottery.cluster`) and the rounds that run
across nodes (`lottery.distributed`) both connect here. Torch-free."""
from __future__ import annotations

import socket

from .config import LotteryError


class ClusterError(LotteryError, RuntimeError):
    """The driver cannot start: no Ray, no cluster, a missing remote, uncommitted code."""


def connect(address: str | None, log_to_driver: bool = False) -> None:
    """Join the Ray cluster at `address` (None: a local instance), or a ClusterError with a hint in one line."""
    try:
        import ray
    except ImportError:
        raise ClusterError("Ray is not installed: `pip install ray==2.60.0` (then `ray start --head` for a cluster)") from None
    hint = "start one with `ray start --head` on the head node and `ray start --address=<head>:6379` on each worker"
    host, _, port = (address or "").rpartition("://")[2].rpartition(":")
    if address and address != "auto":
        try:  # Ray itself waits minutes for an address nobody listens on
            socket.create_connection((host, int(port)), timeout=10).close()
        except (OSError, ValueError) as e:
            raise ClusterError(f"no Ray cluster at {address} ({e}): {hint}") from None
    try:
        ray.init(address=address, log_to_driver=log_to_driver, configure_logging=False)
    except Exception as e:
        raise ClusterError(f"no Ray cluster at {address} ({str(e).splitlines()[0]}): {hint}") from None
