"""The ``liveedit`` command line: one entry point, one subcommand per job.

Heavy libraries (torch, transformers, ray, mlflow) are imported inside the subcommands, so that
``liveedit --help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _overrides_help() -> str:
    return "dotted overrides applied after the config file, e.g. editor.d_m=64 train.steps=200"


# --------------------------------------------------------------------------------------------
# world


def cmd_world_build(args: argparse.Namespace) -> int:
    from liveedit.config import load_config, save_config
    from liveedit.world.build import build_world
    from liveedit.world.config import WorldConfig

    overrides = list(args.overrides)
    for key in ("out", "size", "seed", "families"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(WorldConfig, args.config, overrides)
    summary = build_world(config.out, families=config.families, size=config.size, seed=config.seed)
    save_config(config, config.out)
    print(summary.format())
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# data


def cmd_data_check(args: argparse.Namespace) -> int:
    from liveedit.data.loaders import check_data

    result = check_data(args.format, args.json, args.image_root, skip_invalid=args.skip_invalid)
    print(result.summary())
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# backbones


def cmd_backbone_pretrain(args: argparse.Namespace) -> int:
    from liveedit.backbones.pretrain import PretrainConfig, ensure_twin, pretrain
    from liveedit.config import load_config

    overrides = list(args.overrides)
    for key in ("arch", "world", "out"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(PretrainConfig, args.config, overrides)
    result = pretrain(config) if args.no_cache else ensure_twin(config)
    source = "reused from the cache" if result.cached else f"pretrained in {result.seconds:.0f} s"
    print(f"{config.arch} twin -> {result.out} ({source}, {result.steps} steps)")
    for group, value in sorted(result.accuracy.items()):
        if not group.startswith("task/"):
            print(f"  held-out token accuracy {group:10s} {100 * value:6.2f}")
    print(f"  targets reached: {'yes' if result.reached else 'no'}")
    return EXIT_OK


def cmd_backbone_info(args: argparse.Namespace) -> int:
    from liveedit.backbones import describe, load_backbone

    info = describe(load_backbone(args.directory))
    meta = info.pop("metadata", {}) or {}
    for key, value in info.items():
        print(f"{key:18s} {value}")
    pre = meta.get("pretraining")
    if pre:
        print(f"{'pretraining':18s} {pre.get('steps')} steps, {pre.get('seconds')} s")
        for group, value in sorted(pre.get("accuracy", {}).items()):
            if not group.startswith("task/"):
                print(f"  {group:16s} {100 * value:6.2f}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# editor


def _ray_flags(args: argparse.Namespace, pool: str, flags: dict[str, str]) -> list[str]:
    """Overrides of the ``distributed`` section from the Ray flags; a Ray flag without
    ``--{pool} N`` (N >= 1) is an error."""
    count = getattr(args, pool)
    if count < 0:
        raise ValueError(f"--{pool} {count}: must be >= 0")
    overrides = [f"distributed.{pool}={count}"] if count else []
    for flag, key in flags.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if not getattr(args, pool):
            raise ValueError(f"--{flag.replace('_', '-')} needs --{pool} N (N >= 1)")
        overrides.append(f"distributed.{key}={value}")
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from liveedit.config import load_config

    ray_overrides = _ray_flags(
        args,
        "workers",
        {
            "gpus_per_worker": "gpus_per_worker",
            "zero_stage": "zero_stage",
            "address": "cluster.address",
        },
    )
    if args.workers:
        from liveedit.distributed import DistributedTrainConfig, import_trainables

        config = load_config(DistributedTrainConfig, args.config, [*args.overrides, *ray_overrides])
        import_trainables()
        from trainables.meta_train import run_meta_training

        result = run_meta_training(config)
        print(
            f"LiveEdit meta-training on Ray Train ({config.distributed.workers} workers, "
            f"DeepSpeed ZeRO-{config.distributed.zero_stage}): {result.steps} steps "
            f"({result.stopped}), best loss {result.best_loss:.4f} at step {result.best_step}, "
            f"{result.seconds:.0f} s -> {result.out / 'best'}"
        )
        return EXIT_OK

    from liveedit.editors.liveedit.trainer import TrainConfig, train

    config = load_config(TrainConfig, args.config, list(args.overrides))
    result = train(config)
    print(
        f"LiveEdit meta-training: {result.steps} steps ({result.stopped}), best loss "
        f"{result.best_loss:.4f} at step {result.best_step}, {result.seconds:.0f} s -> "
        f"{result.out / 'best'}"
    )
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# evaluation and tracking


def cmd_eval(args: argparse.Namespace) -> int:
    from liveedit.evaluation.grid import load_eval_config, run_eval

    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    if args.no_tracking:
        overrides.append("tracking.enabled=false")
    ray_overrides = _ray_flags(
        args,
        "actors",
        {"gpus_per_actor": "gpus_per_actor", "address": "cluster.address"},
    )
    if args.actors:
        from liveedit.config import load_config
        from liveedit.distributed import DistributedEvalConfig, import_trainables

        config = load_config(DistributedEvalConfig, args.config, [*overrides, *ray_overrides])
        import_trainables()
        from trainables.eval_actors import run_eval_actors

        print(run_eval_actors(config).summary())
        return EXIT_OK
    result = run_eval(load_eval_config(args.config, overrides))
    print(result.summary())
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from liveedit.sweeps.spec import check_inputs, describe_points, load_spec, spec_hash

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"cluster.address={args.address}")
    if args.tracking_uri:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    spec = load_spec(args.spec, overrides, tiny=args.tiny)
    if args.dry_run:
        print(f"sweep {spec.name} (spec hash {spec_hash(spec)}): {spec.description}".rstrip(": "))
        print("\n".join(describe_points(spec)))
        problems = check_inputs(spec)
        for problem in problems:
            print(f"  problem: {problem}")
        return EXIT_ERROR if problems else EXIT_OK
    from liveedit.distributed import import_trainables

    import_trainables()
    from trainables.sweep import run_sweep

    result = run_sweep(spec, show_progress=not args.quiet)
    print(result.summary())
    return EXIT_OK if result.counts.get("completed") else EXIT_ERROR


def cmd_report(args: argparse.Namespace) -> int:
    from liveedit.sweeps.report import collect, write_report
    from liveedit.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri or "")
    record = collect(uri, args.experiment, args.run_id)
    out = args.out or Path("runs") / "reports" / args.experiment
    files = write_report(record, out)
    done = len(record.completed())
    print(f"sweep {record.name} (run {record.run_id}): {len(record.trials)} trials, {done} done")
    for file in files:
        print(f"  {file}")
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from liveedit.tracking import resolve_uri, ui_command

    print(f"MLflow UI for {resolve_uri(args.tracking_uri or '')} on http://{args.host}:{args.port}")
    return subprocess.call(ui_command(args.tracking_uri or "", args.host, args.port))


def cmd_demo(args: argparse.Namespace) -> int:
    from liveedit.config import load_config
    from liveedit.demo import DemoConfig, run_demo

    run_demo(load_config(DemoConfig, args.config, list(args.overrides)))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# parser


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand parser whose options and ``KEY=VALUE`` positionals may come in any order
    (``liveedit sweep SPEC --tiny base.train.steps=4``)."""

    _intermixed = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._intermixed:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liveedit",
        description="Lifelong editing of vision-language models (LiveEdit): build the synthetic "
        "world, check datasets, pretrain tiny backbones, meta-train the editor, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    world = sub.add_parser("world", help="the synthetic visual world (the embedded benchmark)")
    world_sub = world.add_subparsers(dest="world_command", metavar="ACTION", required=True)
    build = world_sub.add_parser(
        "build",
        help="generate a world: scenes, E-VQA/E-IC/VLKEB-schema JSON, PNG images, corpus",
        description="Generate a deterministic synthetic world in the public MMEdit / VLKEB JSON "
        "schemas (vqa -> E-VQA, caption -> E-IC, knowledge -> VLKEB) plus the backbones' "
        "pretraining corpus, and print its summary. The resolved config is saved as "
        "OUT/config.yaml.",
    )
    build.add_argument("--out", type=Path, help="output directory (default worlds/default)")
    build.add_argument(
        "--families", help="comma-separated subset of vqa,caption,knowledge (default all)"
    )
    build.add_argument(
        "--size",
        help="tiny (tests), small (the demo, default) or paper (the paper's split sizes)",
    )
    build.add_argument("--seed", help="random seed; the same seed writes the same bytes")
    build.add_argument("--config", type=Path, help="a YAML WorldConfig file")
    build.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_overrides_help())
    build.set_defaults(func=cmd_world_build)

    data = sub.add_parser("data", help="dataset files in the public schemas")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_sub.add_parser(
        "check",
        help="validate an E-VQA / E-IC / VLKEB JSON file and its images",
        description="Validate a dataset file and its images completely and print counts "
        "(records, skipped with reason, images found). Exit status 1 on any error, naming the "
        "file, the record index and the field.",
    )
    check.add_argument("--format", required=True, choices=("evqa", "eic", "vlkeb"))
    check.add_argument("--json", required=True, type=Path, help="the dataset JSON file")
    check.add_argument(
        "--image-root", required=True, type=Path, help="directory the image paths are relative to"
    )
    check.add_argument(
        "--skip-invalid",
        action="store_true",
        help="count malformed records as skipped instead of failing",
    )
    check.set_defaults(func=cmd_data_check)

    backbone = sub.add_parser("backbone", help="VLLM backbones: pretrain tiny twins, inspect")
    backbone_sub = backbone.add_subparsers(dest="backbone_command", metavar="ACTION", required=True)
    pre = backbone_sub.add_parser(
        "pretrain",
        help="pretrain a tiny twin (blip2-opt, llava-1.5, minigpt4) on a world's corpus",
        description="Build a tiny twin of a real architecture and pretrain it on the world's "
        "corpus (vision tower first, then the whole model) until the held-out accuracy targets "
        "are met or max_minutes pass; saved with save_pretrained + tokenizer + processor. "
        "Twins are cached by a key of the config and the world ($LIVEEDIT_CACHE or "
        ".cache/liveedit); a second call with the same inputs copies the cached twin.",
    )
    pre.add_argument("--arch", choices=("blip2-opt", "llava-1.5", "minigpt4"))
    pre.add_argument("--world", type=Path, help="a world built by `liveedit world build`")
    pre.add_argument("--out", type=Path, help="output directory of the twin")
    pre.add_argument("--config", type=Path, help="a YAML PretrainConfig file")
    pre.add_argument("--no-cache", action="store_true", help="always pretrain, skip the cache")
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_overrides_help())
    pre.set_defaults(func=cmd_backbone_pretrain)
    info = backbone_sub.add_parser(
        "info",
        help="architecture, d, N_v, layers, parameters and pretraining accuracy of a backbone",
    )
    info.add_argument("directory", type=Path, help="a from_pretrained backbone directory")
    info.set_defaults(func=cmd_backbone_info)

    train = sub.add_parser(
        "train",
        help="meta-train LiveEdit on one world family and one backbone",
        description="Meta-train the LiveEdit editor (expert generator, feature extractors, "
        "vision sentinel) over a frozen backbone; checkpoints and resumes from OUT, keeps the "
        "best weights in OUT/best, logs every loss component to MLflow.",
    )
    train.add_argument("--config", type=Path, help="a YAML TrainConfig file")
    ray_train = train.add_argument_group(
        "Ray Train + DeepSpeed",
        "--workers N >= 1 runs the same training step on N Ray Train workers with DeepSpeed "
        "ZeRO (config section `distributed`, trainables/README.md); checkpoints and resume "
        "through Ray Train under OUT/ray, the best weights exported to OUT/best.",
    )
    ray_train.add_argument(
        "--workers", type=int, default=0, help="Ray Train workers (default 0: single process)"
    )
    ray_train.add_argument("--gpus-per-worker", type=int, help="GPUs per worker (default 0: CPU)")
    ray_train.add_argument("--zero-stage", type=int, help="DeepSpeed ZeRO stage 0-3 (default 2)")
    ray_train.add_argument(
        "--address",
        help="a running Ray cluster (default: $RAY_ADDRESS, else a new local instance)",
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_overrides_help())
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "eval",
        help="the lifelong benchmark: (backbone, dataset, editor, #edits, seed) grid -> Table 1",
        description="Run the lifelong editing protocol over a grid of cells (backbones x "
        "datasets x editors x #edits x seeds). Finished cells are cached under OUT/cells and "
        "skipped on a re-run; the Table-1-shaped table is written as markdown, CSV and LaTeX, "
        "and everything is tracked in MLflow (one parent run per grid, a child run per cell).",
    )
    evaluate.add_argument("--config", type=Path, help="a YAML EvalConfig file")
    evaluate.add_argument("--tracking-uri", help="MLflow tracking URI (default: ./mlflow.db)")
    evaluate.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    ray_eval = evaluate.add_argument_group(
        "Ray actors",
        "--actors N >= 1 evaluates the cells on N Ray actors, each holding one backbone replica "
        "(config section `distributed`, trainables/README.md); same cache, table and MLflow runs.",
    )
    ray_eval.add_argument(
        "--actors", type=int, default=0, help="evaluation actors (default 0: single process)"
    )
    ray_eval.add_argument(
        "--gpus-per-actor", type=float, help="GPUs per actor, fractional allowed (default 0)"
    )
    ray_eval.add_argument(
        "--address",
        help="a running Ray cluster (default: $RAY_ADDRESS, else a new local instance)",
    )
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_overrides_help())
    evaluate.set_defaults(func=cmd_eval)

    sweep = sub.add_parser(
        "sweep",
        help="a Ray Tune sweep (Optuna / grid, ASHA) of meta-training + lifelong evaluation",
        description="Run the sweep of a spec (sweeps/*.yaml): each trial meta-trains LiveEdit "
        "(reporting its loss at every checkpoint, so ASHA can stop it) and evaluates the "
        "editor with the lifelong protocol; the objective is the five-metric average (or one "
        "metric) at the spec's #edits. Tune state goes to <storage>/<name>: re-running the same "
        "command resumes the sweep. MLflow: a parent run per sweep, a child run per trial, the "
        "paper's figures / tables as artifacts (see `liveedit report`).",
    )
    sweep.__class__ = _IntermixedParser  # options and overrides in any order
    sweep.add_argument("spec", type=Path, help="a sweep spec, e.g. sweeps/fig3_dm_r.yaml")
    sweep.add_argument(
        "--tiny", action="store_true", help="apply the spec's tiny: block (a 2-core variant)"
    )
    sweep.add_argument(
        "--address",
        help="Ray cluster (auto, HOST:6379, ray://HOST:10001; default $RAY_ADDRESS or local)",
    )
    sweep.add_argument("--tracking-uri", help="MLflow tracking URI (default: ./mlflow.db)")
    sweep.add_argument(
        "--dry-run", action="store_true", help="validate, list the trials and check the inputs"
    )
    sweep.add_argument("--quiet", action="store_true", help="no Tune progress output")
    sweep.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of the spec, e.g. base.train.steps=200 num_samples=20 "
        "search.train.editor.d_m.grid=[32,64]",
    )
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser(
        "report",
        help="rebuild a sweep's figures and tables from MLflow",
        description="Read a sweep's parent run and its trial runs from MLflow and write the "
        "paper-shaped report: Fig. 3's d_m x r grid, Figs. 4/5's metric curves, Tables 1/2 "
        "(markdown, CSV, LaTeX), the trials table and the objective per trial.",
    )
    report.add_argument("--experiment", required=True, help="the MLflow experiment (the sweep)")
    report.add_argument("--run-id", help="a sweep's parent run (default: the latest sweep)")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: ./mlflow.db)")
    report.add_argument("--out", type=Path, help="output folder (default runs/reports/NAME)")
    report.set_defaults(func=cmd_report)

    demo = sub.add_parser(
        "demo",
        help="the whole product on the embedded default: world, twin, LiveEdit, lifelong table",
        description="Build the synthetic world, pretrain (or reuse) a tiny twin, meta-train "
        "LiveEdit and run the lifelong table (N/A, FT-L, FT-M, LiveEdit at 1/10/100/1000 edits), "
        "tracked in MLflow. Every step reuses finished work in OUT (default runs/demo).",
    )
    demo.add_argument("--config", type=Path, help="a YAML DemoConfig file")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_overrides_help())
    demo.set_defaults(func=cmd_demo)

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 over the tracking store")
    ui.add_argument("--tracking-uri", help="MLflow tracking URI (default: ./mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 a reported error, 2 a usage error)."""
    # ConfigError, DataError, BackboneError and RepositoryMismatch are ValueErrors whose messages
    # name the file / key / field at fault: report them without a traceback.
    errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except errors as exc:
        print(f"liveedit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
