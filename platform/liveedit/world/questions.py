"""What the world says about a scene: unambiguous questions (with their answers) and captions.

A :class:`Query` is a question's meaning: a kind (colour, shape, position, count) and a
:class:`Referent` (the attributes that pick the object). Its text comes from the paraphrase
templates of :mod:`.vocabulary`; :func:`parse_question` inverts them, so that any written question
can be checked against its scene. Non-count questions are only asked when exactly one object
matches the referent; count questions only about counts of 1-3.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace

from .scene import Object, Scene
from .vocabulary import (
    COLOURS,
    COUNT_WORDS,
    OBJECT_NOUN,
    OBJECT_PLURAL,
    POSITIONS,
    QUESTION_TEMPLATES,
    SHAPE_PLURALS,
    SHAPES,
    SIZES,
)

KINDS = ("colour", "shape", "count", "position")

REFERENT_FORMS: dict[str, tuple[tuple[str, ...], ...]] = {
    "colour": (("shape",), ("size", "shape"), ("cell",)),
    "shape": (("colour",), ("size", "colour"), ("cell",)),
    "position": (("shape",), ("colour",), ("colour", "shape"), ("size", "shape")),
    "count": ((), ("colour",), ("shape",)),
}
"""The attributes a question of each kind may name (never the attribute it asks about)."""

ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "position": POSITIONS,
    "count": COUNT_WORDS[1:4],
}
"""The closed answer set of each kind (counterfactual targets are drawn from the same set)."""


@dataclass(frozen=True)
class Referent:
    """The attributes that pick the object(s) a question is about; ``None`` = not named."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    cell: int | None = None

    @classmethod
    def of(cls, obj: Object, form: tuple[str, ...]) -> Referent:
        """The referent naming ``obj``'s attributes in ``form``."""
        return cls(**{name: getattr(obj, name) for name in form})

    def matches(self, obj: Object) -> bool:
        return all(
            want is None or want == getattr(obj, name)
            for name, want in (
                ("shape", self.shape),
                ("colour", self.colour),
                ("size", self.size),
                ("cell", self.cell),
            )
        )

    def phrase(self, plural: bool = False) -> str:
        """The noun phrase: "small red circle", "object at the top left", "red objects"."""
        if plural:
            noun = SHAPE_PLURALS[self.shape] if self.shape else OBJECT_PLURAL
        else:
            noun = self.shape or OBJECT_NOUN
        text = " ".join(p for p in (self.size, self.colour, noun) if p)
        if self.cell is not None:
            text += f" at the {POSITIONS[self.cell]}"
        return text


@dataclass(frozen=True)
class Query:
    """A question's meaning: what is asked (``kind``) about which object(s) (``referent``)."""

    kind: str
    referent: Referent

    def text(self, template: int = 0) -> str:
        """The question, worded with paraphrase ``template`` of its kind."""
        np = self.referent.phrase(plural=self.kind == "count")
        return QUESTION_TEMPLATES[self.kind][template].format(np=np)

    def answer(self, scene: Scene) -> str | None:
        """The true answer in ``scene``, or ``None`` where the question would be ambiguous (not
        exactly one object matches) or its count is outside 1-3."""
        matches = [o for o in scene.objects if self.referent.matches(o)]
        if self.kind == "count":
            return COUNT_WORDS[len(matches)] if 1 <= len(matches) <= 3 else None
        if len(matches) != 1:
            return None
        obj = matches[0]
        return {"colour": obj.colour, "shape": obj.shape, "position": obj.position}[self.kind]


def sample_query(rng: random.Random, scene: Scene, kind: str) -> Query | None:
    """A random unambiguous question of ``kind`` about ``scene``; ``None`` if there is none."""
    if kind == "count":  # the answer first, uniformly among those the scene allows
        by_answer: dict[str, list[Query]] = {}
        for form in REFERENT_FORMS["count"]:
            for ref in dict.fromkeys(Referent.of(o, form) for o in scene.objects):
                query = Query(kind, ref)
                by_answer.setdefault(query.answer(scene) or "", []).append(query)
        by_answer.pop("", None)
        return rng.choice(by_answer[rng.choice(sorted(by_answer))]) if by_answer else None
    candidates = [
        Query(kind, Referent.of(obj, form))
        for obj in scene.objects
        for form in REFERENT_FORMS[kind]
    ]
    candidates = [q for q in candidates if q.answer(scene) is not None]
    return rng.choice(candidates) if candidates else None


