"""Pretraining a tiny twin on the synthetic world (``liveedit backbone pretrain``).

Real VLLMs are not trained end to end from scratch, and neither are the twins (STACK-NOTES: the
vision side learns slowly through the LM). Two stages, as in BLIP-2 / LLaVA:

1. **Vision tower, then bridge.** The ViT learns the world's visual vocabulary directly: on
   freshly sampled, jittered scenes, a linear probe on each patch token (one patch per grid cell —
   the twins use 16-px patches on the world's 16-px cells) predicts that cell's shape, colour and
   size, and which cell the token is. The probes read the features the bridge consumes (LLaVA: the
   penultimate ViT layer). Then, the tower frozen, the same probes on the LM-space vision tokens
   train the bridge: the Q-Former and its queries against a frozen image encoder (BLIP-2's first
   stage), LLaVA's projector (LLaVA's first stage). The probes are thrown away afterwards.
2. **Whole model.** The bridge (Q-Former / projector) and the LM learn the pretraining corpus
   (VQA answers, captions, knowledge facts, text facts) by teacher forcing on the target tokens,
   the vision tower continuing at a smaller learning rate.

Held-out, teacher-forced token accuracy per task group is measured every ``eval_every`` steps and
the run stops as soon as every group reaches its target (or at ``max_minutes``). The saved
directory holds the HF model, tokenizer and processor plus ``liveedit_backbone.json`` with the
accuracies; an MLflow run holds the loss curve and the accuracies.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from liveedit.config import config_hash, flatten, save_config
from liveedit.tracking import Tracker, TrackingConfig

from .base import Backbone, LMBatch
from .twins import TwinSpec, build_twin

TASK_GROUPS = {
    "vqa_colour": "vqa",
    "vqa_shape": "vqa",
    "vqa_count": "vqa",
    "vqa_position": "vqa",
    "caption": "caption",
    "knowledge_name": "knowledge",
    "knowledge_fact": "knowledge",
    "knowledge_hop": "knowledge",
    "text_fact": "text_fact",
}
"""Corpus task -> the group whose held-out accuracy has a target."""

DEFAULT_TARGETS = {"vqa": 0.95, "text_fact": 0.95, "caption": 0.85, "knowledge": 0.85}
DEFAULT_GROUP_WEIGHTS = {"vqa": 0.45, "caption": 0.1, "knowledge": 0.35, "text_fact": 0.1}


class GroupSampler:
    """Draws corpus indices: a task group by its weight, then the next example of that group's
    shuffled pass (a new shuffle when a pass ends). Deterministic for a seed."""

    def __init__(self, tasks: list[str], weights: dict[str, float], seed: int):
        self.rng = random.Random(seed)
        members: dict[str, list[int]] = defaultdict(list)
        for i, task in enumerate(tasks):
            members[TASK_GROUPS.get(task, task)].append(i)
        unknown = sorted(set(weights) - set(members))
        if unknown:
            raise ValueError(f"language.group_weights: no corpus task in group(s) {unknown}")
        self.groups = [g for g in sorted(members) if weights.get(g, 0.0) > 0]
        if not self.groups:
            raise ValueError("language.group_weights: every group has weight 0")
        self.base = {g: weights[g] for g in self.groups}
        self.weights = [weights[g] for g in self.groups]
        self.members = {g: members[g] for g in self.groups}
        self.queues: dict[str, list[int]] = {g: [] for g in self.groups}

    def scale(self, factors: dict[str, float]) -> None:
        """Multiply the sampling weight of each named group by its factor (from the weights the
        sampler was built with; groups not named keep theirs)."""
        self.weights = [self.base[g] * factors.get(g, 1.0) for g in self.groups]

    def draw(self, n: int) -> list[int]:
        out = []
        for group in self.rng.choices(self.groups, weights=self.weights, k=n):
            queue = self.queues[group]
            if not queue:
                queue.extend(self.rng.sample(self.members[group], len(self.members[group])))
            out.append(queue.pop())
        return out


@dataclass
class VisionStage:
    """Stage 1: per-cell probes, first on the vision tower, then through the bridge."""

    steps: int = field(default=2500, metadata={"min": 0})
    """Steps of the tower phase: probes on the ViT patch tokens the bridge consumes predict their
    cell's shape, colour and size, and which cell the token is (train the tower only). Shape is
    the slow one: on the BLIP2-OPT twin's occupied cells 43% after 600 steps, 94% after 2,500
    (~70 s on 2 cores; LLaVA twin 98%); colour and size are at ~100% within 400."""
    bridge_steps: int = field(default=600, metadata={"min": 0})
    """Steps of the bridge phase (after the tower phase): the same attribute probes on the
    LM-space vision tokens train the bridge with the tower frozen — the Q-Former, its query tokens
    and the projection (BLIP-2's first stage: the Q-Former learns against a frozen image
    encoder), or LLaVA's projector (LLaVA's first stage). Needs one vision token per cell, as
    every twin has. BLIP2-OPT twin: shape / colour / size 95 / 100 / 100% on occupied cells
    after 600 steps; without the tower's cell probe its Q-Former never left the empty-cell
    answer (the tokens did not say where they were)."""
    batch_size: int = field(default=64, metadata={"min": 1})
    lr: float = field(default=2e-3, metadata={"min": 0.0})
    bridge_lr: float = field(default=1e-3, metadata={"min": 0.0})


@dataclass
class LanguageStage:
    """Stage 2: the whole model on the pretraining corpus."""

    steps: int = field(default=20000, metadata={"min": 1})
    batch_size: int = field(default=64, metadata={"min": 1})
    lr: float = field(default=5e-4, metadata={"min": 0.0})
    """With ``batch_size``, the gradient noise the LM learns under. Questions that name one object
    by another ("What shape is the red object?") need the LM to match the question's words to one
    vision token; at batch 32 / lr 1e-3 the twins stay at ~62% held-out vqa (the accuracy of
    reading a random object of the scene) for thousands of steps, while batch 64 / lr 5e-4 (or
    batch 128 / lr 1e-3) learns the matching: 87% and 91% after 2,600 and 2,150 steps."""
    vision_lr_scale: float = field(default=0.1, metadata={"min": 0.0})
    warmup: int = field(default=200, metadata={"min": 0})
    weight_decay: float = field(default=0.01, metadata={"min": 0.0})
    prompt_loss_weight: float = field(default=0.0, metadata={"min": 0.0})
    """Weight of the next-token loss on the prompt tokens, added to the answer loss (0 = answer
    tokens only). Language models are pretrained on every position; scoring only the 1-3 answer
    tokens of a sequence leaves the in-context matching a question needs with little signal.
    Measured on the LLaVA twin (~3,000 steps): weight 1 gave held-out vqa 56% vs 62% without
    (69% vs 63% with init std 0.08) — no help on this corpus, hence off by default."""
    anneal: float = field(default=0.3, metadata={"min": 0.0, "max": 1.0})
    """The last fraction of the time budget (``max_minutes``) over which the learning rate decays
    linearly to a tenth of its value (:func:`anneal_factor`); 0 = constant after warm-up. The run
    is budgeted in minutes, not steps, so the schedule follows the clock. LLaVA twin, 30 min,
    world v2: vqa / knowledge 94.2 / 99.3% with 0.3, 93.9 / 92.5% without."""
    reached_weight_scale: float = field(default=0.25, metadata={"min": 0.0, "max": 1.0})
    """After each held-out evaluation, the sampling weight of every group that has reached its
    target is this fraction of its configured weight (1 = fixed shares); the batch then goes to
    the groups still below target, while the others keep being rehearsed."""
    group_weights: dict[str, float] | None = None
    """Sampling share of each task group (default :data:`DEFAULT_GROUP_WEIGHTS`); within a group,
    examples are drawn in shuffled passes. Balancing matters: the corpus holds few text facts
    (each must be seen many times to be recalled) and many scene questions."""


@dataclass
class PretrainConfig:
    """A twin pretraining run; the cache key covers everything but ``out``, ``cache`` and
    ``tracking`` (plus the world's manifest)."""

    world: Path = Path("runs/demo/world")
    arch: Literal["blip2-opt", "llava-1.5", "minigpt4"] = "llava-1.5"
    out: Path = Path("runs/demo/backbone")
    seed: int = field(default=0, metadata={"min": 0})
    twin: TwinSpec = field(default_factory=TwinSpec)
    vision: VisionStage = field(default_factory=VisionStage)
    language: LanguageStage = field(default_factory=LanguageStage)
    targets: dict[str, float] | None = None
    """Accuracy targets per task group (default :data:`DEFAULT_TARGETS`)."""
    eval_every: int = field(default=500, metadata={"min": 1})
    eval_examples: int = field(default=1200, metadata={"min": 1})
    max_minutes: float = field(default=30.0, metadata={"min": 0.0})
    threads: int = field(default=0, metadata={"min": 0})
    device: str = "cpu"
    """Where the twin trains (``cpu``, ``cuda``, ``cuda:1``); the saved weights are on the CPU."""
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="liveedit-backbones")
    )


