"""LiveEdit meta-training on Ray Train with DeepSpeed ZeRO (``liveedit train --workers N``).

A :class:`ray.train.torch.TorchTrainer` runs :func:`train_loop_per_worker` on N workers. Each
worker loads the frozen backbone, builds the library's
:class:`~liveedit.editors.liveedit.modules.LiveEditModules` and hands them, with the trainer's
torch AdamW, to ``deepspeed.initialize`` (ZeRO stage ``distributed.zero_stage``, 0 to 3; bf16 on
GPU, fp32 on CPU; ``deepspeed.init_distributed`` reuses the process group Ray Train set up: gloo
on CPU, NCCL on GPU). A step is the library's
:func:`~liveedit.editors.liveedit.training.build_training_batch` +
:func:`~liveedit.editors.liveedit.training.training_step` on this worker's share of the step's
records (:func:`~liveedit.distributed.shard_indices` of the single-process
:func:`~liveedit.editors.liveedit.trainer.sample_indices`), then ``engine.backward`` /
``engine.step`` (DeepSpeed averages the gradients and clips them as the single-process trainer
does). Nothing of LiveEdit is re-implemented here.

Every ``checkpoint_every`` steps (and at the end) every rank writes
``engine.save_checkpoint`` into its own temporary folder and calls ``ray.train.report(metrics,
checkpoint=...)`` with the same ``checkpoint_dir_name``; Ray Train merges the ranks' files into
one checkpoint folder ``<storage>/<name>/step_NNNNNNNN``:

```
deepspeed/ckpt/...      DeepSpeed's model and ZeRO optimizer shards (one file per rank)
editor/                 the current editor weights (safetensors + config; rank 0)
best/                   the best weights so far by checkpoint loss (safetensors + config)
state.json              step, best loss and step, plateau counter, MLflow run id, sessions,
                        steps/s since the previous checkpoint
history.json            every step's losses so far
```

Resuming: Ray Train V2 resumes a run re-launched with the same ``(storage_path, name)``; the name
is derived from ``out`` (:func:`~liveedit.distributed.run_name`), never a timestamp, so
re-running the same command continues from the latest checkpoint (``ray.train.get_checkpoint`` +
``engine.load_checkpoint``), as does a restart after a worker failure (``FailureConfig``). The
MLflow run id travels in ``state.json``, so a resumed run logs into the same MLflow run (rank 0
logs the params once and every loss component per step). Ray keeps the ``keep_checkpoints``
best checkpoints by loss plus the latest; at the end the driver copies the latest checkpoint's
``best/`` to ``<out>/best`` (what ``liveedit eval`` loads) and writes ``<out>/train_result.json``.

DeepSpeed's checkpoint files are its own ``torch.save`` pickles (DeepSpeed loads them with
``weights_only=False``): they are written and read only by the run itself in its storage folder.
The exported editor weights are safetensors + JSON, like the single-process trainer's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from liveedit.distributed import DistributedTrainConfig

DS_DIR = "deepspeed"
DS_TAG = "ckpt"
EDITOR_DIR = "editor"
BEST_DIR = "best"
STATE = "state.json"
HISTORY = "history.json"


# ------------------------------------------------------------------------------- the worker


def _step_module(modules: Any, backbone: Any) -> Any:
    """The model handed to DeepSpeed: a module whose ``forward`` is the library's training step
    (it returns ℓ_total and keeps the step's :class:`LossBreakdown` in ``last``) and whose
    parameters are exactly the LiveEdit modules' (same names as ``LiveEditModules.state_dict()``).

    - The submodules of ``modules`` (f_eg, f̂fe, f̄fe) are registered directly, so parameter
      names (and DeepSpeed's checkpoints) match ``LiveEditModules.state_dict()``.
    - The frozen backbone is held outside the module tree: DeepSpeed neither partitions nor
      checkpoints it.
    """
    import torch

    from liveedit.editors.liveedit.training import training_step

    class LiveEditStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, child in modules.named_children():
                self.add_module(name, child)
            if any(True for _ in modules.parameters(recurse=False)):
                raise TypeError("LiveEditModules holds parameters outside its submodules")
            self._held = (modules, backbone)  # a tuple: not registered as submodules
            self.last: Any = None

        def forward(self, tb: Any, generator: torch.Generator) -> torch.Tensor:
            modules, backbone = self._held
            self.last = training_step(backbone, modules, tb, generator)
            return self.last.total

    return LiveEditStep()


def _editor_state(engine: Any, rank: int) -> dict[str, Any] | None:
    """The editor's whole weights as fp32 CPU tensors on rank 0 (``None`` elsewhere). Under ZeRO
    0-2 every rank holds them whole; under ZeRO-3 each rank holds a partition, so every rank
    takes part in gathering them (a collective: call it on all ranks)."""
    import deepspeed

    module = engine.module
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]  # ZeRO-3 partitioned
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
        if rank != 0:
            return None
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def _save_weights(cfg: Any, state: dict[str, Any], directory: Path) -> None:
    from liveedit.editors.liveedit.editor import save_editor_weights
    from liveedit.editors.liveedit.modules import LiveEditModules

    export = LiveEditModules(cfg)
    export.load_state_dict(state)
    save_editor_weights(export, directory)


def _all_mean(values: list[float], device: Any) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of a meta-training run (see the module docstring)."""
    import deepspeed
    import ray.train
    import torch
    from safetensors.torch import load_file

    from liveedit.backbones import load_backbone
    from liveedit.config import flatten
    from liveedit.data.loaders import load_records
    from liveedit.distributed import deepspeed_config, shard_indices, step_seed
    from liveedit.editors.liveedit.modules import LiveEditModules
    from liveedit.editors.liveedit.trainer import FAMILY_FORMAT, sample_indices
    from liveedit.editors.liveedit.training import build_training_batch
    from liveedit.tracking import Tracker

    config: DistributedTrainConfig = loop_config["config"]
    dist_cfg = config.distributed
    start_time = time.monotonic()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    gpu = dist_cfg.gpus_per_worker > 0
    torch.set_num_threads(config.threads or max(1, int(dist_cfg.cpus_per_worker)))
    torch.set_flush_denormal(True)
    device = ray.train.torch.get_device() if gpu else torch.device("cpu")

    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
    backbone = load_backbone(config.backbone, **({"dtype": torch.bfloat16} if gpu else {}))
    backbone = backbone.to(device).freeze()
    editor_cfg = replace(config.editor, d=backbone.hidden_size, n_vision=backbone.num_vision_tokens)
    config = replace(config, editor=editor_cfg)
    fmt = FAMILY_FORMAT[config.family]
    records = load_records(
        fmt, config.world / config.family / "train.json", config.world / "images"
    ).records

    torch.manual_seed(config.seed)  # the same initial weights on every rank (and DeepSpeed
    modules = LiveEditModules(editor_cfg)  # broadcasts rank 0's anyway)
    optimizer = torch.optim.AdamW(
        modules.parameters(), lr=editor_cfg.lr, weight_decay=config.weight_decay
    )
    engine, _, _, _ = deepspeed.initialize(
        model=_step_module(modules, backbone),
        optimizer=optimizer,
        config=deepspeed_config(config, world, gpu),
    )

    state: dict[str, Any] = {
        "step": 0,
        "best_loss": math.inf,
        "best_step": -1,
        "stale": 0,
        "run_id": None,
        "workers": world,
        "zero_stage": dist_cfg.zero_stage,
        "sessions": [],
    }
    history: list[dict[str, float]] = []
    best_state: dict[str, Any] | None = None
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as folder:
            folder = Path(folder)
            saved = json.loads((folder / STATE).read_text())
            if saved["workers"] != world:
                raise ValueError(
                    f"checkpoint {folder.name} was written by {saved['workers']} workers; "
                    f"resume it with distributed.workers={saved['workers']} (DeepSpeed's ZeRO "
                    "shards are per worker) or start a new out folder"
                )
            state.update(saved)
            history = json.loads((folder / HISTORY).read_text())
            loaded, _ = engine.load_checkpoint(str(folder / DS_DIR), tag=DS_TAG)
            if loaded is None:
                raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint to resume from")
            if rank == 0 and (folder / BEST_DIR).is_dir():
                best_state = load_file(str(folder / BEST_DIR / "liveedit.safetensors"))
    state["sessions"] = [*state["sessions"], {"start_step": state["step"], "workers": world}]

    tracker = None
    if rank == 0:
        tracker = Tracker(config.tracking, run_name=Path(config.out).name, run_id=state["run_id"])
        state["run_id"] = tracker.run_id
        if resume is None:
            tracker.log_params(flatten(config))
            tracker.set_tag("liveedit.out", str(config.out))
            tracker.set_tag("liveedit.trainer", "ray-deepspeed")
    bar = None
    if rank == 0 and loop_config.get("show_progress", True):
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(desc="meta-train", total=config.steps)
        bar.update(state["step"])

    marker = Path(loop_config["fail_marker"]) if loop_config.get("fail_marker") else None
    window: list[float] = []
    window_seconds = 0.0
    stopped = "steps"
    try:
        engine.train()
        while state["step"] < config.steps:
            step = state["step"]
            if (
                step == dist_cfg.fail_at_step
                and rank == world - 1
                and marker is not None
                and not marker.exists()
            ):  # TEST HOOK: this worker dies once, mid-run, after Ray has registered every
                # checkpoint reported so far (so the recovery point is deterministic)
                ray.train.get_all_reported_checkpoints(timeout_s=120)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"worker {rank} killed at step {step}\n")
                os._exit(1)
            began = time.perf_counter()
            idx = sample_indices(len(records), config.batch_size, step, config.seed)
            mine = shard_indices(idx, rank, world)
            tb = build_training_batch(backbone, [records[i] for i in mine])
            generator = torch.Generator().manual_seed(step_seed(config.seed, step, rank))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu):
                total = engine(tb, generator)
            engine.backward(total)
            engine.step()
            local = engine.module.last.as_floats()
            names = sorted(local)
            out_of_time = bool(
                config.max_minutes and time.monotonic() - start_time > 60 * config.max_minutes
            )
            means = _all_mean([local[k] for k in names] + [float(out_of_time)], device)
            values = dict(zip(names, means[:-1], strict=True))
            out_of_time = means[-1] > 0  # any rank out of time: all stop together
            history.append({"step": step, **values})
            window.append(values["total"])
            state["step"] = step + 1
            if tracker is not None:
                tracker.log_metrics(values, step)
            if bar is not None:
                bar.update(1)
            window_seconds += time.perf_counter() - began

            if (
                state["step"] % config.checkpoint_every
                and state["step"] != config.steps
                and not out_of_time
            ):
                continue
            mean = sum(window) / len(window)
            state["checkpoint_loss"] = mean
            # training throughput since the last checkpoint (checkpoint I/O excluded)
            state["steps_per_s"] = len(window) / window_seconds if window_seconds else math.nan
            window, window_seconds = [], 0.0
            current = _editor_state(engine, rank)
            if mean < state["best_loss"] - config.min_delta:
                state.update(best_loss=mean, best_step=state["step"], stale=0)
                best_state = current
            else:
                state["stale"] += 1
            if config.patience and state["stale"] >= config.patience:
                stopped = "plateau"
            elif out_of_time:
                stopped = "time"
            if tracker is not None:
                tracker.log_metrics(
                    {"checkpoint_loss": mean, "steps_per_s": state["steps_per_s"]}, state["step"]
                )
                tracker.flush()
            _report(engine, config, {**state, "stopped": stopped}, history, current, best_state)
            if stopped != "steps":
                break
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    finally:
        if bar is not None:
            bar.close()
    if tracker is not None:
        tracker.finish()


