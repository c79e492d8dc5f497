"""Ray Tune driver of ``liveedit sweep`` (DESIGN §3; the spec is :mod:`liveedit.sweeps.spec`).

A sweep is a Ray Tune experiment named after the spec (``<storage>/<name>``, never a timestamp)
whose trials are function trials (:func:`trial_main`, ``tune.with_resources`` of the spec's
``resources``). Each trial:

1. meta-trains LiveEdit for the trial's configuration — single-process (the library's
   :func:`~liveedit.editors.liveedit.trainer.train`, run checkpoint by checkpoint: after each
   ``checkpoint_every`` steps the trial reports ``step`` / ``checkpoint_loss`` to Tune, so ASHA can
   stop it, together with a Tune checkpoint holding the trainer's latest checkpoint and best
   weights, so a restarted or restored trial resumes where it was) — or, with
   ``base.distributed.workers >= 1``, on Ray Train + DeepSpeed through
   :func:`trainables.meta_train.run_meta_training` (the trial then holds 0.1 CPU; per-checkpoint
   reports reach Tune when that function accepts ``callbacks``, otherwise once at the end);
2. evaluates the trial's editor with the lifelong protocol
   (:func:`~liveedit.evaluation.grid.run_eval`; in a GPU task next to the training workers in the
   distributed mode) and reports the objective (``objective``: the configured metric at the
   configured #edits) as its final result. Editors that need no meta-training (``none``, ``ft-l``,
   ``ft-m``, or LiveEdit with given weights) go straight to 2.

Searchers: ``OptunaSearch`` (TPE or random, seeded; the spec's define-by-run space, conditions
included) or a grid (``tune.grid_search`` over :func:`~liveedit.sweeps.spec.grid_points`).
Scheduler: ``ASHAScheduler(time_attr="step", metric="checkpoint_loss", mode="min")`` over
meta-training steps (``stop_last_trials=False``: a trial that trained to the end is evaluated).
``max_concurrent_trials`` comes from the cluster's resources (or ``concurrency``); failed trials
are retried from their latest checkpoint (``FailureConfig(max_failures)``).

Resuming: re-running the same command finds the experiment at ``<storage>/<name>`` and calls
``Tuner.restore(path, trainable=..., resume_errored=True)``: finished trials stay finished,
interrupted and errored ones resume from their checkpoints, pending ones start. A different spec
under the same name is refused (``liveedit_sweep.json`` holds the spec's hash).

MLflow: a parent run per sweep (the spec as params and ``spec.yaml``, searcher, scheduler, git
commit, Ray job ids, best value and config, the report) with one child run per trial (the
trial's flattened config, per-step losses, per-checkpoint loss, the five metrics and their average
per #edits, trainable parameters). The report (:mod:`liveedit.sweeps.report`) is rebuilt from
MLflow alone and attached to the parent run under ``report/``.

TEST HOOK: with ``LIVEEDIT_SWEEP_INTERRUPT_AFTER=N`` in the driver's environment, the driver
interrupts itself (SIGUSR1: what Tune does on Ctrl+C — state saved, trials stopped) once N trials
have completed in this run.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from liveedit.config import ConfigError, flatten, from_dict, to_dict
from liveedit.sweeps.report import mlflow_key
from liveedit.sweeps.spec import (
    METRIC_KEYS,
    DefineByRun,
    SweepBase,
    SweepSpec,
    candidate_points,
    check_inputs,
    grid_points,
    resolve_trial,
    spec_hash,
    trial_label,
)
from liveedit.tracking import Tracker, TrackingConfig, resolve_uri

log = logging.getLogger(__name__)

INTERRUPT_ENV = "LIVEEDIT_SWEEP_INTERRUPT_AFTER"
GIT_COMMIT_ENV = "LIVEEDIT_GIT_COMMIT"
STATE_FILE = "liveedit_sweep.json"
TRIAL_FILE = "trial.json"
WORK_DIR = "liveedit"
BEST = "best"
OBJECTIVE = "objective"
ASHA_METRIC = "checkpoint_loss"
ASHA_TIME = "step"
_UNLOGGED = ("train.out", "train.editor.d", "train.editor.n_vision")  # set per trial / backbone


# ------------------------------------------------------------------------------- paths


def _is_uri(path: str) -> bool:
    return "://" in str(path)


def _absolute(path: Path | str, root: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def absolute_trial(trial: SweepBase, root: Path) -> SweepBase:
    """A trial's config with its world, backbone and weights made absolute against ``root``
    (the driver's working directory; in a trial, Tune's ``TUNE_ORIG_WORKING_DIR``)."""
    train = replace(
        trial.train,
        world=_absolute(trial.train.world, root),
        backbone=_absolute(trial.train.backbone, root),
    )
    options = dict(trial.eval.editor_options)
    if "weights" in options:
        options["weights"] = str(_absolute(options["weights"], root))
    return replace(trial, train=train, eval=replace(trial.eval, editor_options=options))


def absolute_spec(spec: SweepSpec, root: Path) -> SweepSpec:
    """The spec with its base paths and storage made absolute (URIs are kept)."""
    storage = spec.storage if _is_uri(spec.storage) else str(_absolute(spec.storage, root))
    return replace(spec, base=absolute_trial(spec.base, root), storage=storage)


def sweep_path(spec: SweepSpec) -> str:
    return f"{spec.storage.rstrip('/')}/{spec.name}"


def _read_text(path: str) -> str | None:
    if _is_uri(path):
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        try:
            with fs.open_input_stream(inner) as handle:
                return handle.read().decode("utf-8")
        except (FileNotFoundError, OSError):
            return None
    file = Path(path)
    return file.read_text(encoding="utf-8") if file.is_file() else None


def _write_text(path: str, text: str) -> None:
    if _is_uri(path):
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as handle:
            handle.write(text.encode("utf-8"))
        return
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(file)


# ------------------------------------------------------------------------------- provenance


def git_info(root: Path) -> dict[str, str]:
    """The commit the sweep runs (``$LIVEEDIT_GIT_COMMIT`` wins: a job's uploaded working
    directory has no ``.git``) and whether tracked files were modified."""
    commit = os.environ.get(GIT_COMMIT_ENV, "")
    dirty = ""
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            dirty = "true" if status.strip() else "false"
        except (OSError, subprocess.SubprocessError):
            commit = ""
    out = {"liveedit.git_commit": commit or "unknown"}
    if dirty:
        out["liveedit.git_dirty"] = dirty
    return out


def ray_job_info() -> dict[str, str]:
    """Ray's job id of this driver and, under ``ray job submit``, the submission id."""
    import ray

    out: dict[str, str] = {}
    if os.environ.get("RAY_JOB_ID"):
        out["ray.job_id"] = os.environ["RAY_JOB_ID"]
    try:
        out["ray.job_id"] = ray.get_runtime_context().get_job_id()
    except Exception:  # not connected
        pass
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    if raw:
        try:
            submission = (json.loads(raw).get("metadata") or {}).get("job_submission_id")
        except ValueError:
            submission = None
        if submission:
            out["ray.job_submission_id"] = str(submission)
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        out["ray.job_submission_id"] = os.environ["RAY_JOB_SUBMISSION_ID"]
    return out


