"""Edit records of the three families, in the public schemas' terms (:class:`EditRecord`).

- ``vqa`` (E-VQA analogue, format ``evqa``): colour / shape / count / position questions about a
  scene, asked only when unambiguous; ``rephrase`` = another paraphrase template;
  ``image_rephrase`` = the scene re-rendered with jitter; ``alt`` = another answer of the same
  kind; ``pred`` = the true answer.
- ``caption`` (E-IC analogue, format ``eic``): ``src`` / ``rephrase`` = two caption prompts,
  ``pred`` = the canonical caption, ``alt`` = the caption with one attribute of one object
  changed.
- ``knowledge`` (VLKEB analogue, format ``vlkeb``): a question about a relation of the landmark
  in the image, ``alt`` = a counterfactual tail, ``image_rephrase`` = a different rendering of
  the landmark, ``port_new`` = the 1..3-hop facts of the *new* tail.

Every record has a text locality fact (``loc``, the NQ analogue) and a multimodal locality probe
(``m_loc``: an unrelated scene of the same split's pool, a question and its true answer).
Images are named MMEdit-style (``val2014/COCO_val2014_<12 digits>.png``,
``val2014_image_rephrase/...``) and VLKEB-style (``mmkb_images/m.<id>/<n>.png``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from liveedit.data.records import EditRecord, PortabilityQA
from liveedit.progress import progress

from .knowledge import RECORD_RENDERINGS, RELATIONS, KnowledgeGraph, Landmark, TextFact
from .questions import (
    KINDS,
    Query,
    caption,
    counterfactual_answer,
    counterfactual_scene,
    sample_query,
)
from .render import ImageJob, Jitter, sample_jitter
from .scene import Scene, ScenePools
from .vocabulary import CAPTION_PROMPTS, KNOWLEDGE_TEMPLATES, QUESTION_TEMPLATES

FAMILIES = ("vqa", "caption", "knowledge")
FAMILY_FORMATS = {"vqa": "evqa", "caption": "eic", "knowledge": "vlkeb"}
SPLITS = ("train", "test")

_FAMILY_CODE = {"vqa": 1, "caption": 2, "knowledge": 3}
_SPLIT_CODE = {"train": 1, "test": 2}


@dataclass(frozen=True)
class Generated:
    """A record with the ground truth it was made from (for checks; never written).

    ``scene`` / ``jitter`` / ``rephrase_jitter``: the edit image's scene (a landmark's emblem for
    ``knowledge``) and the jitters of ``image`` and ``image_rephrase``; ``query``: the VQA edit
    question; ``m_loc_scene`` / ``m_loc_query``: the multimodal locality probe; ``landmark`` /
    ``relation``: the knowledge edit."""

    record: EditRecord
    scene: Scene
    jitter: Jitter | None
    rephrase_jitter: Jitter
    m_loc_scene: Scene
    m_loc_query: Query
    query: Query | None = None
    landmark: Landmark | None = None
    relation: str | None = None


@dataclass
class FamilyData:
    """A generated family: records per split and the images they need."""

    family: str
    splits: dict[str, list[Generated]]
    jobs: list[ImageJob]

    @property
    def format(self) -> str:
        return FAMILY_FORMATS[self.family]


def coco_path(family: str, split: str, n: int, rephrase: bool = False) -> str:
    """An MMEdit-style image path; ids are unique per (family, split, n)."""
    image_id = _FAMILY_CODE[family] * 10**10 + _SPLIT_CODE[split] * 10**9 + n
    folder = "val2014_image_rephrase" if rephrase else "val2014"
    return f"{folder}/COCO_val2014_{image_id:012d}.png"


def sample_question(
    rng: random.Random, pools: ScenePools, pool: str, kinds: tuple[str, ...] = KINDS
) -> tuple[Scene, Query]:
    """A scene of ``pool`` and an unambiguous question about it (kind drawn from ``kinds``)."""
    while True:
        scene = pools.sample(rng, pool)
        query = sample_query(rng, scene, rng.choice(kinds))
        if query is not None:
            return scene, query


class _Locality:
    """Draws the locality probes of a split: a text fact and an unrelated scene + question."""

    def __init__(self, rng: random.Random, pools: ScenePools, pool: str, facts: list[TextFact]):
        self.rng, self.pools, self.pool, self.facts = rng, pools, pool, facts

    def text(self) -> TextFact:
        return self.rng.choice(self.facts)

    def visual(self, avoid: Scene) -> tuple[Scene, Query]:
        while True:
            scene, query = sample_question(self.rng, self.pools, self.pool)
            if scene.signature() != avoid.signature():
                return scene, query


def _scene_record(
    family: str,
    split: str,
    n: int,
    rng: random.Random,
    locality: _Locality,
    scene: Scene,
    src: str,
    rephrase: str,
    pred: str,
    alt: str,
    jobs: list[ImageJob],
) -> tuple[EditRecord, Jitter, Scene, Query]:
    """A vqa/caption record about ``scene``; appends its three images to ``jobs``."""
    image, image_rephrase = coco_path(family, split, 2 * n), coco_path(family, split, 2 * n, True)
    m_loc = coco_path(family, split, 2 * n + 1)
    jitter = sample_jitter(rng, scene)
    fact = locality.text()
    m_scene, m_query = locality.visual(scene)
    jobs += [
        ImageJob(image, scene, None),
        ImageJob(image_rephrase, scene, jitter),
        ImageJob(m_loc, m_scene, None),
    ]
    record = EditRecord(
        src=src,
        alt=alt,
        rephrase=rephrase,
        image=image,
        image_rephrase=image_rephrase,
        loc=fact.loc,
        loc_ans=fact.answer,
        m_loc=m_loc,
        m_loc_q=m_query.text(rng.randrange(len(QUESTION_TEMPLATES[m_query.kind]))),
        m_loc_a=m_query.answer(m_scene) or "",
        pred=pred,
        format=FAMILY_FORMATS[family],
        index=n,
    )
    return record, jitter, m_scene, m_query


def generate_vqa(
    seed: int, counts: dict[str, int], pools: ScenePools, facts: list[TextFact]
) -> FamilyData:
    """The ``vqa`` family: ``counts[split]`` records per split (scenes from the split's pool)."""
    splits: dict[str, list[Generated]] = {}
    jobs: list[ImageJob] = []
    for split in SPLITS:
        rng = random.Random(f"{seed}|vqa|{split}")
        locality = _Locality(rng, pools, split, facts)
        out = []
        for n in progress(range(counts[split]), f"world vqa/{split}", counts[split]):
            scene, query = sample_question(rng, pools, split)
            t_src, t_rephrase = rng.sample(range(len(QUESTION_TEMPLATES[query.kind])), 2)
            pred = query.answer(scene)
            assert pred is not None
            alt = counterfactual_answer(rng, query.kind, pred)
            record, jitter, m_scene, m_query = _scene_record(
                "vqa", split, n, rng, locality, scene,
                query.text(t_src), query.text(t_rephrase), pred, alt, jobs,
            )  # fmt: skip
            out.append(Generated(record, scene, None, jitter, m_scene, m_query, query=query))
        splits[split] = out
    return FamilyData("vqa", splits, jobs)


def generate_caption(
    seed: int, counts: dict[str, int], pools: ScenePools, facts: list[TextFact]
) -> FamilyData:
    """The ``caption`` family: ``counts[split]`` records per split."""
    splits: dict[str, list[Generated]] = {}
    jobs: list[ImageJob] = []
    for split in SPLITS:
        rng = random.Random(f"{seed}|caption|{split}")
        locality = _Locality(rng, pools, split, facts)
        out = []
        for n in progress(range(counts[split]), f"world caption/{split}", counts[split]):
            scene = pools.sample(rng, split)
            src, rephrase = rng.sample(CAPTION_PROMPTS, 2)
            pred, alt = caption(scene), caption(counterfactual_scene(rng, scene))
            record, jitter, m_scene, m_query = _scene_record(
                "caption", split, n, rng, locality, scene, src, rephrase, pred, alt, jobs
            )
            out.append(Generated(record, scene, None, jitter, m_scene, m_query))
        splits[split] = out
    return FamilyData("caption", splits, jobs)


def generate_knowledge(
    seed: int, counts: dict[str, int], pools: ScenePools, graph: KnowledgeGraph
) -> FamilyData:
    """The ``knowledge`` family: one record per (landmark, relation) of the split's landmarks,
    shuffled, the first ``counts[split]`` of them. Train and test landmarks are disjoint."""
    facts = graph.text_facts()
    splits: dict[str, list[Generated]] = {}
    jobs: list[ImageJob] = []
    for split in SPLITS:
        rng = random.Random(f"{seed}|knowledge|{split}")
        locality = _Locality(rng, pools, split, facts)
        pairs = [(lm, rel) for lm in graph.split(split) for rel in RELATIONS]
        if len(pairs) < counts[split]:
            raise ValueError(
                f"knowledge/{split}: {counts[split]} records need "
                f"{-(-counts[split] // len(RELATIONS))} landmarks, the graph has "
                f"{len(graph.split(split))}"
            )
        rng.shuffle(pairs)
        out = []
        rendered: set[str] = set()
        for n, (landmark, relation) in enumerate(
            progress(pairs[: counts[split]], f"world knowledge/{split}", counts[split])
        ):
            renders = [graph.rendering(landmark, i) for i in range(RECORD_RENDERINGS)]
            if landmark.mid not in rendered:
                rendered.add(landmark.mid)
                jobs += [
                    ImageJob(landmark.image_path(i), landmark.emblem, renders[i])
                    for i in range(RECORD_RENDERINGS)
                ]
            templates = KNOWLEDGE_TEMPLATES[relation]
            t_src, t_rephrase = rng.sample(range(len(templates)), 2)
            alt = graph.counterfactual(rng, landmark, relation)
            port = tuple(
                PortabilityQA(KNOWLEDGE_TEMPLATES[key][0], answer, hops)
                for hops, (key, answer) in enumerate(graph.chain(relation, alt), start=1)
            )
            fact = locality.text()
            m_scene, m_query = locality.visual(landmark.emblem)
            m_loc = coco_path("knowledge", split, n)
            jobs.append(ImageJob(m_loc, m_scene, None))
            record = EditRecord(
                src=templates[t_src],
                alt=alt,
                rephrase=templates[t_rephrase],
                image=landmark.image_path(0),
                image_rephrase=landmark.image_path(1),
                loc=fact.loc,
                loc_ans=fact.answer,
                m_loc=m_loc,
                m_loc_q=m_query.text(rng.randrange(len(QUESTION_TEMPLATES[m_query.kind]))),
                m_loc_a=m_query.answer(m_scene) or "",
                pred=landmark.tail(relation),
                port_new=port,
                format="vlkeb",
                index=n,
            )
            out.append(
                Generated(
                    record,
                    landmark.emblem,
                    renders[0],
                    renders[1],
                    m_scene,
                    m_query,
                    landmark=landmark,
                    relation=relation,
                )
            )
        splits[split] = out
    return FamilyData("knowledge", splits, jobs)


def generate_family(
    family: str, seed: int, counts: dict[str, int], pools: ScenePools, graph: KnowledgeGraph
) -> FamilyData:
    """Dispatch to the family's generator (text facts come from ``graph``)."""
    if family == "vqa":
        return generate_vqa(seed, counts, pools, graph.text_facts())
    if family == "caption":
        return generate_caption(seed, counts, pools, graph.text_facts())
    if family == "knowledge":
        return generate_knowledge(seed, counts, pools, graph)
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
