"""The single-process meta-trainer of LiveEdit (``liveedit train``; paper §4.3, §7.4).

AdamW over the editor's modules (the backbone is frozen), checkpoints every N steps
(safetensors for tensors, JSON for the rest: no pickle), the best weights by loss kept apart,
resume from the latest checkpoint, early stop on a loss plateau, a progress bar with every loss
component and an MLflow run with every component per step. The Ray/DeepSpeed trainer wraps the
same :func:`~.training.training_step`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from liveedit.config import flatten, save_config
from liveedit.tracking import Tracker, TrackingConfig

from .config import LiveEditConfig
from .editor import EDITOR_WEIGHTS, save_editor_weights
from .modules import LiveEditModules
from .training import build_training_batch, training_step

FAMILY_FORMAT = {"vqa": "evqa", "caption": "eic", "knowledge": "vlkeb"}
CHECKPOINTS = "checkpoints"
BEST = "best"


@dataclass
class TrainConfig:
    """A meta-training run. ``editor.d`` and ``editor.n_vision`` are always taken from the
    backbone (whatever the file says); everything else is the user's."""

    world: Path = Path("runs/demo/world")
    family: Literal["vqa", "caption", "knowledge"] = "vqa"
    backbone: Path = Path("runs/demo/backbone")
    out: Path = Path("runs/demo/liveedit")
    editor: LiveEditConfig = field(default_factory=LiveEditConfig)
    steps: int = field(default=1000, metadata={"min": 1})
    batch_size: int = field(default=8, metadata={"min": 2})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})
    checkpoint_every: int = field(default=100, metadata={"min": 1})
    keep_checkpoints: int = field(default=2, metadata={"min": 1})
    patience: int = field(default=0, metadata={"min": 0})
    """Early stop after this many checkpoints without a better loss (0: never)."""
    min_delta: float = field(default=1e-4, metadata={"min": 0.0})
    """A checkpoint's mean loss is better only if it beats the best by this much."""
    max_minutes: float = field(default=0.0, metadata={"min": 0.0})
    """Stop (with a checkpoint) after this much wall time (0: no limit)."""
    seed: int = field(default=0, metadata={"min": 0})
    threads: int = field(default=0, metadata={"min": 0})
    """torch intra-op threads (0: torch's default)."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="liveedit-train")
    )


@dataclass
class TrainResult:
    steps: int
    best_loss: float
    best_step: int
    last_loss: float
    stopped: str  # "steps", "plateau", "time"
    seconds: float
    out: Path
    history: list[dict[str, float]]


# ---------------------------------------------------------------------- optimizer state I/O


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """AdamW state as safetensors (tensors) + JSON (param groups, scalars)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            key = f"{idx}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().contiguous().cpu()
            else:
                scalars[key] = value
    save_file(tensors, str(directory / "optimizer.safetensors"))
    meta = {"param_groups": state["param_groups"], "scalars": scalars}
    (directory / "optimizer.json").write_text(json.dumps(meta))


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    tensors = load_file(str(directory / "optimizer.safetensors"))
    meta = json.loads((directory / "optimizer.json").read_text())
    state: dict[int, dict[str, object]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---------------------------------------------------------------------- checkpoints


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint under ``out/checkpoints`` (one with ``state.json``)."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file())
    return done[-1] if done else None


def _write_checkpoint(
    out: Path, modules: LiveEditModules, optimizer: torch.optim.Optimizer, state: dict, keep: int
) -> Path:
    root = out / CHECKPOINTS
    final = root / f"step_{state['step']:08d}"
    tmp = root / f".tmp_step_{state['step']:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_editor_weights(modules, tmp)
    save_optimizer(optimizer, tmp)
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(p for p in root.glob("step_*") if p != final)[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------- the loop


def sample_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """The record indices of ``step``: consecutive slices of a per-epoch permutation (so a
    resumed run sees exactly the batches an uninterrupted one would)."""
    out: list[int] = []
    pos = step * batch
    while len(out) < batch:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(batch - len(out), n - offset)
        out.extend(perm[offset : offset + take].tolist())
        pos += take
    return out


def train(config: TrainConfig, show_progress: bool = True) -> TrainResult:
    """Meta-train LiveEdit on one world family and one backbone (resuming if ``out`` holds a
    checkpoint of the same run)."""
    from liveedit.backbones import load_backbone
    from liveedit.data.loaders import load_records
    from liveedit.progress import progress_bar

    start_time = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    backbone = load_backbone(config.backbone)
    editor_cfg = replace(config.editor, d=backbone.hidden_size, n_vision=backbone.num_vision_tokens)
    if not 0 <= editor_cfg.layer < backbone.num_layers:
        raise ValueError(
            f"editor.layer: {editor_cfg.layer} is outside the backbone's "
            f"{backbone.num_layers} layers (allowed 0..{backbone.num_layers - 1})"
        )
    config = replace(config, editor=editor_cfg)
    fmt = FAMILY_FORMAT[config.family]
    data = load_records(fmt, config.world / config.family / "train.json", config.world / "images")
    records = data.records
    if len(records) < config.batch_size:
        raise ValueError(f"{data.file}: {len(records)} records < batch_size {config.batch_size}")

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out)

    torch.manual_seed(config.seed)
    modules = LiveEditModules(editor_cfg).to(backbone.device)
    optimizer = torch.optim.AdamW(
        modules.parameters(), lr=editor_cfg.lr, weight_decay=config.weight_decay
    )
    state = {"step": 0, "best_loss": math.inf, "best_step": -1, "run_id": None, "stale": 0}
    resume = latest_checkpoint(out)
    if resume is not None:
        modules.load_state_dict(load_file(str(resume / EDITOR_WEIGHTS)))
        load_optimizer(optimizer, resume)
        state.update(json.loads((resume / "state.json").read_text()))

    tracker = Tracker(config.tracking, run_name=out.name, run_id=state["run_id"])
    state["run_id"] = tracker.run_id
    if resume is None:
        tracker.log_params(flatten(config))
        tracker.set_tag("liveedit.out", str(out.resolve()))

    history: list[dict[str, float]] = []
    window: list[float] = []
    stopped, last = "steps", math.nan
    bar = progress_bar("meta-train", total=config.steps, show=show_progress)
    bar.update(state["step"])
    modules.train()
    try:
        while state["step"] < config.steps:
            step = state["step"]
            idx = sample_indices(len(records), config.batch_size, step, config.seed)
            tb = build_training_batch(backbone, [records[i] for i in idx])
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            losses = training_step(backbone, modules, tb, generator)
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(modules.parameters(), config.grad_clip)
            optimizer.step()
            values = losses.as_floats()
            last = values["total"]
            window.append(last)
            history.append({"step": step, **values})
            tracker.log_metrics(values, step)
            state["step"] = step + 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()}, refresh=False)

            out_of_time = (
                config.max_minutes and time.monotonic() - start_time > 60 * config.max_minutes
            )
            if (
                state["step"] % config.checkpoint_every == 0
                or state["step"] == config.steps
                or (out_of_time)
            ):
                mean = sum(window) / len(window)
                window = []
                if mean < state["best_loss"] - config.min_delta:
                    state.update(best_loss=mean, best_step=state["step"], stale=0)
                    save_editor_weights(modules, out / BEST)
                else:
                    state["stale"] += 1
                _write_checkpoint(out, modules, optimizer, state, config.keep_checkpoints)
                tracker.log_metrics({"checkpoint_loss": mean}, state["step"])
                if config.patience and state["stale"] >= config.patience:
                    stopped = "plateau"
                    break
            if out_of_time:
                stopped = "time"
                break
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        bar.close()
    tracker.finish()
    (out / "train_result.json").write_text(
        json.dumps({"stopped": stopped, **{k: v for k, v in state.items()}}, indent=2)
    )
    return TrainResult(
        steps=state["step"],
        best_loss=state["best_loss"],
        best_step=state["best_step"],
        last_loss=last,
        stopped=stopped,
        seconds=time.monotonic() - start_time,
        out=out,
        history=history,
    )
