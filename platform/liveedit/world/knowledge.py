"""A small synthetic knowledge graph (the VLKEB / MMKG analogue) and its text facts (the NQ
analogue).

- *Landmarks* are the visual entities: a synthetic name, a Freebase-style id (``m.0xxxxx``) and
  a unique *emblem* (2-4 coloured shapes in fixed cells, from the ``emblem`` scene pool) rendered
  differently in every picture of the landmark. Each landmark has a city, a builder (a company)
  and an architect (a person).
- Tails are entities with facts of their own: city -> country -> region; builder -> city (where it
  is based); architect -> city (where they were born). So a landmark has one-hop facts (city,
  builder, architect, name) and multi-hop facts (the country of its city, the region of its
  builder's city, ...), which give VLKEB-style portability questions about an edited tail.
- Text facts are the non-visual facts of the tails (city -> country, country -> region / capital,
  builder -> city, architect -> city), asked as ``"nq question: <question>"``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .render import Jitter, sample_jitter
from .scene import Scene, ScenePools
from .vocabulary import (
    KNOWLEDGE_TEMPLATES,
    NQ_PREFIX,
    SYLLABLES,
    TEXT_FACT_TEMPLATES,
    closed_words,
)

RELATIONS = ("name", "city", "builder", "architect")
"""The editable relations of a landmark (one knowledge record per landmark and relation)."""

CHAINS: dict[str, tuple[str, ...]] = {
    "name": ("city", "country", "region"),
    "city": ("country", "region"),
    "builder": ("builder_city", "builder_country", "builder_region"),
    "architect": ("architect_city", "architect_country", "architect_region"),
}
"""The facts 1, 2, 3 hops beyond each relation's tail: the portability questions of an edit."""

FACT_KEYS = tuple(KNOWLEDGE_TEMPLATES)

N_REGIONS = 4
COUNTRIES_PER_REGION = 3
CITIES_PER_COUNTRY = 3
N_BUILDERS = 24
N_ARCHITECTS = 24
RECORD_RENDERINGS = 2
"""Renderings 0 and 1 of a landmark are the edit records' ``image`` and ``image_rephrase``; the
pretraining corpus uses renderings from 2 on, so the backbone never sees the records' pictures."""


@dataclass(frozen=True)
class Landmark:
    """A visual entity: its id, name, emblem, one-hop tails, and the split it belongs to."""

    mid: str
    name: str
    emblem: Scene
    city: str
    builder: str
    architect: str
    split: str

    def tail(self, relation: str) -> str:
        return {
            "name": self.name,
            "city": self.city,
            "builder": self.builder,
            "architect": self.architect,
        }[relation]

    def image_path(self, n: int) -> str:
        """Rendering ``n`` of the landmark, relative to the image root (VLKEB layout)."""
        return f"mmkb_images/{self.mid}/{n}.png"


@dataclass(frozen=True)
class TextFact:
    """A text-only fact: paraphrases of its question (without prefix or question mark) and the
    answer. ``loc`` is the MMEdit ``loc`` field (first paraphrase, ``"nq question: "`` prefix)."""

    key: str
    subject: str
    questions: tuple[str, ...]
    answer: str

    @property
    def loc(self) -> str:
        return NQ_PREFIX + self.questions[0]


