"""The demo recipe end to end on a tiny world with minute budgets cut to seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from liveedit.config import load_config
from liveedit.demo import DemoConfig, run_demo


def test_demo_runs_every_step_and_reuses_finished_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("LIVEEDIT_CACHE", str(tmp_path / "cache"))
    overrides = [
        f"out={tmp_path / 'demo'}",
        "size=tiny",
        "twin.hidden_size=32",
        "twin.num_layers=4",
        "vision.steps=2",
        "vision.bridge_steps=1",
        "vision.batch_size=4",
        "pretrain_minutes=0.001",
        "train_minutes=0.001",
        "train_steps=3",
        "train_batch_size=4",
        "editor.layer=2",
        "editor.d_m=32",
        "edits=1,4",
        "max_records=8",
        "ft_records=2",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    results = run_demo(load_config(DemoConfig, None, overrides))
    out = capsys.readouterr().out
    assert "[1/4] world: building" in out and "liveedit ui --tracking-uri" in out
    main, ft = results
    trained = (tmp_path / "demo" / "liveedit" / "config.yaml").read_text()
    assert "batch_size: 4" in trained and "segment_embedding: true" in trained
    assert {c.cell.editor for c in main.cells} == {"none", "liveedit"}
    assert {c.cell.edits for c in main.cells} == {1, 4}
    assert {c.cell.editor for c in ft.cells} == {"ft-l", "ft-m"}
    assert {c.cell.edits for c in ft.cells} == {1}  # only #edits that fit in ft_records
    assert (tmp_path / "demo" / "liveedit" / "best" / "liveedit.safetensors").is_file()

    # a second run reuses the world, the cached twin, the trained editor and every cell
    again = run_demo(load_config(DemoConfig, None, overrides))
    out = capsys.readouterr().out
    assert "world: reusing" in out and "reused from the cache" in out
    assert "reusing the meta-trained editor" in out
    assert all(r.evaluated == 0 for r in again)
