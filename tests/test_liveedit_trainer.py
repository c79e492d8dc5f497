"""The single-process meta-trainer: checkpoints, best weights, resume, early stop, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from liveedit.config import load_config
from liveedit.editors.liveedit.editor import LiveEdit
from liveedit.editors.liveedit.trainer import TrainConfig, sample_indices, train


def config(tiny_world: Path, twin: Path, out: Path, *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        [
            f"world={tiny_world}",
            f"backbone={twin}",
            f"out={out}",
            "family=vqa",
            "batch_size=4",
            "editor.d_m=32",
            "editor.heads=4",
            "editor.layer=2",
            "editor.lr=3e-3",
            f"tracking.uri=sqlite:///{out.parent / 'mlflow.db'}",
            "tracking.experiment=test-train",
            *overrides,
        ],
    )


def test_sample_indices_cover_each_epoch_once() -> None:
    seen = [i for step in range(5) for i in sample_indices(10, 4, step, seed=3)]
    assert sorted(seen[:10]) == list(range(10))  # first epoch: a permutation
    assert sample_indices(10, 4, 2, seed=3) == sample_indices(10, 4, 2, seed=3)


def test_checkpoints_best_resume_and_mlflow(tiny_world, tiny_llava_dir, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    torch.set_num_threads(1)
    out = tmp_path / "run"
    first = train(config(tiny_world, tiny_llava_dir, out, "steps=6", "checkpoint_every=3"), False)
    assert first.steps == 6 and first.stopped == "steps"
    assert [h["step"] for h in first.history] == list(range(6))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000003",
        "step_00000006",
    ]
    assert (out / "best" / "liveedit.safetensors").is_file()
    assert (out / "config.yaml").is_file()

    # the same command with more steps resumes at step 6 and re-attaches the MLflow run
    second = train(config(tiny_world, tiny_llava_dir, out, "steps=9", "checkpoint_every=3"), False)
    assert [h["step"] for h in second.history] == [6, 7, 8]
    state = json.loads((out / "checkpoints" / "step_00000009" / "state.json").read_text())
    assert state["step"] == 9

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("test-train").experiment_id])
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "rel")
    assert [m.step for m in history] == list(range(9))
    assert runs[0].data.params["editor.d_m"] == "32"

    # the best weights load into an editor over the same backbone
    from liveedit.backbones import load_backbone

    editor = LiveEdit.from_pretrained(load_backbone(tiny_llava_dir), out / "best")
    assert editor.cfg.d_m == 32 and editor.cfg.layer == 2


def test_early_stop_on_a_plateau(tiny_world, tiny_llava_dir, tmp_path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "plateau"
    # no checkpoint can beat the first by min_delta: the second is stale and patience 1 stops
    cfg = config(
        tiny_world,
        tiny_llava_dir,
        out,
        "steps=50",
        "checkpoint_every=2",
        "patience=1",
        "min_delta=1000",
        "editor.lr=1e-12",
        "tracking.enabled=false",
    )
    result = train(cfg, False)
    assert result.stopped == "plateau"
    assert result.steps == 4


def test_layer_outside_the_backbone_is_refused(tiny_world, tiny_llava_dir, tmp_path) -> None:
    cfg = config(tiny_world, tiny_llava_dir, tmp_path / "x", "editor.layer=9", "steps=1")
    with pytest.raises(ValueError, match=r"editor.layer: 9 is outside the backbone's 4 layers"):
        train(cfg, False)
