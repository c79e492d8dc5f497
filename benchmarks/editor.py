"""LiveEdit costs on a tiny twin, measured side by side in one run (JSON out).

- edit latency: one ``LiveEdit.apply`` of one edit vs one full backbone forward (ratio);
- per-edit cost of a batch of 1 vs a batch of 32 edits;
- inference overhead of ``LiveEdit.score`` with 0 / 100 / 1,000 / 10,000 stored experts vs the
  bare backbone (ratios, batch of 8 multimodal inputs);
- bytes per stored expert.

Usage: ``python benchmarks/editor.py [--backbone DIR] [--arch llava-1.5] [--threads 1]
[--out benchmarks/results/editor.json]``. Without ``--backbone`` a random-init twin is built
(forward timings do not depend on the weights; the mixture cost depends on how many experts
pass hard routing, so pass ``--editor`` for trained routing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, help="a saved backbone (default: random twin)")
    parser.add_argument("--arch", default="llava-1.5")
    parser.add_argument("--world", type=Path, help="a world (default: a tiny one in a temp dir)")
    parser.add_argument("--editor", type=Path, help="trained LiveEdit weights (default: random)")
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/editor.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import tempfile

    from liveedit.backbones import build_twin, load_backbone
    from liveedit.data.loaders import load_records
    from liveedit.editors.base import edit_samples
    from liveedit.editors.liveedit import LiveEditConfig, LiveEditModules
    from liveedit.editors.liveedit.editor import LiveEdit
    from liveedit.world.build import build_world, load_world

    world_dir = args.world
    if world_dir is None:
        world_dir = Path(tempfile.mkdtemp()) / "world"
        build_world(world_dir, families=("vqa",), size="tiny", seed=0)
    world = load_world(world_dir, check_images=False)
    if args.backbone:
        backbone = load_backbone(args.backbone)
    else:
        backbone = build_twin(args.arch, world.vocabulary, seed=0)
    records = load_records("evqa", world_dir / "vqa" / "train.json", world_dir / "images").records
    samples = edit_samples(records)
    while len(samples) < 32:
        samples = samples + samples
    if args.editor:
        editor = LiveEdit.from_pretrained(backbone, args.editor)
        cfg = editor.cfg
    else:
        cfg = LiveEditConfig(
            d=backbone.hidden_size, n_vision=backbone.num_vision_tokens, layer=args.layer
        )
        editor = LiveEdit(backbone, LiveEditModules(cfg))

    def unique(batch):
        return [
            type(s)(f"{s.edit_id}-{time.perf_counter_ns()}-{i}", s.image, s.prompt, s.target)
            for i, s in enumerate(batch)
        ]

    one = samples[:1]
    forward_batch = backbone.build_inputs(
        [s.image for s in one], [s.prompt for s in one], [s.target for s in one]
    )

    with torch.no_grad():
        t_forward = timed(lambda: backbone.forward(forward_batch), args.repeat)
    t_edit1 = timed(lambda: editor.apply(unique(one)), args.repeat)
    t_edit32 = timed(lambda: editor.apply(unique(samples[:32])), args.repeat)
    editor.reset()

    probe = samples[:8]
    batch = backbone.build_inputs(
        [s.image for s in probe], [s.prompt for s in probe], [s.target for s in probe]
    )
    with torch.no_grad():
        t_bare = timed(lambda: backbone.score(batch), args.repeat)
    overhead = {}
    # fill the repository with copies of real experts (routing cost depends on count, not values)
    editor.apply(unique(samples[:32]))
    views = editor.repository.views()
    template = [t.clone() for t in (views.U, views.V, views.phi, views.psi)]
    for count in (0, 100, 1000, 10000):
        editor.reset()
        while len(editor.repository) < count:
            take = min(32, count - len(editor.repository))
            ids = [f"bench-{len(editor.repository) + i}" for i in range(take)]
            editor.repository.append(*(t[:take] for t in template), ids)
        t = timed(lambda: editor.score(batch), args.repeat)
        overhead[str(count)] = {"seconds": t, "ratio_to_bare": t / t_bare}

    result = {
        "backbone": backbone.arch,
        "d": backbone.hidden_size,
        "layers": backbone.num_layers,
        "editor": {"d_m": cfg.d_m, "r": cfg.r, "k": cfg.k, "layer": cfg.layer},
        "threads": args.threads,
        "forward_1_seconds": t_forward,
        "edit_1_seconds": t_edit1,
        "edit_vs_forward_ratio": t_edit1 / t_forward,
        "per_edit_seconds_batch_1": t_edit1,
        "per_edit_seconds_batch_32": t_edit32 / 32,
        "batch_32_speedup_per_edit": t_edit1 / (t_edit32 / 32),
        "score_batch_8_bare_seconds": t_bare,
        "score_overhead_by_stored_experts": overhead,
        "bytes_per_expert": editor.repository.bytes_per_expert,
        "trained_editor": bool(args.editor),
        "note": "experts beyond the first 32 are copies; with an untrained editor hard routing "
        "keeps many of them, so the mixture cost grows with the count",
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