@dataclass
class CountBalance:
    """Count questions balanced over (referent form, answer), as VQA v2 balanced its answers.

    Drawn per scene, the answer to "How many green objects?" is "one" in most scenes (two objects
    of one colour are rare), so a model can answer attribute counts from the question alone. Each
    call asks the (form, answer) pair asked least so far among those the scene allows (ties broken
    by ``rng``), so every pair is asked about as often as the scenes make possible. One instance
    per generated file: it counts what it has asked.
    """

    asked: Counter[tuple[tuple[str, ...], str]] = field(default_factory=Counter)

    def sample(self, rng: random.Random, scene: Scene) -> Query | None:
        """A count question about ``scene``; ``None`` if it allows none."""
        options: dict[tuple[tuple[str, ...], str], list[Query]] = {}
        for form in REFERENT_FORMS["count"]:
            for ref in dict.fromkeys(Referent.of(o, form) for o in scene.objects):
                query = Query("count", ref)
                answer = query.answer(scene)
                if answer is not None:
                    options.setdefault((form, answer), []).append(query)
        if not options:
            return None
        least = min(self.asked[key] for key in options)
        key = rng.choice(sorted(key for key in options if self.asked[key] == least))
        self.asked[key] += 1
        return rng.choice(options[key])


def counterfactual_answer(rng: random.Random, kind: str, true: str) -> str:
    """An answer of the same kind that is not the true one."""
    return rng.choice([a for a in ANSWERS[kind] if a != true])


# --- parsing (the inverse of Query.text) -----------------------------------------------------

_POSITION_RE = "|".join(sorted(map(re.escape, POSITIONS), key=len, reverse=True))
_SINGULAR_NP = re.compile(
    rf"^(?:(?P<size>{'|'.join(SIZES)}) )?(?:(?P<colour>{'|'.join(COLOURS)}) )?"
    rf"(?P<noun>{'|'.join(SHAPES)}|{OBJECT_NOUN})(?: at the (?P<pos>{_POSITION_RE}))?$"
)
_PLURAL_TO_SHAPE = {v: k for k, v in SHAPE_PLURALS.items()}
_PLURAL_NP = re.compile(
    rf"^(?:(?P<size>{'|'.join(SIZES)}) )?(?:(?P<colour>{'|'.join(COLOURS)}) )?"
    rf"(?P<noun>{'|'.join(_PLURAL_TO_SHAPE)}|{OBJECT_PLURAL})$"
)
_TEMPLATE_RES = [
    (kind, i, re.compile("^" + re.escape(t).replace(r"\{np\}", "(?P<np>.+)") + "$"))
    for kind, templates in QUESTION_TEMPLATES.items()
    for i, t in enumerate(templates)
]


def parse_question(text: str) -> tuple[Query, int]:
    """The query and template index of a question written by :meth:`Query.text`.

    Raises ``ValueError`` for a question outside the world's grammar."""
    for kind, index, pattern in _TEMPLATE_RES:
        m = pattern.match(text)
        if not m:
            continue
        np_re = _PLURAL_NP if kind == "count" else _SINGULAR_NP
        n = np_re.match(m.group("np"))
        if not n:
            continue
        noun = n.group("noun")
        if kind == "count":
            shape = _PLURAL_TO_SHAPE.get(noun)
            cell = None
        else:
            shape = None if noun == OBJECT_NOUN else noun
            cell = POSITIONS.index(n.group("pos")) if n.group("pos") else None
        referent = Referent(shape, n.group("colour"), n.group("size"), cell)
        return Query(kind, referent), index
    raise ValueError(f"not a question of the world's grammar: {text!r}")


# --- captions (E-IC analogue) -----------------------------------------------------------------


def describe(obj: Object) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} at the {obj.position}"


def caption(scene: Scene) -> str:
    """The canonical caption: every object, in cell order, with size, colour, shape, position
    (never the background, which a re-render may change)."""
    parts = [describe(o) for o in scene.objects]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


CAPTION_ATTRIBUTES = ("colour", "shape", "size", "position")


def counterfactual_scene(rng: random.Random, scene: Scene) -> Scene:
    """``scene`` with one attribute of one object changed (colour, shape, size, or position to a
    free cell): its caption is a counterfactual caption that differs from the true one."""
    index = rng.randrange(len(scene.objects))
    obj = scene.objects[index]
    attribute = rng.choice(CAPTION_ATTRIBUTES)
    if attribute == "colour":
        new = replace(obj, colour=rng.choice([c for c in COLOURS if c != obj.colour]))
    elif attribute == "shape":
        new = replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
    elif attribute == "size":
        new = replace(obj, size=next(s for s in SIZES if s != obj.size))
    else:
        free = [c for c in range(len(POSITIONS)) if c not in {o.cell for o in scene.objects}]
        new = replace(obj, cell=rng.choice(free))
    objects = list(scene.objects)
    objects[index] = new
    return scene.with_objects(objects)
