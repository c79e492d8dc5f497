"""The Ray platform's costs on a tiny twin, measured side by side in one run (JSON out).

- meta-training steps/s: the library's single-process loop (``liveedit train``) vs Ray Train +
  DeepSpeed ZeRO-2 (``liveedit train --workers N``) with 1 and 2 workers, and ZeRO-3 (every
  parameter partitioned) with 2 workers, on the same global batch per step (2 workers each
  process half of it). Steady state, start-up excluded: for the library
  ``W / (t(2W steps) - t(W steps))`` from two fresh runs after a warm-up run (the first run in
  a process pays one-time costs that would inflate the rate); for Ray the trainer's own
  ``steps_per_s`` of its second checkpoint window (W steps, checkpoint I/O excluded), read from
  ``train_result.json``. The wall time of a whole Ray run (worker start, DeepSpeed init,
  checkpoints) is reported beside it.
- evaluation grid wall time: the single-process grid vs 1 and 2 Ray actors, on the same cells
  (fresh cache each time; the Ray instance is started once, before the timings).

Ratios are taken between numbers measured in this run only. Usage:
``python benchmarks/ray_platform.py [--world DIR --backbone DIR] [--window 10] [--batch-size 8]
[--out FILE]``; without ``--world`` / ``--backbone`` a tiny world and a random LLaVA twin (d 64,
4 layers, as in the tests) are built in a temp folder. Runs on CPU: with fewer free cores than
workers/actors, the parallel numbers measure contention, not scaling — note the machine's load
with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _tiny_inputs(root: Path) -> tuple[Path, Path]:
    import torch

    from liveedit.backbones import build_twin
    from liveedit.world.build import build_world, load_world

    world = root / "world"
    build_world(world, size="tiny", seed=0)
    twin = build_twin(
        "llava-1.5",
        load_world(world, check_images=False).vocabulary,
        seed=0,
        hidden_size=64,
        num_layers=4,
    )
    with torch.no_grad():
        twin.model.get_output_embeddings().weight.mul_(30.0)
    twin.save_pretrained(root / "llava")
    return world, root / "llava"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path)
    parser.add_argument("--backbone", type=Path)
    parser.add_argument("--window", type=int, default=10, help="W: steps per measured window")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cells-records", type=int, default=20, help="max_records per cell")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_platform.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ray

    from liveedit.config import load_config
    from liveedit.distributed import ActorPoolConfig, DistributedEvalConfig, DistributedTrainConfig
    from liveedit.editors.liveedit.trainer import TrainConfig, train
    from liveedit.evaluation.grid import EvalConfig, EvalTrackingConfig, run_eval
    from trainables.eval_actors import run_eval_actors
    from trainables.meta_train import run_meta_training

    root = Path(tempfile.mkdtemp(prefix="liveedit-bench-"))
    if args.world and args.backbone:
        world, backbone = args.world, args.backbone
    else:
        world, backbone = _tiny_inputs(root)
    window = args.window
    common = [
        f"world={world}",
        f"backbone={backbone}",
        "family=vqa",
        f"batch_size={args.batch_size}",
        "editor.d_m=32",
        "editor.heads=4",
        "editor.layer=2",
        "tracking.enabled=false",
        f"checkpoint_every={window}",
    ]
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "load_avg_start": list(os.getloadavg())},
        "window_steps": window,
        "batch_size": args.batch_size,
    }

    t = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    report["ray_init_s"] = time.perf_counter() - t

    def timed(run, steps: int, tag: str) -> tuple[float, Path]:
        out = root / f"{tag}-{steps}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        run(out, steps)
        return time.perf_counter() - start, out

    def library(out: Path, steps: int) -> None:
        train(load_config(TrainConfig, None, [*common, f"out={out}", f"steps={steps}"]), False)

    def on_ray(workers: int, stage: int = 2):
        def run(out: Path, steps: int) -> None:
            cfg = load_config(
                DistributedTrainConfig,
                None,
                [
                    *common,
                    f"out={out}",
                    f"steps={steps}",
                    f"distributed.workers={workers}",
                    f"distributed.zero_stage={stage}",
                    "distributed.zero3_persistence_threshold=0",
                ],
            )
            run_meta_training(cfg, show_progress=False)

        return run

    training: dict = {}
    timed(library, window, "library-warmup")  # first-run costs (imports, caches) excluded
    t1, _ = timed(library, window, "library")
    t2, _ = timed(library, 2 * window, "library")
    training["library"] = {"run_s": t2, "steps_per_s": window / (t2 - t1)}
    for tag, workers, stage in (("ray_1w", 1, 2), ("ray_2w", 2, 2), ("ray_2w_zero3", 2, 3)):
        wall, out = timed(on_ray(workers, stage), 2 * window, tag)
        state = json.loads((out / "train_result.json").read_text())
        training[tag] = {"run_s": wall, "steps_per_s": state["steps_per_s"]}
    for tag, row in training.items():
        rate, wall = row["steps_per_s"], row["run_s"]
        print(f"train {tag:12s} {rate:6.2f} steps/s ({2 * window}-step run {wall:.1f} s)")
    lib = training["library"]["steps_per_s"]
    training["ratios"] = {
        "ray_1w_vs_library_steps_per_s": training["ray_1w"]["steps_per_s"] / lib,
        "ray_2w_vs_library_steps_per_s": training["ray_2w"]["steps_per_s"] / lib,
        "ray_2w_vs_ray_1w_steps_per_s": training["ray_2w"]["steps_per_s"]
        / training["ray_1w"]["steps_per_s"],
        "zero3_vs_zero2_2w_steps_per_s": training["ray_2w_zero3"]["steps_per_s"]
        / training["ray_2w"]["steps_per_s"],
        "ray_2w_vs_library_run_wall": training["ray_2w"]["run_s"] / training["library"]["run_s"],
    }
    report["training"] = training

    def grid(cls, out: str, **extra):
        return cls(
            study="bench-grid",
            world=world,
            datasets=["vqa"],
            backbones={"llava": backbone},
            editors=["none", "ft-l"],
            editor_options={"ft-l": {"steps": 5}},
            edits=[1, 3, 10],
            seeds=[0, 1, 2],
            max_records=args.cells_records,
            threads=1,
            out=root / out,
            progress=False,
            tracking=EvalTrackingConfig(enabled=False),
            **extra,
        )

    evaluation: dict = {}
    start = time.perf_counter()
    single = run_eval(grid(EvalConfig, "eval-single"))
    evaluation["single_process_s"] = time.perf_counter() - start
    evaluation["cells"] = len(single.cells)
    for n in (1, 2):
        start = time.perf_counter()
        result = run_eval_actors(
            grid(DistributedEvalConfig, f"eval-{n}a", distributed=ActorPoolConfig(actors=n)),
            show_progress=False,
        )
        evaluation[f"actors_{n}_s"] = time.perf_counter() - start
        evaluation[f"actors_{n}_same_table"] = result.table.csv() == single.table.csv()
    evaluation["ratios"] = {
        "actors_2_vs_1_speedup": evaluation["actors_1_s"] / evaluation["actors_2_s"],
        "actors_2_vs_single_speedup": evaluation["single_process_s"] / evaluation["actors_2_s"],
    }
    print(
        f"eval {evaluation['cells']} cells: single {evaluation['single_process_s']:.1f} s, "
        f"1 actor {evaluation['actors_1_s']:.1f} s, 2 actors {evaluation['actors_2_s']:.1f} s"
    )
    report["evaluation"] = evaluation
    report["machine"]["load_avg_end"] = list(os.getloadavg())
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
