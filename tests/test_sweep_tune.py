"""Ray Tune sweeps end to end on the tiny world and twin (a local 2-CPU Ray instance): Optuna +
ASHA with the MLflow parent / child runs and the report, and an interrupted grid sweep resumed
to completion by re-running the same command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from liveedit.cli import main
from liveedit.config import ConfigError
from liveedit.distributed import import_trainables
from liveedit.sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")  # a private instance: no token file needed
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
        ray.init(address="local", num_cpus=2, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def spec_of(name: str, tiny_world: Path, twin: Path, tmp_path: Path, *overrides: str):
    return load_spec(
        ROOT / "sweeps" / f"{name}.yaml",
        [
            f"base.train.world={tiny_world}",
            f"base.train.backbone={twin}",
            "base.train.editor.layer=2",  # the fixture twin has 4 layers
            "base.train.steps=4",
            f"storage={tmp_path / 'sweeps'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *overrides,
        ],
        tiny=True,
    )


def runs_of(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("liveedit.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("liveedit.kind") == "sweep-trial"]
    return client, parents, children


def test_optuna_asha_sweep_end_to_end(ray_local, tiny_world, tiny_llava_dir, tmp_path) -> None:
    import_trainables()
    from trainables.sweep import run_sweep

    spec = spec_of(
        "optuna_search",
        tiny_world,
        tiny_llava_dir,
        tmp_path,
        "search.train.editor.layer.randint=[1,3]",
    )
    assert spec.searcher.type == "optuna" and spec.scheduler.type == "asha"
    result = run_sweep(spec, show_progress=False)
    assert result.complete and not result.restored and len(result.trials) == 3
    statuses = [t.status for t in result.trials]
    assert set(statuses) <= {"completed", "stopped"} and "completed" in statuses
    assert result.best is not None and 0.0 <= (result.best.objective or 0.0) <= 1.0

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, parents, children = runs_of(uri, spec.experiment)
    (parent,) = parents
    assert len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.data.tags["liveedit.searcher"] == "optuna-tpe(seed=0)"
    assert parent.data.tags["liveedit.scheduler"].startswith("asha(")
    assert parent.data.tags["liveedit.git_commit"] and parent.data.tags["ray.job_id"]
    assert parent.data.tags["liveedit.best_trial"] == result.best.trial_id
    assert parent.data.params["spec.searcher.seed"] == "0"
    for child in children:
        losses = client.get_metric_history(child.info.run_id, "total")
        assert losses and losses[0].step == 0  # per-step losses of meta-training
        assert child.data.params["train.steps"] == "4"
        if child.data.tags.get("liveedit.status") == "completed":
            assert "e2/average" in child.data.metrics and child.data.metrics["trainable_params"] > 0
        else:
            assert child.info.status == "KILLED"  # stopped by ASHA
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/trials.md", "report/objective.png"} <= artifacts
    assert all(f.is_file() for f in result.report_files)

    # the report again, from MLflow alone
    out = tmp_path / "again"
    argv = ["report", "--experiment", spec.experiment, "--tracking-uri", uri, "--out", str(out)]
    assert main(argv) == 0
    assert (out / "trials.md").read_text() == (
        Path(result.report_files[0]).parent / "trials.md"
    ).read_text()


def test_interrupted_sweep_resumes(ray_local, tiny_world, tiny_llava_dir, tmp_path, monkeypatch):
    import_trainables()
    from trainables.sweep import INTERRUPT_ENV, run_sweep

    overrides = ("search.train.editor.k.grid=[1,4]", "concurrency=1")
    spec = spec_of("fig4_k", tiny_world, tiny_llava_dir, tmp_path, *overrides)
    monkeypatch.setenv(INTERRUPT_ENV, "1")  # the driver interrupts itself after one trial
    first = run_sweep(spec, show_progress=False)
    assert not first.complete and first.counts.get("completed") == 1
    monkeypatch.delenv(INTERRUPT_ENV)

    again = spec_of("fig4_k", tiny_world, tiny_llava_dir, tmp_path, *overrides)  # same command
    second = run_sweep(again, show_progress=False)
    assert second.restored and second.complete
    assert second.counts == {"completed": 2}
    assert second.parent_run_id == first.parent_run_id
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, parents, children = runs_of(uri, spec.experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["liveedit.label"] for c in children) == ["k=1", "k=4"]
    assert (Path(spec.storage) / spec.name / "report" / f"{spec.name}.png").is_file()

    changed = spec_of(
        "fig4_k", tiny_world, tiny_llava_dir, tmp_path, *overrides, "base.train.steps=6"
    )
    with pytest.raises(ConfigError, match="of another spec"):
        run_sweep(changed, show_progress=False)
    assert os.environ.get(INTERRUPT_ENV) is None