def _report(
    engine: Any,
    config: DistributedTrainConfig,
    state: dict[str, Any],
    history: list[dict[str, float]],
    current: dict[str, Any] | None,
    best_state: dict[str, Any] | None,
) -> None:
    """Write this rank's part of a checkpoint and report it (every rank: a collective);
    ``current`` (the weights now) is given on rank 0 only."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="liveedit-ckpt-") as tmp:
        folder = Path(tmp)
        engine.save_checkpoint(str(folder / DS_DIR), tag=DS_TAG)
        if current is not None:  # rank 0
            _save_weights(config.editor, current, folder / EDITOR_DIR)
            if best_state is not None:
                _save_weights(config.editor, best_state, folder / BEST_DIR)
            (folder / STATE).write_text(json.dumps(state, indent=2))
            (folder / HISTORY).write_text(json.dumps(history))
        metrics = {
            "step": state["step"],
            "checkpoint_loss": state["checkpoint_loss"],
            "best_loss": state["best_loss"],
            "best_step": state["best_step"],
            "loss": history[-1]["total"],
            "steps_per_s": state["steps_per_s"],
        }
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
            checkpoint_dir_name=f"step_{state['step']:08d}",
        )


# ------------------------------------------------------------------------------- the driver


def absolute_uri(uri: str) -> str:
    """An MLflow tracking URI with a relative local path (``sqlite:///mlflow.db``, ``./mlruns``)
    made absolute against this process's working directory."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith("/") and not path.startswith(":memory:"):
            return f"sqlite:///{Path(path).resolve()}"
        return uri
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).expanduser().resolve())
    return uri