# ------------------------------------------------------------------------------- MLflow


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def find_child_run(uri: str, experiment: str, parent_run_id: str, trial_id: str) -> str | None:
    """The run id of a trial's child run under ``parent_run_id`` (None if there is none)."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
            f"tags.`liveedit.trial_id` = '{trial_id}'"
        ),
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


class TrialRun:
    """A trial's MLflow child run: re-attached by (parent, trial id) when the trial restarts."""

    def __init__(
        self,
        context: Mapping[str, Any],
        trial_id: str,
        label: str,
        params: Mapping[str, Any],
        trial: SweepBase,
    ):
        tracking = context["tracking"]
        self.tracker: Tracker | None = None
        if not tracking["enabled"] or not context.get("parent_run_id"):
            return
        config = TrackingConfig(uri=tracking["uri"], experiment=tracking["experiment"])
        parent = context["parent_run_id"]
        existing = find_child_run(tracking["uri"], tracking["experiment"], parent, trial_id)
        self.tracker = Tracker(config, run_name=label, run_id=existing, parent_run_id=parent)
        if existing is None:
            values = {
                k: v
                for k, v in flatten(trial).items()
                if k not in _UNLOGGED and not k.startswith("train.tracking.")
            }
            values.update({f"sweep.param.{k}": v for k, v in params.items()})
            values.update({"sweep.label": label, "sweep.trial_id": trial_id})
            self.tracker.log_params({mlflow_key(k): v for k, v in values.items()})
            for key, value in (
                ("liveedit.kind", "sweep-trial"),
                ("liveedit.sweep", str(context["name"])),
                ("liveedit.trial_id", trial_id),
                ("liveedit.label", label),
                ("liveedit.params", json.dumps(dict(params), sort_keys=True, default=str)),
            ):
                self.tracker.set_tag(key, value)

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id if self.tracker else None

    def log_history(self, history: list[dict[str, float]]) -> None:
        if self.tracker is None:
            return
        for row in history:
            values = {k: v for k, v in row.items() if k != "step"}
            self.tracker.log_metrics(values, int(row["step"]))
        self.tracker.flush()

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(values, step)
            self.tracker.flush()

    def log_final(self, rows: dict[int, dict[str, float]], final: dict[str, float]) -> None:
        if self.tracker is None:
            return
        for edits, values in sorted(rows.items()):
            # e<T>/<metric>: every value as a plain metric (what the report reads); <metric> at
            # step T: MLflow's charts of each metric against #edits.
            self.tracker.log_metrics({f"e{edits}/{k}": v for k, v in values.items()}, 0)
            self.tracker.log_metrics({k: values[k] for k in METRIC_KEYS}, edits)
        per_step = {*METRIC_KEYS, ASHA_METRIC, ASHA_TIME, "evaluated", "edits"}
        scalars = {
            k: float(v)
            for k, v in final.items()
            if isinstance(v, int | float) and k not in per_step
        }
        self.tracker.log_metrics(scalars, 0)
        self.tracker.flush()
        self.tracker.set_tag("liveedit.status", "completed")

    def finish(self, status: str = "FINISHED") -> None:
        if self.tracker is not None:
            try:
                self.tracker.finish(status)
            except Exception as exc:  # never mask the trial's own error
                log.warning("could not close MLflow run %s: %s", self.run_id, exc)


