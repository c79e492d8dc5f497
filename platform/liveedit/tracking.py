"""MLflow tracking with an embedded default: a SQLite store in the working directory.

``mlflow`` is imported lazily (it is slow to import). Per-step metrics are buffered and written
with one ``log_batch`` call per flush, so logging every step does not slow training down.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrackingConfig:
    """Where runs go. An empty ``uri`` means ``$MLFLOW_TRACKING_URI`` or, failing that,
    ``sqlite:///<cwd>/mlflow.db`` (artifacts under ``<cwd>/mlruns``)."""

    uri: str = ""
    experiment: str = "liveedit"
    enabled: bool = True


def resolve_uri(uri: str = "") -> str:
    """The tracking URI a run will use (see :class:`TrackingConfig`)."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    return env or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
    return None


def ui_command(uri: str = "", host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The argv of ``liveedit ui``: the MLflow UI over the same store the runs use (see
    :func:`resolve_uri`), bound to ``host`` (loopback by default). For the default SQLite store,
    runs created from the UI put their artifacts next to the database (``mlruns``), as ours do."""
    import sys

    uri = resolve_uri(uri)
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    location = _artifact_location(uri)
    if location is not None:
        argv += ["--default-artifact-root", location]
    return argv + ["--host", host, "--port", str(port)]


def _connect(client_cls: Any, uri: str, attempts: int = 5) -> Any:
    """An MLflow client whose store is ready. Two processes creating the same new SQLite store
    at once race in MLflow's schema migration (one fails); the loser retries once the winner has
    migrated the database."""
    for attempt in range(attempts):
        try:
            client = client_cls(tracking_uri=uri)
            client.search_experiments(max_results=1)
            return client
        except Exception:  # noqa: BLE001 - MLflow raises alembic / sqlalchemy errors here
            if attempt == attempts - 1:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


class Tracker:
    """One MLflow run: params once, metrics per step (buffered), artifacts. ``run_id`` can be
    given to re-attach to a run after a resume. A disabled tracker records nothing."""

    def __init__(
        self,
        config: TrackingConfig,
        run_name: str,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        flush_every: int = 50,
    ):
        self.enabled = config.enabled
        self.run_id: str | None = run_id
        self._buffer: list[Any] = []
        self._flush_every = flush_every
        if not self.enabled:
            return
        import mlflow
        from mlflow.tracking import MlflowClient

        uri = resolve_uri(config.uri)
        self.client = _connect(MlflowClient, uri)
        experiment = self.client.get_experiment_by_name(config.experiment)
        if experiment is None:
            experiment_id = self.client.create_experiment(
                config.experiment, artifact_location=_artifact_location(uri)
            )
        else:
            experiment_id = experiment.experiment_id
        if run_id is None:
            tags = {"mlflow.runName": run_name}
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._metric = mlflow.entities.Metric
        self._param = mlflow.entities.Param

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        items = [self._param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        self._buffer.extend(self._metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._buffer) >= self._flush_every * max(1, len(metrics)):
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._buffer:
            return
        for i in range(0, len(self._buffer), 1000):
            self.client.log_batch(self.run_id, metrics=self._buffer[i : i + 1000])
        self._buffer = []

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        if self.enabled:
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