def _absolute(config: DistributedTrainConfig) -> DistributedTrainConfig:
    """Paths made absolute and the MLflow URI resolved on the driver: Ray Train workers run in
    their own working directory."""
    from liveedit.tracking import resolve_uri

    def absolute(path: Path) -> Path:
        return Path(path).expanduser().resolve()

    tracking = replace(config.tracking, uri=absolute_uri(resolve_uri(config.tracking.uri)))
    dist_cfg = config.distributed
    if dist_cfg.storage is not None and "://" not in str(dist_cfg.storage):
        dist_cfg = replace(dist_cfg, storage=absolute(dist_cfg.storage))
    return replace(
        config,
        world=absolute(config.world),
        backbone=absolute(config.backbone),
        out=absolute(config.out),
        tracking=tracking,
        distributed=dist_cfg,
    )


def check_inputs(config: DistributedTrainConfig) -> None:
    """What the single-process trainer checks at start, checked on the driver before any
    cluster work: the backbone directory, the layer l_e, the training records."""
    from liveedit.backbones.base import inspect_backbone_dir
    from liveedit.data.loaders import load_records
    from liveedit.editors.liveedit.trainer import FAMILY_FORMAT

    found = inspect_backbone_dir(config.backbone)
    layers = found.info.get("num_layers") or (found.config.get("text_config") or {}).get(
        "num_hidden_layers"
    )
    if layers is not None and not 0 <= config.editor.layer < int(layers):
        raise ValueError(
            f"editor.layer: {config.editor.layer} is outside the backbone's {layers} layers "
            f"(allowed 0..{int(layers) - 1})"
        )
    data = load_records(
        FAMILY_FORMAT[config.family],
        config.world / config.family / "train.json",
        config.world / "images",
    )
    if len(data.records) < config.batch_size:
        raise ValueError(
            f"{data.file}: {len(data.records)} records < batch_size {config.batch_size}"
        )