class SweepParent:
    """The sweep's MLflow parent run (re-attached when the sweep resumes)."""

    def __init__(
        self,
        spec: SweepSpec,
        uri: str,
        digest: str,
        path: str,
        run_id: str | None,
        root: Path,
    ):
        self.enabled = spec.tracking.enabled
        self.uri = uri
        self.run_id: str | None = None
        self.tracker: Tracker | None = None
        if not self.enabled:
            return
        config = TrackingConfig(uri=uri, experiment=spec.experiment)
        tracker = None
        if run_id:
            try:
                tracker = Tracker(config, run_name="", run_id=run_id)
            except Exception:  # deleted, or another store
                tracker = None
        if tracker is None:
            tracker = Tracker(config, run_name=spec.name)
            params = {
                mlflow_key(f"spec.{k}"): v
                for k, v in flatten(spec).items()
                if not k.startswith("tiny")
            }
            tracker.log_params(params)
        self.tracker = tracker
        self.run_id = tracker.run_id
        searcher = (
            "grid"
            if spec.searcher.type == "grid"
            else f"optuna-{spec.searcher.sampler}(seed={spec.searcher.seed})"
        )
        scheduler = "none"
        if spec.scheduler.type == "asha":
            s = spec.scheduler
            scheduler = (
                f"asha(time_attr={ASHA_TIME}, metric={ASHA_METRIC}, grace_period="
                f"{s.grace_period or 'checkpoint_every'}, reduction_factor={s.reduction_factor})"
            )
        tags = {
            "liveedit.kind": "sweep",
            "liveedit.sweep": spec.name,
            "liveedit.spec_hash": digest,
            "liveedit.tune_path": path,
            "liveedit.searcher": searcher,
            "liveedit.scheduler": scheduler,
            "liveedit.objective": json.dumps(
                {
                    "metric": spec.objective.metric,
                    "edits": spec.objective_edits,
                    "mode": spec.objective.mode,
                }
            ),
            "liveedit.report": json.dumps(report_settings(spec)),
            "liveedit.locality": spec.base.eval.locality,
            "mlflow.note.content": spec.description or f"liveedit sweep {spec.name}",
            **git_info(root),
            **ray_job_info(),
        }
        for key, value in tags.items():
            tracker.set_tag(key, value)

    def log_artifact_text(self, name: str, text: str, folder: str | None = None) -> None:
        if self.tracker is None:
            return
        with tempfile.TemporaryDirectory(prefix="liveedit-sweep-") as tmp:
            file = Path(tmp) / name
            file.write_text(text, encoding="utf-8")
            self.tracker.log_artifact(file, folder)

    def mark_children(self, outcomes: list[TrialOutcome], experiment: str) -> None:
        """Give every trial's child run its final status (stopped early by ASHA: KILLED;
        errored: FAILED)."""
        if self.tracker is None:
            return
        client = self.tracker.client
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'",
            max_results=50_000,
        )
        by_trial = {r.data.tags.get("liveedit.trial_id"): r for r in runs}
        for outcome in outcomes:
            run = by_trial.get(outcome.trial_id)
            if run is None:
                continue
            client.set_tag(run.info.run_id, "liveedit.status", outcome.status)
            if outcome.status == "stopped":
                client.set_tag(run.info.run_id, "liveedit.stopped_by", "scheduler (ASHA)")
                client.set_terminated(run.info.run_id, status="KILLED")
            elif outcome.status == "failed":
                client.set_terminated(run.info.run_id, status="FAILED")

    def finish(self, status: str) -> None:
        if self.tracker is not None:
            self.tracker.finish(status)


def report_settings(spec: SweepSpec) -> dict[str, Any]:
    """What :mod:`liveedit.sweeps.report` needs besides the runs: the report section, the
    metric and #edits it shows, and the order of the searched values (variants in spec order)."""
    order = {key: [str(v) for v in param.values()] for key, param in spec.search.items()}
    return {
        "kind": spec.report.kind,
        "x": spec.report.x,
        "y": spec.report.y,
        "rows": spec.report.rows,
        "metric": spec.report_metric,
        "edits": spec.report_edits,
        "title": spec.report.title or spec.description or spec.name,
        "order": order,
        "name": spec.name,
    }


# ------------------------------------------------------------------------------- the trial

Reporter = Callable[[dict[str, Any], "Path | None"], None]


def _tune_report(metrics: dict[str, Any], folder: Path | None) -> None:
    if folder is None:
        tune.report(metrics)
    else:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))


def _latest(work: Path) -> Path | None:
    from liveedit.editors.liveedit.trainer import latest_checkpoint

    return latest_checkpoint(work)


