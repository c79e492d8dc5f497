"""One sweep trial without Ray Tune: checkpoint-by-checkpoint reports with Tune checkpoints,
resuming from such a checkpoint, and the distributed switch (Ray Train + DeepSpeed through
``trainables.meta_train.run_meta_training``, replaced here by the single-process trainer)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from liveedit.config import to_dict
from liveedit.distributed import import_trainables
from liveedit.sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def context_of(spec, tmp_path: Path) -> dict:
    return {
        "name": spec.name,
        "spec": to_dict(spec),
        "root": str(ROOT),
        "tracking": {"uri": "", "experiment": spec.experiment, "enabled": False},
        "parent_run_id": None,
        "sweep_path": str(tmp_path / "sweep"),
        "train_storage": str(tmp_path / "sweep" / "train"),
    }


def tiny_spec(tiny_world: Path, twin: Path, *overrides: str):
    return load_spec(
        ROOT / "sweeps" / "fig4_k.yaml",
        [
            f"base.train.world={tiny_world}",
            f"base.train.backbone={twin}",
            "base.train.editor.layer=2",
            "base.train.steps=4",
            "base.train.checkpoint_every=2",
            "tracking.enabled=false",
            *overrides,
        ],
        tiny=True,
    )


def test_trial_reports_checkpoints_and_resumes(tiny_world, tiny_llava_dir, tmp_path) -> None:
    import_trainables()
    from trainables.sweep import restore_work, run_trial

    spec = tiny_spec(tiny_world, tiny_llava_dir)
    saved: list[Path] = []
    reports: list[dict] = []

    def report(metrics: dict, folder: Path | None) -> None:
        reports.append(dict(metrics))
        if folder is not None:  # Tune persists it during report(); keep a copy
            saved.append(shutil.copytree(folder, tmp_path / f"ckpt{len(saved)}"))

    final = run_trial(
        context_of(spec, tmp_path), {"train.editor.k": 2}, "t0", tmp_path / "w0", report
    )
    assert [r["step"] for r in reports] == [2, 4, 4]
    assert [r["evaluated"] for r in reports] == [0, 0, 1]
    assert all(math.isnan(r["objective"]) for r in reports[:2])
    assert all(r["checkpoint_loss"] > 0 for r in reports)
    assert 0.0 <= final["objective"] <= 1.0 and final["objective"] == final["average"]
    assert final["trainable_params"] > 0 and final["train_steps"] == 4
    assert sorted(p.name for p in saved[-1].iterdir()) == ["best", "checkpoints", "trial.json"]

    # a restarted trial on a fresh node: the Tune checkpoint restores the trainer's state, so
    # nothing is trained again and the trial goes straight to its evaluation
    assert restore_work(saved[0], tmp_path / "w1")
    reports.clear()
    again = run_trial(
        context_of(spec, tmp_path), {"train.editor.k": 2}, "t0", tmp_path / "w1", report
    )
    assert [r["step"] for r in reports] == [4, 4]  # the last chunk (2 -> 4), then the result
    assert again["objective"] == final["objective"]


def test_distributed_switch_calls_meta_train(tiny_world, tiny_llava_dir, tmp_path, monkeypatch):
    from dataclasses import fields

    from liveedit.editors.liveedit.trainer import TrainConfig, train

    import_trainables()
    from trainables import meta_train
    from trainables.sweep import run_trial

    calls = []

    def fake_run_meta_training(config, *, show_progress=True):
        calls.append(config)
        single = TrainConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig)})
        return train(single, show_progress=False)

    monkeypatch.setattr(meta_train, "run_meta_training", fake_run_meta_training)
    spec = tiny_spec(tiny_world, tiny_llava_dir, "base.distributed.workers=1")
    reports: list[dict] = []
    final = run_trial(
        context_of(spec, tmp_path),
        {"train.editor.k": 4},
        "t9",
        tmp_path / "w",
        lambda metrics, folder: reports.append(metrics),
    )
    (config,) = calls
    assert config.distributed.workers == 1 and config.editor.k == 4
    assert config.distributed.name == "liveedit-sweep-fig4_k_tiny-t9"
    assert Path(config.distributed.storage) == tmp_path / "sweep" / "train"
    assert Path(config.out) == tmp_path / "w" and not config.tracking.enabled
    # run_meta_training takes no callbacks (yet): one report at the end of training, then the
    # result
    assert [r["evaluated"] for r in reports] == [0, 1] and reports[0]["step"] == 4
    assert 0.0 <= final["objective"] <= 1.0
