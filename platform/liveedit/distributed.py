"""Typed settings and pure helpers of the Ray platform (``trainables/``; DESIGN §3).

The library never imports Ray at module level (DESIGN §1): this module holds only what the Ray
entry points need from the library side — validated config sections, the DeepSpeed config they
build, how a step's records are sharded over workers, stable run names — so that
``liveedit train --workers N`` and ``liveedit eval --actors N`` load and check their whole
configuration (YAML + dotted overrides, :mod:`liveedit.config`) before any cluster starts.

- :class:`DistributedTrainConfig` = :class:`~liveedit.editors.liveedit.trainer.TrainConfig` plus a
  ``distributed`` section (:class:`DistributedConfig`): ``distributed.workers=2
  distributed.zero_stage=2`` on the command line, or a ``distributed:`` mapping in the YAML file.
- :class:`DistributedEvalConfig` = :class:`~liveedit.evaluation.grid.EvalConfig` plus a
  ``distributed`` section (:class:`ActorPoolConfig`).

Test hooks (documented, off by default): ``distributed.fail_at_step`` makes one training worker
die once at that step (the run must recover through Ray Train's ``FailureConfig``);
``distributed.crash_cell`` makes the evaluation actor that runs that cell die on its first
attempt (the actor is restarted and the cell retried).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liveedit.editors.liveedit.trainer import TrainConfig
from liveedit.evaluation.grid import EvalConfig

RAY_DIR = "ray"
"""Default Ray Train storage folder under a run's ``out`` (checkpoints, Ray's run state)."""


# ------------------------------------------------------------------------------- cluster


@dataclass
class ClusterConfig:
    """Which Ray cluster a job runs on.

    ``address`` empty: ``$RAY_ADDRESS`` if set, otherwise a new local Ray instance with
    ``num_cpus`` CPUs (0: the machine's CPUs, at least as many as the job asks for). A non-empty
    address (``auto``, ``ray://host:10001``, ``host:6379``) connects to a running cluster; token
    authentication (Ray's default) needs the cluster's token: ``$RAY_AUTH_TOKEN``,
    ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (then ``RAY_AUTH_MODE=token`` is set for
    you), or ``RAY_AUTH_MODE=disabled`` for a cluster started without authentication."""

    address: str = ""
    num_cpus: int = field(default=0, metadata={"min": 0})


# ------------------------------------------------------------------------------- training


@dataclass
class DistributedConfig:
    """Ray Train + DeepSpeed settings of a meta-training run (``liveedit train --workers N``).

    Every worker loads the frozen backbone and takes ``batch_size / workers`` records of each
    step's batch (:func:`shard_indices`); DeepSpeed averages the gradients (ZeRO ``zero_stage``:
    0 plain data parallel, 1 optimizer states partitioned, 2 + gradients partitioned, 3 + the
    editor's parameters partitioned and gathered per submodule around its forward and backward).
    """

    workers: int = field(default=0, metadata={"min": 0})
    """Ray Train workers (0: the single-process trainer, not this section)."""
    gpus_per_worker: float = field(default=0.0, metadata={"min": 0.0})
    """GPUs per worker (0: CPU training in fp32 with gloo; > 0: CUDA, bf16 and NCCL)."""
    cpus_per_worker: float = field(default=1.0, metadata={"min": 0.0})
    zero_stage: int = field(default=2, metadata={"min": 0, "max": 3})
    zero3_persistence_threshold: int = field(default=100_000, metadata={"min": 0})
    """ZeRO-3 only: parameters with fewer elements stay whole on every rank (DeepSpeed's
    ``stage3_param_persistence_threshold``; its default 1e5). A small editor (d_m 64 on a tiny
    twin) is then not partitioned at all; 0 partitions every parameter."""
    storage: Path | None = None
    """Ray Train ``storage_path`` (default ``<out>/ray``); a shared path (NFS, s3://...) on a
    multi-node cluster."""
    name: str = ""
    """Ray Train run name (default derived from ``out``: :func:`run_name`). Never a timestamp:
    re-running the same command resumes the same run."""
    max_failures: int = field(default=3, metadata={"min": -1})
    """Worker failures to recover from (from the latest checkpoint); -1: no limit."""
    fail_at_step: int = field(default=-1, metadata={"min": -1})
    """TEST HOOK: the last worker dies (``os._exit``) once when it reaches this step (-1: off),
    after Ray has registered the checkpoints reported so far. "Once" is remembered by a marker
    file in the run's storage folder."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


@dataclass
class DistributedTrainConfig(TrainConfig):
    """A meta-training run on Ray Train (see :class:`DistributedConfig`)."""

    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> list[str]:
        problems: list[str] = []
        dist = self.distributed
        if dist.workers < 1:
            problems.append(
                f"distributed.workers: {dist.workers}; the Ray trainer needs >= 1 worker "
                "(0 is the single-process `liveedit train`)"
            )
        elif self.batch_size % dist.workers or self.batch_size // dist.workers < 2:
            problems.append(
                f"batch_size: {self.batch_size} must be a multiple of distributed.workers "
                f"({dist.workers}) with >= 2 records per worker"
            )
        if dist.gpus_per_worker and dist.gpus_per_worker != int(dist.gpus_per_worker):
            problems.append(
                f"distributed.gpus_per_worker: {dist.gpus_per_worker}; a training worker needs "
                "whole GPUs (NCCL runs one rank per device)"
            )
        if dist.gpus_per_worker == 0 and dist.cpus_per_worker == 0:
            problems.append("distributed.cpus_per_worker: 0 with no GPU; give each worker a CPU")
        return problems


def run_name(out: str | Path) -> str:
    """A stable Ray run name for an output folder: its name plus a short hash of its absolute
    path (two runs named ``exp`` in different folders do not collide; no timestamp)."""
    path = Path(out).expanduser().resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name) or "run"
    return f"liveedit-train-{safe}-{digest}"


def storage_path(config: DistributedTrainConfig) -> str:
    """Ray Train's ``storage_path``: ``distributed.storage`` or ``<out>/ray`` (absolute)."""
    storage = config.distributed.storage
    if storage is not None and "://" in str(storage):
        return str(storage)
    path = Path(storage) if storage is not None else Path(config.out) / RAY_DIR
    return str(path.expanduser().resolve())


def shard_indices(indices: list[int], rank: int, world: int) -> list[int]:
    """The records of a global batch that worker ``rank`` of ``world`` trains on: a contiguous
    slice (every worker gets ``len(indices) / world`` records; the union is the batch)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    if len(indices) % world:
        raise ValueError(f"{len(indices)} records do not split over {world} workers")
    per = len(indices) // world
    return indices[rank * per : (rank + 1) * per]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of a worker's ``torch.Generator`` at ``step`` (rank 0 uses the single-process
    trainer's seed, so a 1-worker run draws the same random splits)."""
    return seed * 1_000_003 + step + rank * 7_919_000_003


def deepspeed_config(config: DistributedTrainConfig, world: int, gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config of a run: global batch = ``batch_size`` over ``world`` workers (one
    micro-batch each, no accumulation), gradient clipping as the single-process trainer, ZeRO
    ``zero_stage`` (stage 3 with ``zero3_persistence_threshold``); bf16 on GPU, fp32 on CPU. The
    optimizer is the trainer's torch AdamW, passed to ``deepspeed.initialize``
    (``zero_allow_untested_optimizer``), so DeepSpeed builds none."""
    stage = config.distributed.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        zero["overlap_comm"] = False
        zero["contiguous_gradients"] = True
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = config.distributed.zero3_persistence_threshold
    return {
        "train_batch_size": config.batch_size,
        "train_micro_batch_size_per_gpu": config.batch_size // world,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(config.grad_clip),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bool(gpu)},
        "fp16": {"enabled": False},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


# ------------------------------------------------------------------------------- evaluation


@dataclass
class ActorPoolConfig:
    """Ray actors of a sharded evaluation grid (``liveedit eval --actors N``).

    Each actor holds one backbone replica (loaded once, reloaded only when it moves to another
    backbone of the grid) and evaluates many cells with
    :func:`~liveedit.evaluation.grid.evaluate_cell`; a killed actor is restarted and its cell
    retried (``max_restarts`` / ``max_task_retries``)."""

    actors: int = field(default=0, metadata={"min": 0})
    """Evaluation actors (0: the single-process grid, not this section)."""
    gpus_per_actor: float = field(default=0.0, metadata={"min": 0.0})
    """GPUs per actor; fractional values pack several small backbones on one GPU."""
    cpus_per_actor: float = field(default=1.0, metadata={"min": 0.0})
    max_restarts: int = field(default=3, metadata={"min": -1})
    max_task_retries: int = field(default=3, metadata={"min": -1})
    crash_cell: str = ""
    """TEST HOOK: the actor evaluating the cell whose ``Cell.describe()`` equals this string
    dies (``os._exit``) on its first attempt, before evaluating ('' = off)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


@dataclass
class DistributedEvalConfig(EvalConfig):
    """An evaluation grid whose cells run on Ray actors (see :class:`ActorPoolConfig`)."""

    distributed: ActorPoolConfig = field(default_factory=ActorPoolConfig)

    def validate(self) -> list[str]:
        problems = super().validate()
        pool = self.distributed
        if pool.actors < 1:
            problems.append(
                f"distributed.actors: {pool.actors}; the actor grid needs >= 1 actor "
                "(0 is the single-process `liveedit eval`)"
            )
        if pool.gpus_per_actor > 1 and pool.gpus_per_actor != int(pool.gpus_per_actor):
            problems.append(
                f"distributed.gpus_per_actor: {pool.gpus_per_actor}; above 1 it must be a "
                "whole number"
            )
        return problems


# ------------------------------------------------------------------------------- trainables


def trainables_root() -> Path:
    """The source tree folder that holds ``trainables/`` (next to ``platform/``)."""
    return Path(__file__).resolve().parents[2]


def import_trainables() -> None:
    """Make ``import trainables`` work from anywhere in a source checkout (an editable
    install puts only ``platform/`` on the path). Ray workers do not need it: the entry points
    ship their code to workers by value."""
    root = trainables_root()
    if (root / "trainables").is_dir() and str(root) not in sys.path:
        sys.path.insert(0, str(root))


def cpu_count() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


__all__ = [
    "ActorPoolConfig",
    "ClusterConfig",
    "DistributedConfig",
    "DistributedEvalConfig",
    "DistributedTrainConfig",
    "cpu_count",
    "deepspeed_config",
    "import_trainables",
    "run_name",
    "shard_indices",
    "step_seed",
    "storage_path",
    "trainables_root",
]