def _done_steps(work: Path) -> int:
    latest = _latest(work)
    if latest is None:
        return 0
    return int(json.loads((latest / "state.json").read_text())["step"])


def _trial_state(work: Path) -> dict[str, Any]:
    file = work / TRIAL_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def _save_trial_state(work: Path, **values: Any) -> None:
    state = {**_trial_state(work), **values}
    work.mkdir(parents=True, exist_ok=True)
    (work / TRIAL_FILE).write_text(json.dumps(state, indent=1))


def restore_work(folder: Path, work: Path) -> bool:
    """Copy a Tune checkpoint (the trainer's latest checkpoint, the best weights, the trial
    state) into the trial's working folder unless that folder is already as far; returns
    whether anything was copied."""
    found = sorted((folder / "checkpoints").glob("step_*"))
    if not found:
        return False
    latest = _latest(work)
    if latest is not None and latest.name >= found[-1].name:
        return False
    target = work / "checkpoints" / found[-1].name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(found[-1], target)
    if (folder / BEST).is_dir():
        shutil.rmtree(work / BEST, ignore_errors=True)
        shutil.copytree(folder / BEST, work / BEST)
    if (folder / TRIAL_FILE).is_file():
        shutil.copy2(folder / TRIAL_FILE, work / TRIAL_FILE)
    return True