@dataclass(frozen=True)
class KnowledgeGraph:
    """The entities and facts of one world. Mappings are read-only by convention."""

    seed: int
    regions: tuple[str, ...]
    country_region: dict[str, str]
    country_capital: dict[str, str]
    city_country: dict[str, str]
    builder_city: dict[str, str]
    architect_city: dict[str, str]
    landmarks: tuple[Landmark, ...]
    _by_name: dict[str, Landmark] = field(init=False, repr=False, compare=False)
    _by_split: dict[str, tuple[Landmark, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {lm.name: lm for lm in self.landmarks})
        splits = {lm.split: () for lm in self.landmarks}
        by_split = {s: tuple(lm for lm in self.landmarks if lm.split == s) for s in splits}
        object.__setattr__(self, "_by_split", by_split)

    def split(self, split: str) -> tuple[Landmark, ...]:
        """The landmarks of ``split`` ("train" or "test"), in id order."""
        return self._by_split.get(split, ())

    def landmark_named(self, name: str) -> Landmark:
        return self._by_name[name]

    def chain(self, relation: str, tail: str) -> list[tuple[str, str]]:
        """``(fact key, answer)`` for the facts 1, 2, ... hops beyond ``tail`` as the tail of
        ``relation`` (see :data:`CHAINS`)."""
        if relation == "name":
            city = self.landmark_named(tail).city
            answers = [city, self.city_country[city]]
        elif relation == "city":
            answers = [self.city_country[tail]]
        elif relation == "builder":
            city = self.builder_city[tail]
            answers = [city, self.city_country[city]]
        elif relation == "architect":
            city = self.architect_city[tail]
            answers = [city, self.city_country[city]]
        else:
            raise ValueError(f"unknown relation {relation!r}")
        answers.append(self.country_region[answers[-1]])
        return list(zip(CHAINS[relation], answers, strict=True))

    def facts(self, landmark: Landmark) -> dict[str, str]:
        """Every fact of ``landmark`` by fact key (the keys of ``KNOWLEDGE_TEMPLATES``)."""
        out = {}
        for relation in RELATIONS:
            out[relation] = landmark.tail(relation)
            if relation != "name":
                out.update(self.chain(relation, landmark.tail(relation)))
        return out

    def candidates(self, landmark: Landmark, relation: str) -> list[str]:
        """Every possible tail of ``relation`` for ``landmark``'s split (other landmarks of the
        same split for ``name``)."""
        if relation == "name":
            return [lm.name for lm in self.split(landmark.split)]
        return list({"city": self.city_country, "builder": self.builder_city,
                     "architect": self.architect_city}[relation])  # fmt: skip

    def counterfactual(self, rng: random.Random, landmark: Landmark, relation: str) -> str:
        """A counterfactual tail: never the true one and, where possible, one whose one-hop
        fact differs too (so that portability is not answered by the unedited model)."""
        true = landmark.tail(relation)
        others = [t for t in self.candidates(landmark, relation) if t != true]
        if not others:
            raise ValueError(f"no counterfactual {relation} for {landmark.mid}")
        if relation == "name":  # the one-hop fact of a landmark is its city
            better = [lm.name for lm in self.split(landmark.split) if lm.city != landmark.city]
        else:
            first_hop = self.chain(relation, true)[0][1]
            better = [t for t in others if self.chain(relation, t)[0][1] != first_hop]
        return rng.choice(better or others)

    def text_facts(self) -> list[TextFact]:
        """Every text fact, in a fixed order."""
        tables = {
            "city_country": self.city_country,
            "country_region": self.country_region,
            "country_capital": self.country_capital,
            "builder_city": self.builder_city,
            "architect_city": self.architect_city,
        }
        out = []
        for key, table in tables.items():
            for subject, answer in table.items():
                questions = tuple(t.format(x=subject) for t in TEXT_FACT_TEMPLATES[key])
                out.append(TextFact(key, subject, questions, answer))
        return out

    def rendering(self, landmark: Landmark, n: int) -> Jitter:
        """How picture ``n`` of ``landmark`` is rendered: a fixed jitter of its emblem per
        ``(seed, landmark, n)``, so every picture differs in shift, scale, background, noise."""
        rng = random.Random(f"{self.seed}|rendering|{landmark.mid}|{n}")
        return sample_jitter(rng, landmark.emblem)


def _mid(index: int) -> str:
    """A Freebase-style id: ``m.0`` and five base-36 digits."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(5):
        index, d = divmod(index, 36)
        out = digits[d] + out
    return f"m.0{out}"


def _names(rng: random.Random, n: int, syllables: int, used: set[str]) -> list[str]:
    """``n`` new names of ``syllables`` syllables, none in ``used`` (which ``build_graph`` seeds
    with the closed words, so a name is never also an ordinary word)."""
    out = []
    while len(out) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(syllables))
        if name not in used:
            used.add(name)
            out.append(name)
    return out


def build_graph(seed: int, n_train: int, n_test: int) -> KnowledgeGraph:
    """The knowledge graph of a world: the fixed tail entities and ``n_train + n_test``
    landmarks with unique emblems (train landmarks first)."""
    rng = random.Random(f"{seed}|knowledge")
    pools = ScenePools(seed)
    used = closed_words()
    regions = tuple(_names(rng, N_REGIONS, 2, used))
    countries = _names(rng, N_REGIONS * COUNTRIES_PER_REGION, 2, used)
    country_region = {c: regions[i // COUNTRIES_PER_REGION] for i, c in enumerate(countries)}
    cities = _names(rng, len(countries) * CITIES_PER_COUNTRY, 2, used)
    city_country = {c: countries[i // CITIES_PER_COUNTRY] for i, c in enumerate(cities)}
    country_capital = {c: cities[i * CITIES_PER_COUNTRY] for i, c in enumerate(countries)}
    builder_city = {b: rng.choice(cities) for b in _names(rng, N_BUILDERS, 2, used)}
    architect_city = {a: rng.choice(cities) for a in _names(rng, N_ARCHITECTS, 2, used)}
    builders, architects = list(builder_city), list(architect_city)

    landmarks = []
    emblems: set[str] = set()
    names = _names(rng, n_train + n_test, 3, used)
    for i, name in enumerate(names):
        while True:
            emblem = pools.sample(rng, "emblem", n_objects=(2, 3, 4), weights=(0.3, 0.4, 0.3))
            if emblem.signature() not in emblems:
                emblems.add(emblem.signature())
                break
        landmarks.append(
            Landmark(
                mid=_mid(i + 1),
                name=name,
                emblem=emblem,
                city=rng.choice(cities),
                builder=rng.choice(builders),
                architect=rng.choice(architects),
                split="train" if i < n_train else "test",
            )
        )
    return KnowledgeGraph(
        seed=seed,
        regions=regions,
        country_region=country_region,
        country_capital=country_capital,
        city_country=city_country,
        builder_city=builder_city,
        architect_city=architect_city,
        landmarks=tuple(landmarks),
    )
