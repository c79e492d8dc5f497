"""Throughput of the tiny backbone twins: forward and teacher-forced scoring (samples/s).

For each architecture (random-init twins with the default sizes: LM d=128, 8 layers, 48 px
images, N_v=9) and batch size 1, 8, 32, times on one prebuilt batch of world-like examples
(an image, a question prompt, a 1-3 word target; every 4th example text-only, like T-Loc):

- ``build_inputs``: tokenisation, layout and image preprocessing;
- ``forward``: logits under ``torch.no_grad()``;
- ``score``: forward + teacher-forced scoring of the target tokens.

On a GPU (``--device cuda``) the forward and scoring are timed with the device synchronised
after each call, in fp32 and, with ``--dtype bfloat16``, in bf16 weights.

With ``--pretrain-world DIR``, each architecture is also pretrained on that world with the
default recipe (``liveedit backbone pretrain``'s defaults: every task group, every target) for at
most ``--pretrain-minutes``, and the time at which each group first reached its held-out target
is recorded (evaluations every 1,000 steps, so a time is an upper bound by up to one interval).
``--pretrain-set key=value ...`` changes the recipe (``PretrainConfig`` fields, as on the
command line of ``liveedit backbone pretrain``); ``--twins DIR ...`` reports twins already
pretrained (by ``liveedit backbone pretrain``) instead of training new ones.

Usage: ``python benchmarks/backbones.py [--out FILE] [--min-time 1.0] [--batches 1 8 32]
[--threads N] [--device cuda] [--dtype float32 bfloat16] [--pretrain-world DIR
[--pretrain-minutes 30] [--pretrain-set key=value ...] [--pretrain-only]] [--twins DIR ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from liveedit.backbones import build_twin  # noqa: E402
from liveedit.backbones.twins import TWIN_ARCHS  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
PLACES = ["top", "middle", "bottom", "left", "right", "centre"]
WORDS = [
    *COLOURS,
    *SHAPES,
    *PLACES,
    *"what colour is the shape in the ? The answer is : how many objects are there".split(),
    *"nq question : who wrote book a small big one two three".split(),
]


def examples(n: int, seed: int = 0) -> tuple[list, list[str], list[str]]:
    g = torch.Generator().manual_seed(seed)
    images, prompts, targets = [], [], []
    for i in range(n):
        pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
        if i % 4 == 3:
            images.append(None)
            prompts.append("nq question : who wrote the small book ?")
            targets.append(f"{pick(COLOURS)} {pick(SHAPES)}")
        else:
            pixels = torch.randint(0, 256, (48, 48, 3), generator=g, dtype=torch.uint8)
            images.append(Image.fromarray(pixels.numpy(), "RGB"))
            prompts.append(
                f"what colour is the {pick(SHAPES)} in the {pick(PLACES)} ? The answer is :"
            )
            targets.append(" ".join(pick(COLOURS) for _ in range(1 + i % 3)))
    return images, prompts, targets


def rate(fn: Callable[[], object], batch: int, min_time: float, sync: bool = False) -> float:
    """Samples per second of ``fn`` (one batch per call): batch / median call time over at least
    ``min_time`` seconds and 5 calls, after two warm-up calls. The median keeps the figure stable
    on a machine shared with other jobs."""

    def call() -> None:
        fn()
        if sync:
            torch.cuda.synchronize()

    call()
    call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--archs", nargs="+", default=list(TWIN_ARCHS))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's). On a shared 2-core machine use 1: with 2 "
        "threads, a job holding the other core made every forward ~50x slower (OpenMP barriers)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16"],
        help="weight dtypes to time (bf16 is meant for GPUs)",
    )
    parser.add_argument("--pretrain-world", help="also time pretraining on this world")
    parser.add_argument("--pretrain-minutes", type=float, default=30.0)
    parser.add_argument("--pretrain-out", default="runs/bench_twins", help="where twins go")
    parser.add_argument("--pretrain-only", action="store_true", help="skip the throughput part")
    parser.add_argument(
        "--pretrain-set", nargs="+", default=[], help="recipe overrides, key.sub=value"
    )
    parser.add_argument(
        "--twins", nargs="+", type=Path, default=[], help="report these pretrained twins"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {}
    if not args.pretrain_only and not args.twins:
        report = throughput(args)
    if args.pretrain_world:
        report["pretraining"] = pretraining(args)
    if args.twins:  # after any runs trained here, in the same list
        runs = report.setdefault("pretraining", {"runs": []})["runs"]
        runs += [pretraining_row(None, twin) for twin in args.twins]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return report


def pretraining(args: argparse.Namespace) -> dict:
    """Pretrain each architecture with the default recipe (changed by ``--pretrain-set``); held-out
    accuracy and time to target."""
    from liveedit.backbones.pretrain import PretrainConfig, pretrain
    from liveedit.config import load_config

    rows = []
    for arch in args.archs:
        config = load_config(
            PretrainConfig,
            overrides=[
                f"world={args.pretrain_world}",
                f"arch={arch}",
                f"out={Path(args.pretrain_out) / arch}",
                f"max_minutes={args.pretrain_minutes}",
                "eval_every=1000",
                f"threads={args.threads or 0}",
                f"device={args.device}",
                "tracking.enabled=false",
                *args.pretrain_set,
            ],
        )
        result = pretrain(config)
        row = pretraining_row(arch, result.out)
        rows.append(row)
        print(
            f"{arch:<10} {result.steps} steps, {result.seconds / 60:.1f} min, "
            + ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(row["heldout_accuracy"].items()))
            + f", targets reached: {result.reached}"
        )
    return {
        "max_minutes": args.pretrain_minutes,
        "world": args.pretrain_world,
        "overrides": args.pretrain_set,
        "runs": rows,
    }


def pretraining_row(arch: str | None, twin: Path) -> dict:
    """The figures of one pretraining run, read from what pretrain() saved in ``twin``: held-out
    accuracy per group and per task, time to target, the last probe accuracies of each vision
    phase, the held-out curve, and the recipe (``pretrain_config.yaml``)."""
    import yaml

    from liveedit.backbones.base import inspect_backbone_dir

    found = inspect_backbone_dir(twin)
    info = found.info["metadata"]["pretraining"]
    recipe = yaml.safe_load((twin / "pretrain_config.yaml").read_text())
    curve = json.loads((twin / "pretrain_curve.json").read_text())
    probes = {}
    for phase in ("tower", "bridge"):
        rows = [r for r in curve if f"{phase}_probe_loss" in r]
        if rows:
            probes[phase] = {"steps": len(rows), **{k: round(v, 4) for k, v in rows[-1].items()}}
    accuracy = info["accuracy"]
    return {
        "arch": arch or found.arch,
        "twin": str(twin),
        "recipe": {
            k: recipe[k] for k in ("world", "max_minutes", "eval_every", "vision", "language")
        },
        "steps": info["steps"],
        "seconds": round(info["seconds"], 1),
        "reached_all_targets": info["reached_targets"],
        "heldout_accuracy": {k: round(v, 4) for k, v in accuracy.items() if "/" not in k},
        "heldout_task_accuracy": {
            k.removeprefix("task/"): round(v, 4) for k, v in accuracy.items() if "/" in k
        },
        "time_to_target": info["reached_at"],  # pretrain()'s targets and evaluations
        "vision_probes": probes,  # accuracy on occupied cells (cell: on every token)
        "curve": [
            {k: v for k, v in r.items() if not k.startswith("heldout/task/")}
            for r in curve
            if "seconds" in r
        ],
    }


def throughput(args: argparse.Namespace) -> dict:
    """Forward and scoring samples/s per architecture, dtype and batch size."""

    device = torch.device(args.device)
    sync = device.type == "cuda"
    results = []
    print(f"{'arch':<10} {'dtype':<8} {'batch':>5} {'seq':>4} {'build_inputs/s':>15} ", end="")
    print(f"{'forward/s':>10} {'score/s':>9}")
    for arch in args.archs:
        for dtype in args.dtype:
            twin = build_twin(arch, WORDS, seed=0).to(device=device, dtype=getattr(torch, dtype))
            for batch_size in args.batches:
                images, prompts, targets = examples(batch_size)
                batch = twin.build_inputs(images, prompts, targets)
                on_device = batch.to(device)
                with torch.no_grad():
                    row = {
                        "arch": arch,
                        "dtype": dtype,
                        "batch": batch_size,
                        "seq_len": batch.seq_len,
                        "build_inputs_samples_per_s": rate(
                            lambda m=twin, i=images, p=prompts, t=targets: m.build_inputs(i, p, t),
                            batch_size,
                            args.min_time,
                        ),
                        "forward_samples_per_s": rate(
                            lambda m=twin, b=on_device: m.forward(b),
                            batch_size,
                            args.min_time,
                            sync,
                        ),
                        "score_samples_per_s": rate(
                            lambda m=twin, b=on_device: m.score(b),
                            batch_size,
                            args.min_time,
                            sync,
                        ),
                    }
                results.append(row)
                print(
                    f"{arch:<10} {dtype:<8} {batch_size:>5} {batch.seq_len:>4} "
                    f"{row['build_inputs_samples_per_s']:>15.0f} "
                    f"{row['forward_samples_per_s']:>10.0f} {row['score_samples_per_s']:>9.0f}"
                )
    report = {
        "benchmark": "backbones",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if sync else "cpu",
        },
        "settings": {"min_time_s": args.min_time, "twin": "defaults (d=128, 8 layers, N_v=9)"},
        "results": results,
    }
    return report


if __name__ == "__main__":
    main()
