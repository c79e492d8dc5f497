"""The evaluation grid sharded over Ray actors (trainables/eval_actors.py) on a local 2-CPU Ray
instance: the same table as the single-process grid, an actor killed mid-grid whose cell is
retried, a cached re-run that evaluates nothing, nested MLflow runs without duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from liveedit.config import ConfigError, load_config
from liveedit.distributed import ActorPoolConfig, DistributedEvalConfig
from liveedit.evaluation.grid import EvalConfig, EvalTrackingConfig, run_eval

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from liveedit.backbones import load_backbone
    from liveedit.editors.liveedit import LiveEditConfig, LiveEditModules
    from liveedit.editors.liveedit.editor import save_editor_weights

    backbone = load_backbone(tiny_llava_dir)
    torch.manual_seed(0)
    cfg = LiveEditConfig(
        d=backbone.hidden_size, n_vision=backbone.num_vision_tokens, layer=2, d_m=32, heads=4
    )
    return save_editor_weights(LiveEditModules(cfg), tmp_path_factory.mktemp("le") / "best")


def grid(cls, world: Path, twin: Path, weights: Path, root: Path, out: str, **changes):
    values = dict(
        study="ray-grid",
        world=world,
        datasets=["vqa"],
        backbones={"llava": twin},
        editors=["none", "ft-l", "liveedit"],
        editor_options={"liveedit": {"weights": str(weights)}, "ft-l": {"steps": 3}},
        edits=[1, 3],
        seeds=[0, 1],
        max_records=4,
        score_batch_size=8,
        threads=1,
        out=root / out,
        progress=False,
        tracking=EvalTrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}"),
    )
    values.update(changes)
    return cls(**values)


@pytest.fixture(scope="module")
def runs(ray_local, tiny_world, tiny_llava_dir, weights, tmp_path_factory):
    """The single-process grid, then the same grid on 2 actors (in another out folder)."""
    from trainables.eval_actors import ActorRunner

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ray_grid")
    args = (tiny_world, tiny_llava_dir, weights, root)
    single = run_eval(grid(EvalConfig, *args, "single"))
    config = grid(DistributedEvalConfig, *args, "actors", distributed=ActorPoolConfig(actors=2))
    runner = ActorRunner(config, show=False)
    sharded = run_eval(config, runner=runner)
    return root, config, single, sharded, runner


def test_two_actors_give_the_single_process_table(runs) -> None:
    _, config, single, sharded, runner = runs
    assert sharded.evaluated == 12 and sharded.cached == 0
    assert sharded.table.csv() == single.table.csv()
    assert (config.out / "table.md").read_text() == (single.out / "table.md").read_text()
    for a, b in zip(single.cells, sharded.cells, strict=True):
        assert a.key == b.key and a.result.records == b.result.records
    assert len(runner.log) == 12
    assert len({pid for _, pid, _ in runner.log}) == 2  # both actors took cells
    assert len(list((config.out / "cells").glob("*.json"))) == 12
    saved = load_config(DistributedEvalConfig, config.out / "config.yaml")
    assert saved.distributed.actors == 2


def test_cached_rerun_evaluates_nothing_and_logs_no_duplicates(runs) -> None:
    from mlflow.tracking import MlflowClient

    from trainables.eval_actors import run_eval_actors

    _, config, single, sharded, _ = runs
    again = run_eval_actors(config, show_progress=False)
    assert (again.evaluated, again.cached) == (0, 12)
    assert again.table.csv() == sharded.table.csv()
    # both grids share the one parent run (same EvalConfig), each cell logged once
    assert again.parent_run_id == sharded.parent_run_id
    client = MlflowClient(tracking_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name("ray-grid")
    runs_ = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [r for r in runs_ if r.data.tags.get("mlflow.parentRunId") == again.parent_run_id]
    assert len(children) == 12
    assert {c.data.params["cell_key"] for c in children} == {c.key for c in sharded.cells}
    assert client.get_run(again.parent_run_id).info.status == "FINISHED"


def test_a_killed_actor_has_its_cell_retried(runs, tiny_world, tiny_llava_dir, weights) -> None:
    from trainables.eval_actors import ActorRunner

    root, _, single, _, _ = runs
    crash = "llava/vqa/none/T=3/seed=0"
    config = grid(
        DistributedEvalConfig,
        tiny_world,
        tiny_llava_dir,
        weights,
        root,
        "crash",
        editors=["none"],
        editor_options={},
        distributed=ActorPoolConfig(actors=2, crash_cell=crash),
        tracking=EvalTrackingConfig(enabled=False),
    )
    runner = ActorRunner(config, show=False)
    result = run_eval(config, runner=runner)
    assert result.evaluated == 4
    by_cell = {name: restarted for name, _, restarted in runner.log}
    assert by_cell[crash] is True  # evaluated by the restarted actor
    assert len(runner.log) == 4  # one result per cell, none duplicated
    expected = {c.key: c.result.records for c in single.cells}
    for cell in result.cells:
        assert cell.result.records == expected[cell.key]


def test_actor_config_is_checked_before_ray(tmp_path: Path, capsys) -> None:
    from liveedit.cli import main

    with pytest.raises(ConfigError, match="distributed.actors: 0"):
        load_config(DistributedEvalConfig, None, ["world=none", f"out={tmp_path}"])
    assert main(["eval", "--gpus-per-actor", "0.5", f"out={tmp_path / 'x'}"]) == 1
    assert "--gpus-per-actor needs --actors N" in capsys.readouterr().err
