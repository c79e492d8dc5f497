"""Held-out vqa accuracy of pretrained twins, split by question form.

Every vqa question of the world's held-out corpus is parsed back into its meaning
(:func:`liveedit.world.questions.parse_question`) and scored teacher-forced on each twin (token
accuracy on the true answer, the pretraining targets' metric). Rows are (kind, the attributes the
question names, and for counts the answer): e.g. ``position / colour`` is "Where is the green
object?", ``shape / cell`` is "What shape is the object at the top left?", ``count / colour / two``
is "How many green objects?" with two of them in the scene. This shows which bindings a twin has
not learned where the per-task figure only says how many questions it misses.

Usage: ``python benchmarks/vqa_forms.py TWIN_DIR [TWIN_DIR ...] --world runs/demo/world
[--out FILE] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from liveedit.backbones import load_backbone
from liveedit.world import load_world
from liveedit.world.corpus import read_corpus
from liveedit.world.questions import parse_question

ANSWER_SUFFIX = " The answer is:"
NAMED = ("size", "colour", "shape", "cell")


def form_of(prompt: str, target: str) -> tuple[str, str, str]:
    """(kind, the referent's named attributes joined by '+' or 'plain', the answer for counts)."""
    query, _ = parse_question(prompt.removesuffix(ANSWER_SUFFIX))
    named = "+".join(a for a in NAMED if getattr(query.referent, a) is not None) or "plain"
    return query.kind, named, target if query.kind == "count" else ""


def score_forms(twin: Path, world_dir: Path, batch_size: int = 64) -> list[dict]:
    world = load_world(world_dir, check_images=False)
    examples = [e for e in read_corpus(world.corpus_path("heldout")) if e.task.startswith("vqa_")]
    backbone = load_backbone(twin)
    backbone.model.eval()
    hits: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            batch = backbone.build_inputs(
                [world.image_root / e.image for e in chunk],
                [e.prompt for e in chunk],
                [e.target for e in chunk],
            )
            accuracy = backbone.score(batch).token_accuracy.tolist()
            for ex, acc in zip(chunk, accuracy, strict=True):
                hits[form_of(ex.prompt, ex.target)].append(acc)
    return [
        {"kind": k, "names": n, "answer": a, "questions": len(v), "accuracy": sum(v) / len(v)}
        for (k, n, a), v in sorted(hits.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("twins", nargs="+", type=Path)
    parser.add_argument("--world", type=Path, default=Path("runs/demo/world"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {}
    for twin in args.twins:
        rows = score_forms(twin, args.world)
        report[str(twin)] = rows
        print(twin)
        for r in rows:
            name = f"{r['kind']} / {r['names']}" + (f" / {r['answer']}" if r["answer"] else "")
            print(f"  {name:<28} {r['questions']:>5} {100 * r['accuracy']:6.1f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
