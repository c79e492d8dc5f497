"""Connecting to Ray: a local instance by default, a running cluster with an address.

- No address (``--address`` empty and no ``$RAY_ADDRESS``): a new local Ray instance with
  ``num_cpus`` CPUs (default: this machine's, at least what the job asks for). Ray enables token
  authentication on it and writes the token to ``~/.ray/auth_token`` (Ray's default).
- An address (``auto``, ``HOST:6379``, ``ray://HOST:10001``): connect to that cluster. A cluster
  started by ``ray start`` uses token authentication by default; Ray only auto-detects a token
  for ``auto``, so for an explicit address this module sets ``RAY_AUTH_MODE=token`` when a token
  is available (``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and
  ``RAY_AUTH_MODE`` is unset. ``RAY_AUTH_MODE=disabled`` talks to a cluster started without
  authentication.
- If Ray is already initialized in this process (a test, a notebook, ``ray job submit``), it is
  used as it is.

``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` defaults to 0.1 here for local instances (each
``ray.train.report`` took ~1.7 s with Ray's default interval; STACK-NOTES).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from liveedit.distributed import ClusterConfig, cpu_count

log = logging.getLogger(__name__)

AUTH_MODE = "RAY_AUTH_MODE"
HEALTH_CHECK = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def token_available() -> bool:
    """Whether a Ray authentication token can be found the way Ray looks for one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return Path(path).expanduser().is_file()
    return (Path.home() / ".ray" / "auth_token").is_file()


def resolve_address(config: ClusterConfig) -> str:
    """The address to connect to ('' = start a local instance)."""
    return config.address or os.environ.get("RAY_ADDRESS", "")


def connect(config: ClusterConfig | None = None, *, need_cpus: float = 0.0) -> str:
    """Initialize Ray for a job (see the module docstring); returns a description of the
    cluster it uses."""
    import ray

    config = config or ClusterConfig()
    if ray.is_initialized():
        return "the Ray instance already initialized in this process"
    address = resolve_address(config)
    os.environ.setdefault(HEALTH_CHECK, "0.1")
    if address:
        if AUTH_MODE not in os.environ and address != "auto" and token_available():
            os.environ[AUTH_MODE] = "token"
            log.info("Ray token authentication: RAY_AUTH_MODE=token (a token was found)")
        try:
            ray.init(address=address, log_to_driver=True)
        except Exception as exc:
            if type(exc).__name__ == "AuthenticationError":
                raise RuntimeError(
                    f"Ray cluster {address} refused the connection ({exc}). Token "
                    "authentication: put the cluster's token in $RAY_AUTH_TOKEN, "
                    "$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token and set RAY_AUTH_MODE=token "
                    "(see trainables/README.md)"
                ) from exc
            raise
        return f"the Ray cluster at {address}"
    num_cpus = config.num_cpus or max(cpu_count(), int(-(-need_cpus // 1)))
    ray.init(address="local", num_cpus=num_cpus)
    return f"a local Ray instance ({num_cpus} CPUs)"


def ship_by_value(*modules: object) -> None:
    """Serialize the functions and classes of ``modules`` by value, so Ray workers need only the
    installed ``liveedit`` package, not this source folder on their path."""
    from ray import cloudpickle

    for module in modules:
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:  # already registered
            pass