@dataclass
class PretrainResult:
    out: Path
    accuracy: dict[str, float]
    reached: bool
    steps: int
    seconds: float
    curve: list[dict[str, float]]
    cached: bool = False


# ---------------------------------------------------------------------- stage 1: vision


def _patch_features(backbone: Backbone, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[n, cells, d_v]``: the patch tokens of the vision layer the bridge reads."""
    tower = backbone.vision_tower
    out = tower(pixel_values=pixel_values, output_hidden_states=True)
    layer = getattr(backbone.model.config, "vision_feature_layer", -1)
    if isinstance(layer, list):
        layer = layer[-1]
    states = out.hidden_states[layer]
    return states[:, 1:]  # drop CLS; patches row-major = grid cells


def _probe_heads(width: int, cells: int, where: bool) -> nn.ModuleDict:
    from liveedit.world.vocabulary import COLOURS, SHAPES, SIZES

    heads = {  # class 0 = empty cell
        "shape": nn.Linear(width, len(SHAPES) + 1),
        "colour": nn.Linear(width, len(COLOURS) + 1),
        "size": nn.Linear(width, len(SIZES) + 1),
    }
    if where:
        heads["cell"] = nn.Linear(width, cells)
    return nn.ModuleDict(heads)


def _probe_batch(rng: random.Random, n: int, cells: int) -> tuple[list[Any], dict[str, Tensor]]:
    """``n`` rendered scenes of 1-4 objects (70% jittered) and per-cell attribute labels."""
    from liveedit.world.render import render, sample_jitter
    from liveedit.world.scene import sample_scene
    from liveedit.world.vocabulary import COLOURS, SHAPES, SIZES

    images, labels = [], {"shape": [], "colour": [], "size": [], "cell": []}
    for _ in range(n):
        scene = sample_scene(rng, rng.randint(1, 4))
        images.append(render(scene, sample_jitter(rng, scene) if rng.random() < 0.7 else None))
        by_cell = {o.cell: o for o in scene.objects}
        for key, names in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES)):
            labels[key].append(
                [
                    names.index(getattr(by_cell[c], key)) + 1 if c in by_cell else 0
                    for c in range(cells)
                ]
            )
        labels["cell"].append(list(range(cells)))
    return images, {k: torch.tensor(v) for k, v in labels.items()}


def _probe_phase(
    backbone: Backbone,
    phase: Literal["tower", "bridge"],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    first_step: int,
) -> list[dict[str, float]]:
    """Train what ``phase`` names against per-cell linear probes (thrown away afterwards).

    ``tower``: the probes read the patch tokens the bridge consumes and also name each token's
    cell — a Q-Former reads the tokens as a set, so where a token sits must be in the token.
    ``bridge``: the probes read the LM-space vision tokens, token i for cell i; the bridge (and
    the BLIP-2 query tokens) train, the tower stays frozen."""
    from liveedit.progress import progress_bar
    from liveedit.world.vocabulary import GRID

    cells = GRID * GRID
    if phase == "bridge":
        if backbone.num_vision_tokens != cells:
            raise ValueError(
                f"vision.bridge_steps: the bridge probes need one vision token per cell "
                f"({cells}); {backbone.arch} has {backbone.num_vision_tokens} (set it to 0)"
            )
        width = backbone.hidden_size
        trained = [backbone.bridge]
        projection = getattr(backbone, "projection", None)  # BLIP-2 family: Q-Former -> LM
        if projection is not None:
            trained.append(projection)
    else:
        width = backbone.vision_tower.config.hidden_size
        trained = [backbone.vision_tower]
    heads = _probe_heads(width, cells, where=phase == "tower").to(backbone.device)
    params = [*heads.parameters()]
    for module in trained:
        backbone.unfreeze(module)
        module.train()
        params.extend(module.parameters())
    queries = getattr(backbone.model, "query_tokens", None)  # BLIP-2's learned Q-Former queries
    if phase == "bridge" and isinstance(queries, nn.Parameter):
        queries.requires_grad_(True)
        params.append(queries)
    optimizer = torch.optim.AdamW(params, lr=lr)
    rng = random.Random(f"{seed}|{phase}")
    curve = []
    bar = progress_bar(f"vision stage ({phase})", total=steps)
    for step in range(steps):
        images, labels = _probe_batch(rng, batch_size, cells)
        pixels = backbone.pixel_values(images).to(backbone.device)
        if phase == "bridge":
            feats = backbone.image_features(pixels)
        else:
            feats = _patch_features(backbone, pixels)
        loss = torch.zeros((), device=feats.device)
        accs = {}
        for key, head in heads.items():
            target = labels[key].to(feats.device)
            logits = head(feats)
            loss = loss + nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
            right = logits.argmax(-1) == target
            # attributes: accuracy on the cells that hold an object (most cells are empty)
            scored = right if key == "cell" else right[labels["shape"] > 0]
            accs[key] = float(scored.float().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append(
            {
                "step": first_step + step,
                f"{phase}_probe_loss": loss.item(),
                **{f"{phase}_probe_{k}": v for k, v in accs.items()},
            }
        )
        bar.update(1)
        bar.set_postfix({k: f"{v:.2f}" for k, v in accs.items()}, refresh=False)
    bar.close()
    backbone.freeze()
    return curve


def vision_stage(backbone: Backbone, stage: VisionStage, seed: int) -> list[dict[str, float]]:
    """Stage 1: the tower phase, then the bridge phase (:class:`VisionStage`); the curve rows
    are numbered across both."""
    curve = _probe_phase(backbone, "tower", stage.steps, stage.batch_size, stage.lr, seed, 0)
    curve += _probe_phase(
        backbone, "bridge", stage.bridge_steps, stage.batch_size, stage.bridge_lr, seed, len(curve)
    )
    return curve


# ---------------------------------------------------------------------- stage 2: corpus


@dataclass
class _Example:
    image: str | None
    prompt: str
    target: str
    task: str


def _read_corpus(path: Path) -> list[_Example]:
    examples = []
    with path.open() as f:
        for line in f:
            d = json.loads(line)
            examples.append(_Example(d["image"], d["prompt"], d["target"], d["task"]))
    return examples


class _ImageCache:
    """Decoded corpus images, each read from disk once."""

    def __init__(self, root: Path):
        self.root = root
        self.images: dict[str, object] = {}

    def get(self, rel: str | None) -> object | None:
        if rel is None:
            return None
        if rel not in self.images:
            from PIL import Image

            with Image.open(self.root / rel) as img:
                self.images[rel] = img.convert("RGB")
        return self.images[rel]


def _stratified(examples: list[_Example], limit: int, seed: int) -> list[_Example]:
    """At most ``limit`` held-out examples, the same share of every task."""
    by_task: dict[str, list[_Example]] = defaultdict(list)
    for ex in examples:
        by_task[ex.task].append(ex)
    rng = random.Random(seed)
    per_task = max(1, limit // max(1, len(by_task)))
    chosen = []
    for task in sorted(by_task):
        items = list(by_task[task])
        rng.shuffle(items)
        chosen.extend(items[:per_task])
    return chosen


@torch.no_grad()
def evaluate_corpus(
    backbone: Backbone, examples: list[_Example], images: _ImageCache, batch_size: int = 64
) -> dict[str, float]:
    """Held-out teacher-forced token accuracy on true answers, per task and per task group."""
    per_task: dict[str, list[float]] = defaultdict(list)
    was_training = backbone.model.training
    backbone.model.eval()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = backbone.build_inputs(
            [images.get(e.image) for e in chunk],
            [e.prompt for e in chunk],
            [e.target for e in chunk],
        )
        acc = backbone.score(batch).token_accuracy.tolist()
        for ex, a in zip(chunk, acc, strict=True):
            per_task[ex.task].append(a)
    backbone.model.train(was_training)
    result = {f"task/{t}": sum(v) / len(v) for t, v in sorted(per_task.items())}
    groups: dict[str, list[float]] = defaultdict(list)
    for task, values in per_task.items():
        groups[TASK_GROUPS.get(task, task)].extend(values)
    result.update({g: sum(v) / len(v) for g, v in sorted(groups.items())})
    return result


def prompt_loss(batch: LMBatch, logits: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood of the prompt tokens: the token at position ``t``
    of a prompt span is predicted by the logits at ``t - 1`` (a prompt's first token only when
    something precedes it: BOS or the vision tokens)."""
    mask = batch.span_mask("prompt").to(logits.device)[:, 1:]
    targets = batch.input_ids.to(logits.device)[:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -(token_logp * mask).sum() / mask.sum().clamp(min=1)


def anneal_factor(progress: float, anneal: float, floor: float = 0.1) -> float:
    """Learning-rate multiplier at ``progress`` (elapsed / budget): 1 until ``1 - anneal``, then
    linear down to ``floor`` at the end of the budget (and ``floor`` after it)."""
    if anneal <= 0 or progress <= 1 - anneal:
        return 1.0
    return max(floor, 1.0 - (1.0 - floor) * (progress - (1 - anneal)) / anneal)


def time_to_targets(
    curve: list[dict[str, float]], targets: dict[str, float]
) -> dict[str, dict[str, float] | None]:
    """Per task group, the first held-out evaluation of ``curve`` at or above its target:
    ``{"step", "seconds"}`` (seconds since the run started), or None if none was."""
    reached: dict[str, dict[str, float] | None] = {}
    for group, target in targets.items():
        rows = [row for row in curve if row.get(f"heldout/{group}", -1.0) >= target]
        reached[group] = (
            {"step": rows[0]["step"], "seconds": rows[0].get("seconds", math.nan)} if rows else None
        )
    return reached


def _reached(accuracy: dict[str, float], targets: dict[str, float]) -> bool:
    return all(accuracy.get(group, 0.0) >= value for group, value in targets.items())


# ---------------------------------------------------------------------- the run


def cache_key(config: PretrainConfig) -> str:
    """Hash of the pretraining config (without out / tracking) and the world's manifest."""
    manifest = (Path(config.world) / "world.json").read_bytes()
    world = hashlib.sha256(manifest).hexdigest()[:16]
    return f"{config.arch}-{config_hash(_keyed(config))}-{world}"


def _keyed(config: PretrainConfig) -> PretrainConfig:
    from dataclasses import replace

    return replace(
        config,
        out=Path("."),
        tracking=TrackingConfig(),
        world=Path("."),
        threads=0,
        device="cpu",
    )


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Build the twin, run both stages, save it to ``config.out`` with its accuracies."""
    from liveedit.progress import progress_bar
    from liveedit.world.build import load_world

    start = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    targets = dict(config.targets or DEFAULT_TARGETS)
    world = load_world(config.world, check_images=False)
    train = _read_corpus(world.corpus_path("train"))
    heldout = _stratified(_read_corpus(world.corpus_path("heldout")), config.eval_examples, 0)
    images = _ImageCache(world.image_root)

    from dataclasses import asdict

    backbone = build_twin(config.arch, world.vocabulary, seed=config.seed, **asdict(config.twin))
    backbone.to(config.device)
    tracker = Tracker(config.tracking, run_name=f"pretrain-{config.arch}")
    tracker.log_params(flatten(config))
    curve: list[dict[str, float]] = []

    # stage 1
    for row in vision_stage(backbone, config.vision, config.seed):
        tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, row["step"])
        curve.append(row)
    vision_steps = len(curve)  # one row per vision-stage step, both phases

    # stage 2
    stage = config.language
    backbone.unfreeze()
    backbone.model.train()
    vision_params = {id(p) for p in backbone.vision_tower.parameters()}
    groups = [
        {"params": [p for p in backbone.model.parameters() if id(p) not in vision_params]},
        {
            "params": [p for p in backbone.model.parameters() if id(p) in vision_params],
            "lr": stage.lr * stage.vision_lr_scale,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay)
    base_lrs = [g.get("lr", stage.lr) for g in optimizer.param_groups]
    sampler = GroupSampler(
        [e.task for e in train], stage.group_weights or DEFAULT_GROUP_WEIGHTS, config.seed
    )
    accuracy: dict[str, float] = {}
    reached, step = False, 0
    budget = 60 * config.max_minutes  # seconds, both stages
    bar = progress_bar("pretrain", total=stage.steps)
    try:
        for step in range(stage.steps):
            progress = (time.monotonic() - start) / budget if budget > 0 else 1.0
            lr_scale = min(1.0, (step + 1) / max(1, stage.warmup))  # warm-up
            lr_scale *= anneal_factor(progress, stage.anneal)
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr * lr_scale
            chunk = [train[i] for i in sampler.draw(stage.batch_size)]
            batch = backbone.build_inputs(
                [images.get(e.image) for e in chunk],
                [e.prompt for e in chunk],
                [e.target for e in chunk],
            )
            logits = backbone.forward(batch)
            scores = backbone.score(batch, logits)
            answer_loss = -(scores.logprobs.sum() / scores.mask.sum())
            loss = answer_loss
            if stage.prompt_loss_weight > 0:
                loss = loss + stage.prompt_loss_weight * prompt_loss(batch, logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(backbone.model.parameters(), 1.0)
            optimizer.step()
            row = {"step": vision_steps + step, "loss": answer_loss.item()}
            if stage.prompt_loss_weight > 0:
                row["total_loss"] = loss.item()
            curve.append(row)
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, row["step"])
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
            out_of_time = time.monotonic() - start > budget
            if (step + 1) % config.eval_every == 0 or out_of_time or step + 1 == stage.steps:
                accuracy = evaluate_corpus(backbone, heldout, images)
                tracker.log_metrics({f"heldout/{k}": v for k, v in accuracy.items()}, row["step"])
                curve.append(
                    {
                        "step": row["step"],
                        "seconds": round(time.monotonic() - start, 1),
                        **{f"heldout/{k}": v for k, v in accuracy.items()},
                    }
                )
                bar.write(
                    f"step {step + 1} ({(time.monotonic() - start) / 60:.1f} min): "
                    + ", ".join(f"{g} {accuracy.get(g, math.nan):.3f}" for g in targets)
                    + "  ("
                    + ", ".join(
                        f"{k[5:]} {v:.2f}" for k, v in accuracy.items() if k.startswith("task/")
                    )
                    + ")"
                )
                if _reached(accuracy, targets):
                    reached = True
                    break
                sampler.scale(
                    {
                        group: stage.reached_weight_scale
                        for group, target in targets.items()
                        if accuracy.get(group, 0.0) >= target
                    }
                )
            if out_of_time:
                break
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        bar.close()
    backbone.freeze()
    backbone.to("cpu")
    seconds = time.monotonic() - start
    metadata = {
        "pretraining": {
            "world": str(Path(config.world).resolve()),
            "world_seed": world.manifest.get("seed"),
            "steps": vision_steps + step + 1,
            "seconds": round(seconds, 1),
            "reached_targets": reached,
            "targets": targets,
            "reached_at": time_to_targets(curve, targets),
            "accuracy": {k: round(v, 4) for k, v in accuracy.items()},
            "cache_key": cache_key(config),
        }
    }
    out = Path(config.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    backbone.save_pretrained(tmp, metadata=metadata)
    (tmp / "pretrain_curve.json").write_text(json.dumps(curve))
    save_config(config, tmp, "pretrain_config.yaml")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    tracker.log_artifact(out / "pretrain_curve.json")
    tracker.log_metrics(
        {"seconds": seconds, "reached_targets": float(reached)}, vision_steps + step
    )
    tracker.finish()
    return PretrainResult(out, accuracy, reached, vision_steps + step + 1, seconds, curve)


def cache_root() -> Path:
    """Where pretrained twins are cached: ``$LIVEEDIT_CACHE`` or ``.cache/liveedit`` in the
    working directory."""
    return Path(os.environ.get("LIVEEDIT_CACHE", Path.cwd() / ".cache" / "liveedit")) / "twins"


def ensure_twin(config: PretrainConfig) -> PretrainResult:
    """The pretrained twin for ``config``: reused from the cache when one with the same key
    (config + world manifest) exists, pretrained and cached otherwise. ``config.out`` is then a
    copy of the cached directory."""
    cached = cache_root() / cache_key(config)
    if not (cached / "config.json").is_file():
        from dataclasses import replace

        result = pretrain(replace(config, out=cached))
    else:
        info = json.loads((cached / "liveedit_backbone.json").read_text())["metadata"]
        meta = info["pretraining"]
        result = PretrainResult(
            cached,
            meta["accuracy"],
            meta["reached_targets"],
            meta["steps"],
            meta["seconds"],
            [],
            True,
        )
    out = Path(config.out)
    if out.resolve() != cached.resolve():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(cached, out)
        result.out = out
    return result
