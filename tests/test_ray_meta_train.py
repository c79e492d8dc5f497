"""Meta-training on Ray Train + DeepSpeed (trainables/meta_train.py) on a local 2-CPU Ray instance:
a 2-worker ZeRO-2 run that lowers the loss and checkpoints while one worker is killed mid-run and
recovered by FailureConfig, a re-run that resumes and continues the step count, a 2-worker ZeRO-3
run (every parameter partitioned) that reproduces ZeRO-2's losses and weights, the CLI flags and
the config checks. Real DeepSpeed with gloo on CPU; its shared-memory comm op is compiled once
(~40 s) into ~/.cache/torch_extensions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from liveedit.config import ConfigError, load_config
from liveedit.distributed import (
    DistributedTrainConfig,
    deepspeed_config,
    import_trainables,
    run_name,
    shard_indices,
)

pytestmark = pytest.mark.slow
ZERO2_STEP2 = "zero2_step2.safetensors"


def config(world: Path, twin: Path, out: Path, *overrides: str) -> DistributedTrainConfig:
    return load_config(
        DistributedTrainConfig,
        None,
        [
            f"world={world}",
            f"backbone={twin}",
            f"out={out}",
            "family=vqa",
            "batch_size=4",
            "editor.d_m=32",
            "editor.heads=4",
            "editor.layer=2",
            "editor.lr=3e-3",
            "checkpoint_every=2",
            f"tracking.uri=sqlite:///{out.parent / 'mlflow.db'}",
            "tracking.experiment=test-ray-train",
            "distributed.workers=2",
            "distributed.zero_stage=2",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def first_run(ray_local, tiny_world, tiny_llava_dir, tmp_path_factory):
    """4 steps on 2 workers, checkpoints every 2 steps; the last worker is killed (os._exit) when
    it reaches step 3 and FailureConfig restarts the group from the step-2 checkpoint."""
    from trainables.meta_train import run_meta_training

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ray_train") / "run"
    cfg = config(tiny_world, tiny_llava_dir, out, "steps=4", "distributed.fail_at_step=3")
    result = run_meta_training(cfg, show_progress=False)
    # the step-2 weights, kept for the ZeRO-3 comparison (a later resume may prune that checkpoint)
    step2 = out / "ray" / run_name(out) / "step_00000002" / "editor" / "liveedit.safetensors"
    shutil.copy(step2, out.parent / ZERO2_STEP2)
    return out, cfg, result


def _state(out: Path) -> dict:
    return json.loads((out / "train_result.json").read_text())


def test_two_workers_zero2_lower_the_loss_and_checkpoint(first_run) -> None:
    out, cfg, result = first_run
    assert result.steps == 4 and result.stopped == "steps"
    assert [h["step"] for h in result.history] == [0, 1, 2, 3]
    totals = [h["total"] for h in result.history]
    assert totals[-1] < totals[0]
    state = _state(out)
    assert state["workers"] == 2 and state["zero_stage"] == 2
    run_dir = out / "ray" / run_name(out)
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_00000002", "step_00000004"]
    ckpt = run_dir / "step_00000004"
    shards = sorted(p.name for p in (ckpt / "deepspeed" / "ckpt").glob("*optim_states.pt"))
    assert len(shards) == 2  # one ZeRO optimizer shard per worker, merged into one checkpoint
    assert (ckpt / "editor" / "liveedit.safetensors").is_file()
    assert (out / "config.yaml").is_file()

    # the exported best weights load as a LiveEdit editor over the backbone
    from liveedit.backbones import load_backbone
    from liveedit.editors.liveedit.editor import LiveEdit

    editor = LiveEdit.from_pretrained(load_backbone(cfg.backbone), out / "best")
    assert editor.cfg.d_m == 32 and editor.cfg.layer == 2
    assert result.best_step in (2, 4)


def test_a_killed_worker_is_recovered_from_the_last_checkpoint(first_run) -> None:
    out, _, result = first_run
    assert (out / "ray" / run_name(out) / ".liveedit-test-failed-at-step-3").is_file()
    # the first attempt started at 0; the restart after the kill resumed at the step-2 checkpoint
    assert [s["start_step"] for s in _state(out)["sessions"]] == [0, 2]
    assert [h["step"] for h in result.history] == [0, 1, 2, 3]  # step 2 not counted twice


def test_rerun_resumes_and_continues_the_step_count(first_run, tiny_world, tiny_llava_dir) -> None:
    """The same command with more steps resumes at step 4 (same run name, no timestamp) and logs
    into the same MLflow run."""
    from mlflow.tracking import MlflowClient

    from trainables.meta_train import run_meta_training

    out, _, first = first_run
    cfg = config(tiny_world, tiny_llava_dir, out, "steps=6")
    result = run_meta_training(cfg, show_progress=True)  # rank 0's bar through tqdm_ray
    assert result.steps == 6
    assert [h["step"] for h in result.history] == list(range(6))
    assert result.history[:4] == first.history  # the first run's steps, not recomputed
    assert [s["start_step"] for s in _state(out)["sessions"]] == [0, 2, 4]
    run_dir = out / "ray" / run_name(out)
    assert "step_00000006" in {p.name for p in run_dir.glob("step_*")}

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    experiment = client.get_experiment_by_name("test-ray-train")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["distributed.zero_stage"] == "2"
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "total")}
    assert steps == set(range(6))


def test_zero3_partitions_every_parameter_and_matches_zero2(
    first_run, tiny_world, tiny_llava_dir, tmp_path
) -> None:
    """ZeRO-3 with a persistence threshold of 0 (each rank holds half of every editor parameter,
    gathered around each submodule's forward and backward) takes the same two steps as the ZeRO-2
    run: same losses, same weights (gathered for export) as ZeRO-2's step-2 checkpoint."""
    from safetensors.torch import load_file

    from trainables.meta_train import run_meta_training

    _, _, zero2 = first_run
    out = tmp_path / "z3"
    cfg = config(
        tiny_world,
        tiny_llava_dir,
        out,
        "steps=2",
        "distributed.zero_stage=3",
        "distributed.zero3_persistence_threshold=0",
    )
    result = run_meta_training(cfg, show_progress=False)
    assert result.steps == 2 and _state(out)["zero_stage"] == 3
    for a, b in zip(result.history, zero2.history[:2], strict=True):
        assert a["step"] == b["step"]
        assert a["total"] == pytest.approx(b["total"], rel=1e-5)
    ckpt = out / "ray" / run_name(out) / "step_00000002"
    # one model-states file per rank: ZeRO-3 partitions the parameters themselves
    assert len(list((ckpt / "deepspeed" / "ckpt").glob("zero_pp_rank_*_model_states.pt"))) == 2
    z2 = load_file(str(first_run[0].parent / ZERO2_STEP2))
    z3 = load_file(str(ckpt / "editor" / "liveedit.safetensors"))
    assert z3.keys() == z2.keys()
    for name in z2:
        assert z3[name].shape == z2[name].shape
        torch.testing.assert_close(z3[name], z2[name], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(z2[n], z3_init) for n, z3_init in _initial_weights(cfg).items())


def _initial_weights(cfg: DistributedTrainConfig) -> dict[str, torch.Tensor]:
    """The editor's weights before any step (the trainer seeds them with ``cfg.seed``)."""
    from dataclasses import replace

    from liveedit.backbones import load_backbone
    from liveedit.editors.liveedit.modules import LiveEditModules

    backbone = load_backbone(cfg.backbone)
    torch.manual_seed(cfg.seed)
    editor = replace(cfg.editor, d=backbone.hidden_size, n_vision=backbone.num_vision_tokens)
    return LiveEditModules(editor).state_dict()


def test_cli_flags_reach_the_distributed_section(tmp_path: Path, capsys) -> None:
    from liveedit.cli import main

    # a Ray flag without --workers is refused before any work
    assert main(["train", "--zero-stage", "1", f"out={tmp_path / 'x'}"]) == 1
    assert "--zero-stage needs --workers N" in capsys.readouterr().err
    # a stage DeepSpeed does not have is refused before any cluster starts
    argv = ["train", "--workers", "2", "--zero-stage", "4", f"out={tmp_path / 'x'}"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "distributed.zero_stage: 4 is out of range; allowed range: [0, 3]" in err
    assert not (tmp_path / "x").exists()


def test_config_checks_and_helpers() -> None:
    with pytest.raises(ConfigError, match="multiple of distributed.workers"):
        load_config(DistributedTrainConfig, None, ["batch_size=6", "distributed.workers=4"])
    with pytest.raises(ConfigError, match="whole GPUs"):
        load_config(
            DistributedTrainConfig,
            None,
            ["distributed.workers=2", "distributed.gpus_per_worker=0.5"],
        )
    cfg = load_config(DistributedTrainConfig, None, ["batch_size=8", "distributed.workers=2"])
    ds = deepspeed_config(cfg, 2, gpu=False)
    assert ds["train_batch_size"] == 8 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["zero_optimization"]["stage"] == 2 and not ds["bf16"]["enabled"]
    assert deepspeed_config(cfg, 2, gpu=True)["bf16"]["enabled"]
    z3 = load_config(
        DistributedTrainConfig,
        None,
        [
            "distributed.workers=2",
            "distributed.zero_stage=3",
            "distributed.zero3_persistence_threshold=0",
        ],
    )
    assert deepspeed_config(z3, 2, gpu=False)["zero_optimization"] == {
        "stage": 3,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "stage3_param_persistence_threshold": 0,
    }
    batch = list(range(8))
    assert shard_indices(batch, 0, 2) + shard_indices(batch, 1, 2) == batch
    assert run_name("runs/a") == run_name(Path("runs/a").resolve()) != run_name("other/a")


def test_relative_tracking_uris_become_absolute() -> None:
    import_trainables()
    from trainables.meta_train import absolute_uri

    assert absolute_uri("sqlite:///m.db") == f"sqlite:///{Path('m.db').resolve()}"
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("http://host:5000") == "http://host:5000"