def build_trainer(
    config: DistributedTrainConfig,
    *,
    show_progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> Any:
    """The :class:`ray.train.torch.TorchTrainer` of a run (``config`` already absolute);
    ``callbacks`` are Ray Train ``UserCallback``s (e.g. Tune's ``TuneReportCallback`` when a
    Tune trial runs the trainer)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from liveedit.distributed import run_name, storage_path

    from .cluster import ship_by_value

    ship_by_value(sys.modules[__name__])
    dist_cfg = config.distributed
    gpu = dist_cfg.gpus_per_worker > 0
    name = dist_cfg.name or run_name(config.out)
    storage = storage_path(config)
    marker = ""
    if dist_cfg.fail_at_step >= 0:
        local = storage if "://" not in storage else str(config.out)
        marker = str(Path(local) / name / f".liveedit-test-failed-at-step-{dist_cfg.fail_at_step}")
    resources = {"CPU": dist_cfg.cpus_per_worker}
    if gpu:
        resources["GPU"] = dist_cfg.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "show_progress": show_progress, "fail_marker": marker},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=dist_cfg.workers, use_gpu=gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=dist_cfg.max_failures),
            callbacks=list(callbacks) or None,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.keep_checkpoints,
                checkpoint_score_attribute="checkpoint_loss",
                checkpoint_score_order="min",
            ),
        ),
    )


def run_meta_training(
    config: DistributedTrainConfig,
    *,
    show_progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> Any:
    """Meta-train LiveEdit on Ray Train + DeepSpeed (resuming the run of ``config.out`` if it has
    checkpoints); returns the library's
    :class:`~liveedit.editors.liveedit.trainer.TrainResult` (``history`` holds every step of the
    run, across resumes). ``callbacks``: Ray Train ``UserCallback``s for the trainer's
    ``RunConfig`` (each checkpoint report carries ``step``, ``checkpoint_loss``, ``best_loss``,
    ``best_step`` and ``loss``)."""
    from liveedit.config import from_dict, save_config, to_dict
    from liveedit.editors.liveedit.trainer import TrainResult

    from .cluster import connect

    start = time.monotonic()
    config = from_dict(DistributedTrainConfig, to_dict(config))  # validated completely
    config = _absolute(config)
    check_inputs(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out)

    dist_cfg = config.distributed
    connect(dist_cfg.cluster, need_cpus=dist_cfg.workers * dist_cfg.cpus_per_worker)
    result = build_trainer(config, show_progress=show_progress, callbacks=callbacks).fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray Train run of {out} reported no checkpoint")
    with result.checkpoint.as_directory() as folder:
        folder = Path(folder)
        state = json.loads((folder / STATE).read_text())
        history = json.loads((folder / HISTORY).read_text())
        if (folder / BEST_DIR).is_dir():
            tmp = out / (BEST_DIR + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(folder / BEST_DIR, tmp)
            shutil.rmtree(out / BEST_DIR, ignore_errors=True)
            tmp.rename(out / BEST_DIR)
    stopped = state.get("stopped", "steps")
    summary = {
        **state,
        "checkpoint": result.checkpoint.path,
        "storage": result.path,
    }
    (out / "train_result.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(
        steps=state["step"],
        best_loss=state["best_loss"],
        best_step=state["best_step"],
        last_loss=history[-1]["total"] if history else math.nan,
        stopped=stopped,
        seconds=time.monotonic() - start,
        out=out,
        history=history,
    )


__all__ = [
    "absolute_uri",
    "build_trainer",
    "check_inputs",
    "run_meta_training",
    "train_loop_per_worker",
]
