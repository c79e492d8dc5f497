"""The evaluation grid end to end on the tiny world and backbone: config validation, the cell
cache (a re-run evaluates nothing), the table files and nested MLflow runs in a sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from liveedit.config import ConfigError
from liveedit.evaluation.grid import (
    EvalConfig,
    EvalTrackingConfig,
    cell_cost,
    cell_key,
    expand_cells,
    load_eval_config,
    run_eval,
)
from liveedit.evaluation.tables import pct


@pytest.fixture(scope="module")
def liveedit_weights(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained (random) LiveEdit modules saved as editor weights: a real LiveEdit editor."""
    from liveedit.backbones import load_backbone
    from liveedit.editors.liveedit import LiveEditConfig, LiveEditModules
    from liveedit.editors.liveedit.editor import save_editor_weights

    backbone = load_backbone(tiny_llava_dir)
    torch.manual_seed(0)
    cfg = LiveEditConfig(
        d=backbone.hidden_size, n_vision=backbone.num_vision_tokens, layer=2, d_m=32, heads=4
    )
    return save_editor_weights(LiveEditModules(cfg), tmp_path_factory.mktemp("le") / "best")


def make_config(world: Path, twin: Path, weights: Path, out: Path, **changes) -> EvalConfig:
    values = dict(
        study="unit-grid",
        world=world,
        datasets=["vqa"],
        backbones={"llava": twin},
        editors=["none", "ft-l", "liveedit"],
        editor_options={"liveedit": {"weights": str(weights)}, "ft-l": {"steps": 10}},
        edits=[1, 3],
        seeds=[0, 1],
        max_records=5,
        score_batch_size=8,
        out=out / "eval",
        progress=False,
        tracking=EvalTrackingConfig(uri=f"sqlite:///{out / 'mlflow.db'}"),
    )
    values.update(changes)
    return EvalConfig(**values)


