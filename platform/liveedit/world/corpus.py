"""The backbones' pretraining corpus: what the unedited model should know about the world.

One JSON object per line, ``{"image": rel | null, "prompt", "target", "task"}``, with the prompt
formats of :func:`liveedit.data.records.record_views` (VQA questions end with
``" The answer is:"``; text facts are ``"nq question: <question>?"``; caption prompts and
knowledge questions as they are), true answers only, every paraphrase template in use.

- Count questions are balanced over (referent form, answer) (:class:`.questions.CountBalance`),
  so that no count is answerable from the question's words alone.
- Scenes come from the ``corpus_train`` / ``corpus_heldout`` pools: never an edit record's scene,
  and the held-out scenes are not training scenes. Each scene gives one question of each VQA kind
  (where one is unambiguous) and one caption; half of the scenes are jittered re-renders.
- Knowledge covers *every* landmark (train and test: the backbone must know a fact before it is
  edited) on renderings the edit records never use (from ``RECORD_RENDERINGS`` on; held-out
  renderings follow the training ones), one line per fact (name, relations, multi-hop facts).
- Text facts are recall, not generalisation: both files ask every fact with every paraphrase,
  so the held-out file re-asks the training facts.

``task`` names the skill (:data:`TASKS`) so that a trainer can filter or re-weight the mix.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from liveedit.data.records import format_question
from liveedit.progress import progress

from .knowledge import RECORD_RENDERINGS, RELATIONS, KnowledgeGraph
from .questions import KINDS, CountBalance, caption, sample_query
from .render import ImageJob, sample_jitter
from .scene import ScenePools
from .vocabulary import CAPTION_PROMPTS, KNOWLEDGE_TEMPLATES, NQ_PREFIX, QUESTION_TEMPLATES

TASKS = (
    "vqa_colour",
    "vqa_shape",
    "vqa_count",
    "vqa_position",
    "caption",
    "knowledge_name",
    "knowledge_fact",
    "knowledge_hop",
    "text_fact",
)
CORPUS_SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class CorpusExample:
    """One pretraining sample: the LM input is ``prompt + " " + target`` (target scored)."""

    image: str | None
    prompt: str
    target: str
    task: str

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


def _knowledge_task(key: str) -> str:
    if key == "name":
        return "knowledge_name"
    return "knowledge_fact" if key in RELATIONS else "knowledge_hop"


def generate_corpus(
    split: str,
    seed: int,
    pools: ScenePools,
    graph: KnowledgeGraph,
    n_scenes: int,
    renderings: range,
) -> tuple[list[CorpusExample], list[ImageJob]]:
    """The corpus ``split`` ("train" or "heldout"): ``n_scenes`` fresh scenes, every landmark
    on ``renderings``, every text fact; shuffled with the seed."""
    if split not in CORPUS_SPLITS:
        raise ValueError(f"unknown corpus split {split!r}")
    if renderings.start < RECORD_RENDERINGS:
        raise ValueError(f"renderings {renderings} overlap the edit records' renderings")
    rng = random.Random(f"{seed}|corpus|{split}")
    examples: list[CorpusExample] = []
    jobs: list[ImageJob] = []
    counts = CountBalance()
    for n in progress(range(n_scenes), f"world corpus/{split} scenes", n_scenes):
        scene = pools.sample(rng, f"corpus_{split}")
        jitter = sample_jitter(rng, scene) if rng.random() < 0.5 else None
        path = f"corpus/{split}/{n:06d}.png"
        jobs.append(ImageJob(path, scene, jitter))
        for kind in KINDS:
            if kind == "count":
                query = counts.sample(rng, scene)
            else:
                query = sample_query(rng, scene, kind)
            if query is not None:
                template = rng.randrange(len(QUESTION_TEMPLATES[kind]))
                prompt = format_question(query.text(template), "evqa")
                answer = query.answer(scene)
                assert answer is not None
                examples.append(CorpusExample(path, prompt, answer, f"vqa_{kind}"))
        examples.append(CorpusExample(path, rng.choice(CAPTION_PROMPTS), caption(scene), "caption"))
    landmarks = graph.landmarks
    for landmark in progress(landmarks, f"world corpus/{split} landmarks", len(landmarks)):
        facts = graph.facts(landmark)
        for i in renderings:
            path = landmark.image_path(i)
            jobs.append(ImageJob(path, landmark.emblem, graph.rendering(landmark, i)))
            for key, answer in facts.items():
                question = rng.choice(KNOWLEDGE_TEMPLATES[key])
                examples.append(CorpusExample(path, question, answer, _knowledge_task(key)))
    for fact in graph.text_facts():
        for question in fact.questions:
            prompt = f"{NQ_PREFIX}{question}?"  # the record view of ``loc``: f"{loc}?"
            examples.append(CorpusExample(None, prompt, fact.answer, "text_fact"))
    rng.shuffle(examples)
    return examples, jobs


def write_corpus(path: Path, examples: list[CorpusExample]) -> None:
    """Write ``examples`` as JSON lines (sorted keys, one object per line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), sort_keys=True, ensure_ascii=False) + "\n")


def read_corpus(path: Path) -> list[CorpusExample]:
    """Read a corpus file; a malformed line raises ``ValueError`` naming the file and line."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                obj = json.loads(line)
                ex = CorpusExample(obj["image"], obj["prompt"], obj["target"], obj["task"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: line {lineno}: not a corpus example ({exc})") from exc
            out.append(ex)
    return out