def _report_with_checkpoint(report: Reporter, metrics: dict[str, Any], work: Path) -> None:
    latest = _latest(work)
    if latest is None:
        report(metrics, None)
        return
    folder = Path(tempfile.mkdtemp(prefix="tune-ckpt-", dir=work.parent))
    try:
        shutil.copytree(latest, folder / "checkpoints" / latest.name)
        if (work / BEST).is_dir():
            shutil.copytree(work / BEST, folder / BEST)
        if (work / TRIAL_FILE).is_file():
            shutil.copy2(work / TRIAL_FILE, folder / TRIAL_FILE)
        report(metrics, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _train_local(
    trial: SweepBase, work: Path, run: TrialRun, report: Reporter, threads: int
) -> dict[str, Any]:
    """Single-process meta-training, one ``checkpoint_every`` chunk per call of the library's
    ``train`` (each call resumes from the previous checkpoint), reporting each checkpoint."""
    from liveedit.editors.liveedit.trainer import train

    config = replace(trial.train, out=work, tracking=TrackingConfig(enabled=False), threads=threads)
    steps, every = config.steps, config.checkpoint_every
    start = time.monotonic()
    done = _done_steps(work)
    state = _trial_state(work)
    summary: dict[str, Any] = {
        "steps": done,
        "checkpoint_loss": float(state.get("checkpoint_loss", math.nan)),
        "best_loss": float(state.get("best_loss", math.nan)),
        "stopped": state.get("stopped", "steps"),
    }
    if state.get("stopped", "steps") != "steps":
        return summary
    while done < steps:
        target = min(steps, (done // every + 1) * every)
        minutes = 0.0
        if config.max_minutes:
            minutes = config.max_minutes - (time.monotonic() - start) / 60
            if minutes <= 0:
                summary["stopped"] = "time"
                break
        result = train(replace(config, steps=target, max_minutes=minutes), show_progress=False)
        done = result.steps
        if result.history:
            run.log_history(result.history)
            loss = sum(h["total"] for h in result.history) / len(result.history)
            summary["checkpoint_loss"] = loss
            run.log_metrics({ASHA_METRIC: loss}, done)
        summary.update(steps=done, best_loss=result.best_loss, stopped=result.stopped)
        _save_trial_state(
            work,
            run_id=run.run_id,
            checkpoint_loss=summary["checkpoint_loss"],
            best_loss=result.best_loss,
            step=done,
            stopped=result.stopped,
        )
        metrics = {
            ASHA_TIME: done,
            ASHA_METRIC: summary["checkpoint_loss"],
            "loss": result.last_loss,
            "best_loss": result.best_loss,
            OBJECTIVE: math.nan,
            "evaluated": 0,
        }
        _report_with_checkpoint(report, metrics, work)
        if result.stopped != "steps":
            break
    return summary


def _tune_report_callback() -> Any:
    """A Ray Train callback that forwards the training workers' reports (``step``,
    ``checkpoint_loss``, ...) to this Tune trial, with the keys Tune's searcher expects."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class SweepTuneReportCallback(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: Any, checkpoint: Any) -> None:
            extended = [{**m, OBJECTIVE: math.nan, "evaluated": 0} for m in metrics]
            super().after_report(run_context, extended, None)

    return SweepTuneReportCallback()


def _train_distributed(
    spec: SweepSpec,
    trial: SweepBase,
    work: Path,
    run: TrialRun,
    report: Reporter,
    context: Mapping[str, Any],
    trial_id: str,
) -> dict[str, Any]:
    """Meta-training on Ray Train + DeepSpeed (:func:`trainables.meta_train.run_meta_training`)
    with a stable per-trial run name and storage, so a restarted trial resumes."""
    from liveedit.distributed import DistributedTrainConfig, import_trainables
    from liveedit.editors.liveedit.trainer import TrainConfig

    import_trainables()
    from trainables import meta_train

    train = replace(trial.train, out=work, tracking=TrackingConfig(enabled=False))
    dist = trial.distributed
    if dist.storage is None and context.get("train_storage"):
        dist = replace(dist, storage=Path(context["train_storage"]))
    dist = replace(dist, name=dist.name or f"liveedit-sweep-{spec.name}-{trial_id}")
    values = {f.name: getattr(train, f.name) for f in fields(TrainConfig)}
    config = DistributedTrainConfig(**values, distributed=dist)
    kwargs: dict[str, Any] = {"show_progress": False}
    forwards = "callbacks" in inspect.signature(meta_train.run_meta_training).parameters
    if forwards and _in_tune():
        kwargs["callbacks"] = [_tune_report_callback()]
    result = meta_train.run_meta_training(config, **kwargs)
    run.log_history(result.history)
    tail = result.history[-train.checkpoint_every :]
    loss = sum(h["total"] for h in tail) / len(tail) if tail else math.nan
    summary = {
        "steps": result.steps,
        "checkpoint_loss": loss,
        "best_loss": result.best_loss,
        "stopped": result.stopped,
    }
    if not forwards:  # one report for the whole run (the scheduler sees only its end)
        report(
            {
                ASHA_TIME: result.steps,
                ASHA_METRIC: loss,
                "loss": result.last_loss,
                "best_loss": result.best_loss,
                OBJECTIVE: math.nan,
                "evaluated": 0,
            },
            None,
        )
    return summary


def _in_tune() -> bool:
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        return bool(_in_tune_session())
    except Exception:
        return False


def evaluate_trial(
    name: str, trial: SweepBase, work: Path, options: dict[str, Any], threads: int
) -> dict[int, dict[str, float]]:
    """The lifelong evaluation of a trial's editor (the library's grid with one cell per #edits
    and seed); per T: the five metrics and their average (mean over seeds), their standard
    deviations (``<metric>_std``), and ``n_seeds`` / ``n_records`` / ``n_chunks`` / ``tail``."""
    from liveedit.evaluation.grid import EvalConfig, EvalTrackingConfig, run_eval

    ev = trial.eval
    config = EvalConfig(
        study=name,
        world=Path(trial.train.world),
        split=ev.split,
        datasets=[trial.dataset],
        backbones={trial.backbone_label: Path(trial.train.backbone)},
        editors=[ev.editor],
        editor_options={ev.editor: dict(options)} if options else {},
        edits=list(ev.edits),
        seeds=list(ev.seeds),
        locality=ev.locality,
        max_records=ev.max_records,
        score_batch_size=ev.score_batch_size,
        edit_batch=ev.edit_batch,
        out=work / "eval",
        device=ev.device,
        threads=threads,
        progress=False,
        tracking=EvalTrackingConfig(enabled=False),
    )
    result = run_eval(config, show_progress=False)
    rows: dict[int, dict[str, float]] = {}
    for row in result.table.rows:
        values = {k: float(row.mean[k]) for k in METRIC_KEYS}
        values.update({f"{k}_std": float(row.std[k]) for k in METRIC_KEYS})
        values.update(
            n_seeds=row.n_seeds, n_records=row.n_records, n_chunks=row.n_chunks, tail=row.tail
        )
        rows[int(row.edits)] = values
    return rows


def _evaluate_in_task(
    name: str, trial: SweepBase, weights: dict[str, bytes], options: dict[str, Any], threads: int
) -> dict[int, dict[str, float]]:
    """:func:`evaluate_trial` in a Ray task of its own (the distributed mode): the weights
    travel as bytes, since the task may run on another node than the trial."""
    with tempfile.TemporaryDirectory(prefix="liveedit-eval-") as tmp:
        work = Path(tmp)
        if weights:
            (work / BEST).mkdir()
            for file_name, data in weights.items():
                (work / BEST / file_name).write_bytes(data)
            options = {**options, "weights": str(work / BEST)}
        return evaluate_trial(name, trial, work, options, threads)


def _evaluate_remote(
    name: str, trial: SweepBase, work: Path, options: dict[str, Any]
) -> dict[int, dict[str, float]]:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    dist = trial.distributed
    weights = {}
    if "weights" in options and Path(options["weights"]).is_dir():
        weights = {p.name: p.read_bytes() for p in Path(options["weights"]).iterdir()}
    task = ray.remote(num_cpus=dist.cpus_per_worker, num_gpus=dist.gpus_per_worker)(
        _evaluate_in_task
    ).options(  # not in the trial's placement group (0.1 CPU): its own resources
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None)
    )
    threads = max(1, int(dist.cpus_per_worker))
    return ray.get(task.remote(name, trial, weights, options, threads))


def trainable_parameters(weights: Path) -> int:
    """The number of trainable parameters of a LiveEdit editor (from its safetensors file)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(weights).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                total += math.prod(shape)
    return total


def run_trial(
    context: Mapping[str, Any],
    params: Mapping[str, Any],
    trial_id: str,
    work: Path,
    report: Reporter,
) -> dict[str, Any]:
    """One trial (meta-train if needed, then evaluate); ``report(metrics, checkpoint_folder)``
    receives every intermediate result and the final one. Callable without Tune (tests)."""
    import torch

    spec = from_dict(SweepSpec, context["spec"])
    root = Path(os.environ.get("TUNE_ORIG_WORKING_DIR") or context["root"])
    trial = absolute_trial(resolve_trial(spec, params), root)
    label = trial_label(spec, params)
    dist = trial.distributed.workers > 0
    threads = max(1, int(spec.resources.cpu if not dist else trial.distributed.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    work.mkdir(parents=True, exist_ok=True)
    run = TrialRun(context, trial_id, label, params, trial)
    _save_trial_state(work, run_id=run.run_id, trial_id=trial_id, label=label)
    try:
        start = time.monotonic()
        summary: dict[str, Any] = {"steps": 0, "checkpoint_loss": math.nan}
        options = dict(trial.eval.editor_options)
        if trial.eval.trains:
            if dist:
                summary = _train_distributed(spec, trial, work, run, report, context, trial_id)
            else:
                summary = _train_local(trial, work, run, report, threads)
            options = {"weights": str(work / BEST)}
        train_seconds = time.monotonic() - start
        start = time.monotonic()
        if dist and _in_tune():
            rows = _evaluate_remote(spec.name, trial, work, options)
        else:
            rows = evaluate_trial(spec.name, trial, work, options, threads)
        eval_seconds = time.monotonic() - start
        edits = spec.objective_edits
        if edits not in rows:
            raise RuntimeError(f"the evaluation has no result at T = {edits} (got {sorted(rows)})")
        weights = Path(options["weights"]) if "weights" in options else None
        final: dict[str, Any] = {
            OBJECTIVE: rows[edits][spec.objective.metric],
            "evaluated": 1,
            ASHA_TIME: int(summary.get("steps", 0)),
            ASHA_METRIC: float(summary.get("checkpoint_loss", math.nan)),
            "edits": edits,
            **{k: rows[edits][k] for k in METRIC_KEYS},
            "trainable_params": trainable_parameters(weights) if weights else 0,
            "train_steps": int(summary.get("steps", 0)),
            "best_loss": float(summary.get("best_loss", math.nan)),
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
        }
        run.log_final(rows, final)
        if run.tracker is not None:
            run.tracker.set_tag("liveedit.train_stopped", str(summary.get("stopped", "")))
        report(final, None)
        run.finish("FINISHED")
        return final
    except BaseException:
        run.finish("FAILED")
        raise


def trial_main(config: dict[str, Any], context: dict[str, Any]) -> None:
    """The Tune function trial (see the module docstring)."""
    trial_id = tune.get_context().get_trial_id()
    params = dict(config["params"]) if "params" in config else dict(config)
    work = Path.cwd() / WORK_DIR  # the trial's working directory (Tune changes into it)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restore_work(Path(folder), work)
    run_trial(context, params, trial_id, work, _tune_report)


# ------------------------------------------------------------------------------- the driver


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


class InterruptHook(tune.Callback):
    """TEST HOOK (see the module docstring): SIGUSR1 to this driver once
    ``$LIVEEDIT_SWEEP_INTERRUPT_AFTER`` trials have completed in this run."""

    def __init__(self) -> None:
        self.completed = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.completed += 1
        after = int(os.environ.get(INTERRUPT_ENV, "0") or 0)
        handler = signal.getsignal(signal.SIGUSR1)
        if after and self.completed >= after and callable(handler):
            log.warning("%s=%d: interrupting the sweep (test hook)", INTERRUPT_ENV, after)
            os.kill(os.getpid(), signal.SIGUSR1)


@dataclass
class TrialOutcome:
    trial_id: str
    label: str
    params: dict[str, Any]
    status: str  # completed, stopped, failed, unfinished
    objective: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class SweepResult:
    """What a sweep did (``liveedit sweep`` prints :meth:`summary`)."""

    name: str
    path: str
    experiment: str
    parent_run_id: str | None
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    report_files: list[Path]
    restored: bool
    complete: bool
    seconds: float

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items())) or "none"
        lines = [
            f"sweep {self.name}: {len(self.trials)} trials ({counts}), "
            f"{'resumed, ' if self.restored else ''}"
            f"{'complete' if self.complete else 'INCOMPLETE (re-run the same command to resume)'}"
            f", {self.seconds:.0f} s",
        ]
        for t in sorted(self.trials, key=lambda t: t.label):
            value = "-" if t.objective is None else f"{100 * t.objective:.2f}"
            lines.append(f"  {t.status:10s} {value:>7s}  {t.label}  [{t.trial_id}]")
            if t.error:
                lines.append(f"             {t.error.splitlines()[-1][:160]}")
        if self.best is not None:
            lines.append(f"best: {self.best.label} -> {100 * (self.best.objective or 0):.2f}")
        lines.append(f"{'tune':12s} {self.path}")
        if self.parent_run_id:
            lines.append(f"{'mlflow run':12s} {self.parent_run_id} (experiment {self.experiment})")
        if self.report_files:
            lines.append(f"{'report':12s} {self.report_files[0].parent}")
            lines += [f"  {p.name}" for p in self.report_files]
        return "\n".join(lines)


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    if spec.base.distributed.workers:
        return {"cpu": 0.1}
    out = {"cpu": spec.resources.cpu}
    if spec.resources.gpu:
        out["gpu"] = spec.resources.gpu
    return out


def max_concurrency(spec: SweepSpec, resources: Mapping[str, float]) -> int:
    """Trials at once: ``concurrency`` if set, else as many as the cluster's current CPUs and
    GPUs hold (at least 1; on an autoscaling cluster set ``concurrency``)."""
    if spec.concurrency:
        return spec.concurrency
    dist = spec.base.distributed
    if dist.workers:
        need_cpu = 0.1 + dist.workers * dist.cpus_per_worker
        need_gpu = dist.workers * dist.gpus_per_worker
    else:
        need_cpu, need_gpu = spec.resources.cpu, spec.resources.gpu
    limits = []
    if need_cpu > 0:
        limits.append(int(resources.get("CPU", 0.0) / need_cpu + 1e-9))
    if need_gpu > 0:
        limits.append(int(resources.get("GPU", 0.0) / need_gpu + 1e-9))
    n = min(limits) if limits else 1
    if n < 1:
        log.warning(
            "the cluster holds %s now; a trial needs %.2f CPU and %.2f GPU: trials wait for "
            "the autoscaler (set concurrency=N on autoscaling clusters)",
            dict(resources),
            need_cpu,
            need_gpu,
        )
    return max(1, n)


class SweepOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a trial stopped by the scheduler before its evaluation
    (objective NaN in its last result) was *pruned*, not completed with a NaN value."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        value = (result or {}).get(self.metric)
        if isinstance(value, float) and math.isnan(value):
            result = {k: v for k, v in (result or {}).items() if k != self.metric}
        super().on_trial_complete(trial_id, result=result, error=error)


def _searcher(spec: SweepSpec) -> tuple[Any, dict[str, Any] | None]:
    if spec.searcher.type == "grid":
        return None, {"params": tune.grid_search(grid_points(spec))}
    import optuna

    s = spec.searcher
    if s.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    search = SweepOptunaSearch(
        space=DefineByRun(spec), metric=OBJECTIVE, mode=spec.objective.mode, sampler=sampler
    )
    return search, None


def _scheduler(spec: SweepSpec) -> Any:
    if spec.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    trials = [resolve_trial(spec, p) for p in candidate_points(spec)]
    max_t = max(t.train.steps for t in trials)
    grace = spec.scheduler.grace_period or min(t.train.checkpoint_every for t in trials)
    return ASHAScheduler(
        time_attr=ASHA_TIME,
        metric=ASHA_METRIC,
        mode="min",
        max_t=max_t,
        grace_period=max(1, min(grace, max_t)),
        reduction_factor=spec.scheduler.reduction_factor,
        brackets=spec.scheduler.brackets,
        stop_last_trials=False,
    )


def _outcomes(spec: SweepSpec, grid: Any) -> list[TrialOutcome]:
    out = []
    for result in grid:
        metrics = dict(result.metrics or {})
        config = dict(result.config or {})
        params = dict(config.get("params", config))
        trial_id = str(metrics.get("trial_id") or str(result.path).rstrip("/").rsplit("_", 1)[-1])
        objective = metrics.get(OBJECTIVE)
        if result.error is not None:
            status, objective = "failed", None
        elif metrics.get("evaluated") == 1:
            status = "completed"
        else:
            status, objective = "stopped", None
        if objective is not None and isinstance(objective, float) and math.isnan(objective):
            objective = None
        out.append(
            TrialOutcome(
                trial_id=trial_id,
                label=trial_label(spec, params),
                params=params,
                status=status,
                objective=None if objective is None else float(objective),
                metrics=metrics,
                error="" if result.error is None else str(result.error),
            )
        )
    return out


def _expected_trials(spec: SweepSpec) -> int:
    if spec.searcher.type == "grid":
        return len(grid_points(spec)) * spec.num_samples
    return spec.num_samples


def _connect(spec: SweepSpec) -> bool:
    import ray

    if ray.is_initialized():
        return False
    from .cluster import connect

    need = trial_resources(spec).get("cpu", 1.0)
    print(f"Ray: {connect(spec.cluster, need_cpus=need)}", flush=True)
    return True


def run_sweep(spec: SweepSpec, *, show_progress: bool = True) -> SweepResult:
    """Run (or resume) a sweep; see the module docstring."""
    import ray
    import yaml

    from liveedit.sweeps.report import report_dir, write_report_from_mlflow

    from .cluster import ship_by_value

    start = time.monotonic()
    # every reported checkpoint snapshots the experiment state; that is intended here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    root = Path.cwd()
    checked = absolute_spec(spec, root)
    problems = check_inputs(checked)
    if problems:
        raise ConfigError(problems, f"sweep {spec.name}")
    # trials resolve relative paths against their own copy of the working directory
    spec = replace(spec, storage=checked.storage)
    path = sweep_path(spec)
    digest = spec_hash(spec)
    uri = resolve_uri(spec.tracking.uri)
    state = json.loads(_read_text(f"{path}/{STATE_FILE}") or "{}")
    restorable = tune.Tuner.can_restore(path)
    if restorable and state.get("spec_hash") not in (None, digest):
        raise ConfigError(
            [
                f"{path} holds the sweep {spec.name!r} of another spec (hash "
                f"{state['spec_hash']}, this one {digest}); re-run with that spec to resume "
                f"it, give this one another name (name=...), or delete {path} to start over"
            ],
            f"sweep {spec.name}",
        )
    started = _connect(spec)
    parent: SweepParent | None = None
    try:
        ship_by_value(sys.modules[__name__])
        same_store = state.get("tracking_uri") == uri
        parent = SweepParent(
            spec,
            uri,
            digest,
            path,
            state.get("parent_run_id") if restorable and same_store else None,
            root,
        )
        _write_text(
            f"{path}/{STATE_FILE}",
            json.dumps(
                {
                    "name": spec.name,
                    "spec_hash": digest,
                    "parent_run_id": parent.run_id,
                    "tracking_uri": uri,
                    "experiment": spec.experiment,
                },
                indent=1,
            ),
        )
        parent.log_artifact_text("spec.yaml", yaml.safe_dump(to_dict(spec), sort_keys=False))
        context = {
            "name": spec.name,
            "spec": to_dict(spec),
            "root": str(root),
            "tracking": {
                "uri": uri,
                "experiment": spec.experiment,
                "enabled": spec.tracking.enabled,
            },
            "parent_run_id": parent.run_id,
            "sweep_path": path,
            "train_storage": "" if _is_uri(path) else f"{path}/train",
        }
        trainable = tune.with_resources(
            tune.with_parameters(trial_main, context=context), trial_resources(spec)
        )
        if restorable:
            print(f"resuming the sweep at {path}", flush=True)
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        else:
            search, param_space = _searcher(spec)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=search,
                    scheduler=_scheduler(spec),
                    num_samples=spec.num_samples,
                    max_concurrent_trials=max_concurrency(spec, ray.cluster_resources()),
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                    time_budget_s=spec.time_budget_s or None,
                ),
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=spec.storage,
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[InterruptHook()],
                    verbose=1 if show_progress else 0,
                ),
            )
        grid = tuner.fit()
        outcomes = _outcomes(spec, grid)
        finished = grid.num_terminated + grid.num_errors
        complete = finished == len(grid) and (
            bool(spec.time_budget_s) or len(grid) >= _expected_trials(spec)
        )
        done = [t for t in outcomes if t.status == "completed" and t.objective is not None]
        best = None
        if done:
            pick = max if spec.objective.mode == "max" else min
            best = pick(done, key=lambda t: t.objective or 0.0)
        files: list[Path] = []
        if parent.tracker is not None:
            if complete:
                parent.mark_children(outcomes, spec.experiment)
            tracker = parent.tracker
            tracker.log_metrics(
                {
                    "trials": len(outcomes),
                    **{f"trials_{k}": v for k, v in _count(outcomes).items()},
                },
                0,
            )
            if best is not None:
                tracker.log_metrics({"best_objective": best.objective or 0.0}, 0)
                tracker.set_tag("liveedit.best_trial", best.trial_id)
                tracker.set_tag("liveedit.best_label", best.label)
                tracker.set_tag("liveedit.best_params", json.dumps(best.params, default=str))
                best_config = to_dict(resolve_trial(spec, best.params))
                parent.log_artifact_text(
                    "best_config.yaml", yaml.safe_dump(best_config, sort_keys=False)
                )
            tracker.flush()
            out = report_dir(spec.name, None if _is_uri(path) else Path(path))
            files = write_report_from_mlflow(uri, spec.experiment, out, run_id=parent.run_id)
            for file in files:
                tracker.log_artifact(file, "report")
            tracker.set_tag("liveedit.interrupted", str(not complete).lower())
            parent.finish("FINISHED" if complete else "KILLED")
        return SweepResult(
            name=spec.name,
            path=path,
            experiment=spec.experiment,
            parent_run_id=parent.run_id,
            trials=outcomes,
            best=best,
            report_files=files,
            restored=restorable,
            complete=complete,
            seconds=time.monotonic() - start,
        )
    except BaseException:
        if parent is not None:
            parent.finish("FAILED")
        raise
    finally:
        if started:
            ray.shutdown()


def _count(outcomes: list[TrialOutcome]) -> dict[str, int]:
    counts = {"completed": 0, "stopped": 0, "failed": 0}
    for t in outcomes:
        counts[t.status] = counts.get(t.status, 0) + 1
    return counts


__all__ = [
    "INTERRUPT_ENV",
    "InterruptHook",
    "SweepResult",
    "TrialOutcome",
    "TrialRun",
    "absolute_spec",
    "absolute_trial",
    "evaluate_trial",
    "max_concurrency",
    "restore_work",
    "run_sweep",
    "run_trial",
    "trial_main",
    "trial_resources",
]
