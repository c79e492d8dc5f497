"""The lifelong evaluation grid sharded over Ray actors (``liveedit eval --actors N``).

The grid itself — validation, the cell cache, tables, plots, t-tests, the MLflow parent run and
one child run per cell — is the library's :func:`~liveedit.evaluation.grid.run_eval`; this module
only supplies its :data:`~liveedit.evaluation.grid.CellRunner`:

- N :class:`CellEvaluator` actors (``num_cpus`` / ``num_gpus`` per actor from the config;
  fractional GPUs pack several small backbones on one device). Each holds one backbone replica,
  loaded once and reloaded only when the actor moves on to another backbone of the grid, and
  evaluates many cells with :func:`~liveedit.evaluation.grid.evaluate_cell` (which resets the
  editor after each cell, so the backbone is clean for the next one).
- Cells are handed out one at a time, preferring a cell of the backbone the actor already holds;
  results stream back as cells finish (a progress bar over cells) and go straight to the grid's
  sink, which writes the cell cache and the cell's MLflow child run. An interrupted grid therefore
  resumes without redoing finished cells, and a cell is never stored twice.
- A killed actor is restarted (``max_restarts``) and the cell it was running is re-run
  (``max_task_retries``).
- Ray starts only if some cell is not cached: a re-run with every cell cached evaluates nothing
  and starts no actor.

Cache keys name the cell's files as the configuration gives them (relative paths included), so
each actor works in the driver's working directory when that folder exists on its node, and
checks that it computes the driver's key for the cell (on a multi-node cluster the backbones,
datasets and editor weights must be the same files: shared storage).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from liveedit.distributed import DistributedEvalConfig


class CellEvaluator:
    """A Ray actor holding one backbone replica and evaluating cells on it (see the module
    docstring). Used as ``ray.remote(CellEvaluator)``."""

    def __init__(self, device: str, threads: int, workdir: str, crash_cell: str = "") -> None:
        import torch

        if workdir and os.path.isdir(workdir):
            os.chdir(workdir)
        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.crash_cell = crash_cell
        self.backbone: Any = None
        self.backbone_dir: str | None = None
        self.records: dict[tuple[str, str, str, int], list[Any]] = {}

    def evaluate(self, cell_data: dict[str, Any], key: str) -> dict[str, Any]:
        """Evaluate one cell (given as ``to_dict(cell)``, with the driver's cache key); returns
        the cell result's JSON, this actor's pid and whether the actor was restarted."""
        import ray

        from liveedit.backbones.base import load_backbone
        from liveedit.evaluation.grid import Cell, evaluate_cell, load_cell_records

        cell = Cell(**cell_data)
        with warnings.catch_warnings():  # Ray 2.60 warns about its own use of actor_id
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        if self.crash_cell and cell.describe() == self.crash_cell and not restarted:
            os._exit(1)  # TEST HOOK: the actor dies on its first attempt at this cell
        if self.backbone_dir != cell.backbone_dir:
            self.backbone = None  # one replica per actor: free the previous backbone first
            self.backbone = load_backbone(cell.backbone_dir).to(self.device)
            self.backbone_dir = cell.backbone_dir
        rkey = (cell.format, cell.json, cell.image_root, cell.max_records)
        if rkey not in self.records:
            self.records[rkey] = load_cell_records(cell)
        result = evaluate_cell(cell, self.backbone, self.records[rkey])
        if result.key != key:
            raise RuntimeError(
                f"{cell.describe()}: this actor (pid {os.getpid()}) sees other inputs than the "
                "driver (the cell's backbone, dataset or editor files differ); give every node "
                "the same files (shared storage)"
            )
        return {"result": result.to_json(), "pid": os.getpid(), "restarted": restarted}


class ActorRunner:
    """A :data:`~liveedit.evaluation.grid.CellRunner` that shards cells over Ray actors (see the
    module docstring). After a run, ``log`` lists ``(cell, actor pid, restarted actor)`` per
    evaluated cell, in the order they finished."""

    def __init__(self, config: DistributedEvalConfig, show: bool = True) -> None:
        self.config = config
        self.show = show
        self.log: list[tuple[str, int, bool]] = []

    def __call__(self, todo: Sequence[tuple[Any, str]], records: dict[str, Any], sink: Any) -> None:
        del records  # each actor reads its cells' records itself (once per dataset)
        import ray

        from liveedit.config import to_dict
        from liveedit.evaluation.grid import CellResult
        from liveedit.progress import progress_bar

        from .cluster import connect, ship_by_value

        config, pool = self.config, self.config.distributed
        n = min(pool.actors, len(todo))
        connect(pool.cluster, need_cpus=n * pool.cpus_per_actor)
        ship_by_value(sys.modules[__name__])
        threads = config.threads or max(1, int(pool.cpus_per_actor))
        actor_cls = ray.remote(CellEvaluator).options(
            num_cpus=pool.cpus_per_actor,
            num_gpus=pool.gpus_per_actor,
            max_restarts=pool.max_restarts,
            max_task_retries=pool.max_task_retries,
        )
        actors = [
            actor_cls.remote(config.device, threads, os.getcwd(), pool.crash_cell) for _ in range(n)
        ]
        from liveedit.evaluation.grid import cell_cost

        queue = sorted(todo, key=lambda item: -cell_cost(item[0]))  # costliest first (stable)
        holds: list[str | None] = [None] * n  # the backbone each actor holds (or will)
        inflight: dict[Any, int] = {}

        def submit(i: int) -> None:
            if not queue:
                return
            j = next((j for j, (c, _) in enumerate(queue) if c.backbone_dir == holds[i]), 0)
            cell, key = queue.pop(j)
            holds[i] = cell.backbone_dir
            inflight[actors[i].evaluate.remote(to_dict(cell), key)] = i

        bar = progress_bar("eval cells", total=len(todo), unit="cell") if self.show else None
        try:
            for i in range(n):
                submit(i)
            while inflight:
                done, _ = ray.wait(list(inflight), num_returns=1)
                i = inflight.pop(done[0])
                reply = ray.get(done[0])
                result = CellResult.from_json(reply["result"], cached=False)
                self.log.append((result.cell.describe(), reply["pid"], reply["restarted"]))
                sink(result)
                if bar is not None:
                    bar.update(1)
                submit(i)
        finally:
            if bar is not None:
                bar.close()
            for actor in actors:
                ray.kill(actor)


def run_eval_actors(config: DistributedEvalConfig, *, show_progress: bool | None = None) -> Any:
    """Run (or resume) an evaluation grid with its cells on Ray actors; returns the library's
    :class:`~liveedit.evaluation.grid.GridResult` (the same table, files and MLflow runs as the
    single-process grid)."""
    from liveedit.config import ConfigError
    from liveedit.evaluation.grid import run_eval

    problems = config.validate()
    if problems:
        raise ConfigError(problems, "eval config")
    show = config.progress if show_progress is None else show_progress
    return run_eval(config, show_progress=show, runner=ActorRunner(config, show))


__all__ = ["ActorRunner", "CellEvaluator", "run_eval_actors"]