@pytest.fixture(scope="module")
def grid(tiny_world, tiny_llava_dir, liveedit_weights, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("grid")
    config = make_config(tiny_world, tiny_llava_dir, liveedit_weights, out)
    first = run_eval(config)
    stamps = {p.name: p.stat().st_mtime_ns for p in (config.out / "cells").glob("*.json")}
    second = run_eval(config)
    return config, first, second, stamps


def test_cell_cost_ranks_fine_tuning_cells_first(tiny_world, tiny_llava_dir, tmp_path) -> None:
    """records x (1 + optimiser steps per edit): FT-L with 10 steps on 5 records costs 55."""
    editors = ["none", "ft-l", "ft-m"]
    cfg = make_config(tiny_world, tiny_llava_dir, tmp_path, tmp_path, editors=editors)
    cfg.editor_options = {"ft-l": {"steps": 10}}
    costs = {c.editor: cell_cost(c) for c in expand_cells(cfg)}
    assert costs == {"none": 5.0, "ft-l": 55.0, "ft-m": 5.0 * 26}  # FT-M: default 25 steps
    cfg.max_records = 0  # every record: counted as 1000
    assert {cell_cost(c) for c in expand_cells(cfg) if c.editor == "none"} == {1000.0}


def test_first_run_evaluates_every_cell(grid) -> None:
    config, first, _, stamps = grid
    assert first.evaluated == 12 and first.cached == 0  # 3 editors x 2 T x 2 seeds
    assert len(stamps) == 12
    for cell in first.cells:
        assert len(cell.result.records) == 5
    tail = [c for c in first.cells if c.cell.edits == 3]
    assert all((c.result.n_chunks, c.result.tail) == (2, 2) for c in tail)
    none = [c for c in first.cells if c.cell.editor == "none"]
    assert all(c.means()["t_loc"] == 1.0 and c.means()["m_loc"] == 1.0 for c in none)


def test_rerun_evaluates_nothing(grid) -> None:
    config, first, second, stamps = grid
    assert second.evaluated == 0 and second.cached == 12
    after = {p.name: p.stat().st_mtime_ns for p in (config.out / "cells").glob("*.json")}
    assert after == stamps
    assert [c.key for c in second.cells] == [c.key for c in first.cells]
    for a, b in zip(first.cells, second.cells, strict=True):
        assert a.result.records == b.result.records
    assert second.parent_run_id == first.parent_run_id  # re-attached, not a new grid run


def test_cache_keys_follow_the_inputs(grid, tiny_world, tiny_llava_dir, liveedit_weights) -> None:
    config = grid[0]
    cells = expand_cells(config)
    keys = [cell_key(c) for c in cells]
    assert len(set(keys)) == len(keys)
    other = make_config(
        tiny_world, tiny_llava_dir, liveedit_weights, config.out.parent, max_records=4
    )
    assert not set(keys) & {cell_key(c) for c in expand_cells(other)}


def test_new_cells_only_are_evaluated(grid, tiny_world, tiny_llava_dir, liveedit_weights) -> None:
    config = grid[0]
    more = make_config(
        tiny_world, tiny_llava_dir, liveedit_weights, config.out.parent, edits=[1, 3, 5]
    )
    result = run_eval(more)
    assert (result.evaluated, result.cached) == (6, 12)
    assert result.parent_run_id != grid[1].parent_run_id  # another grid: another parent run


def test_table_files_hold_the_cell_means(grid) -> None:
    config, first, _, _ = grid
    for name in ("table.md", "table.csv", "table.tex", "significance.csv", "config.yaml"):
        assert (config.out / name).is_file()
    assert (config.out / "plots" / "llava__vqa.png").is_file()
    ftl = [c for c in first.cells if c.cell.editor == "ft-l" and c.cell.edits == 3]
    rel = sum(c.means()["rel"] for c in ftl) / len(ftl)
    md = (config.out / "table.md").read_text()
    assert "locality definition liveedit" in md
    lines = md.splitlines()
    block = lines.index(next(row for row in lines if row.startswith("|  | 3 | N/A |")))
    assert lines[block + 1].startswith(f"|  |  | FT-L | {pct(rel)} |")
    rows = (config.out / "table.csv").read_text().splitlines()
    ftl_row = next(r for r in rows if r.startswith("llava,vqa,ft-l,FT-L,3,"))
    assert ftl_row.split(",")[5] == pct(rel)
    assert f"& {pct(rel)} &" in (config.out / "table.tex").read_text()
    sig = (config.out / "significance.csv").read_text().splitlines()
    assert sig[0].startswith("backbone,dataset,edits,editor,baseline")
    assert any(",liveedit,ft-l,average," in r for r in sig)


def test_mlflow_runs_are_nested_and_hold_the_metrics(grid) -> None:
    from mlflow.tracking import MlflowClient

    config, first, _, _ = grid
    client = MlflowClient(tracking_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name("unit-grid")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = client.get_run(first.parent_run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 12  # the re-run logged no duplicates
    assert parent.info.status == "FINISHED"
    assert parent.data.params["locality"] == "liveedit"
    by_key = {c.key: c for c in first.cells}
    for child in children:
        cell = by_key[child.data.params["cell_key"]]
        assert child.data.params["editor"] == cell.cell.editor
        assert child.data.params["edits"] == str(cell.cell.edits)
        for metric, value in cell.means().items():
            assert child.data.metrics[metric] == pytest.approx(value)
    history = client.get_metric_history(parent.info.run_id, "llava/vqa/ft-l/rel")
    assert sorted({m.step for m in history}) == [1, 3]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert {"tables/table.md", "tables/table.csv", "tables/table.tex"} <= names
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/llava__vqa.png" in plots


def test_config_validation_lists_every_problem(tmp_path: Path, tiny_world: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_eval_config(
            None,
            [
                f"world={tiny_world}",
                "datasets=vqa,nope",
                f"backbones.x={tmp_path / 'missing'}",
                "editors=none,liveedit,mend",
                "edit_batch=2",
            ],
        )
    text = str(info.value)
    for expected in ("'nope' is unknown", "backbones.x", "needs weights", "'mend' is unknown"):
        assert expected in text
    with pytest.raises(ConfigError, match=r"edits\[1\]: 0 is out of range"):
        load_eval_config(None, ["edits=1,0"])


def test_cli_overrides_build_a_valid_config(tiny_world, tiny_llava_dir, liveedit_weights) -> None:
    config = load_eval_config(
        None,
        [
            f"world={tiny_world}",
            f"backbones.llava={tiny_llava_dir}",
            "editors=none,ft-m,liveedit",
            f"editor_options.liveedit.weights={liveedit_weights}",
            "editor_options.ft-m.steps=5",
            "edits=[1,10]",
            "locality=easyedit-top10",
            "tracking.uri=sqlite:///x.db",
        ],
    )
    assert config.experiment == config.study  # one experiment per study by default
    assert config.editor_spec("liveedit") == ("liveedit", {"weights": str(liveedit_weights)})
    assert type(config.editor_options["ft-m"]["steps"]) is str
    assert config.edits == [1, 10] and config.locality == "easyedit-top10"
    assert sorted(config.dataset_files()) == ["caption", "knowledge", "vqa"]
    json.dumps(config.editor_options)  # plain types only


def test_ui_command_serves_the_same_store_on_loopback(tmp_path: Path) -> None:
    from liveedit.tracking import ui_command

    argv = ui_command(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert argv[1:4] == ["-m", "mlflow", "ui"]
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert argv[argv.index("--default-artifact-root") + 1] == (tmp_path / "mlruns").as_uri()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
