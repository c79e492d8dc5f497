"""The closed word lists of the synthetic world.

Every prompt and target the world writes is assembled from these lists and from synthetic names
built out of :data:`SYLLABLES`, so the world's vocabulary stays small enough for a word-level
tokenizer. :func:`words` is the one word-splitting rule (the regex of ``tokenizers``'
``Whitespace`` pre-tokenizer): the manifest's ``vocabulary`` is computed with it, and a tokenizer
built from the manifest must split text the same way.
"""

from __future__ import annotations

import re

WORD_PATTERN = r"\w+|[^\w\s]+"
"""Words are runs of word characters or runs of punctuation (``"is:"`` -> ``"is"``, ``":"``)."""

_WORD_RE = re.compile(WORD_PATTERN)


def words(text: str) -> list[str]:
    """Split ``text`` into the world's words (see :data:`WORD_PATTERN`)."""
    return _WORD_RE.findall(text)


# --- scenes ---------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
SHAPE_PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
    "ring": "rings",
}
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZES = ("small", "large")
BACKGROUNDS = ("black", "charcoal", "gray", "silver", "white")
"""Neutral background tones; they never appear in text (a jittered re-render may change them)."""

GRID = 3
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
"""Names of the 3x3 grid cells, row-major (cell index ``row * 3 + column``)."""

COUNT_WORDS = ("zero", "one", "two", "three", "four")
"""``COUNT_WORDS[n]`` names the number ``n``; questions are only asked about counts 1-3."""

# --- VQA questions (E-VQA analogue) ---------------------------------------------------------
# ``{np}`` is a noun phrase built by ``questions.Referent.phrase`` (e.g. "small red circle",
# "object at the top left", "red objects"). Every kind has several paraphrases: the edit prompt
# uses one, ``rephrase`` another.

QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "What colour is the {np}?",
        "What is the colour of the {np}?",
        "Which colour does the {np} have?",
    ),
    "shape": (
        "What shape is the {np}?",
        "What is the shape of the {np}?",
        "Which shape does the {np} have?",
    ),
    "position": (
        "Where is the {np}?",
        "Where is the {np} located?",
        "In which part of the image is the {np}?",
    ),
    "count": (
        "How many {np} are there?",
        "How many {np} are in the image?",
        "What is the number of {np}?",
    ),
}
OBJECT_NOUN = "object"
OBJECT_PLURAL = "objects"

# --- captions (E-IC analogue) ---------------------------------------------------------------

CAPTION_PROMPTS = ("a photo of", "an image of", "a picture of", "a drawing of")
"""Caption prompts (``src`` / ``rephrase``); the target continues the prompt: "a photo of" +
" a small red circle at the top left and a large blue ring at the center"."""

# --- knowledge (VLKEB analogue) -------------------------------------------------------------

SYLLABLES = (
    "ka", "lo", "ri", "ven", "tor", "bel", "zu", "mi", "dar", "sel", "po", "nak",
    "fi", "gro", "lun", "ves", "ta", "mor", "kel", "dri", "sa", "ul", "pen", "qua",
)  # fmt: skip
"""Synthetic names are 2 (places, companies, people) or 3 (landmarks) syllables, one word."""

KNOWLEDGE_SUBJECT = "the landmark in the image"

KNOWLEDGE_TEMPLATES: dict[str, tuple[str, ...]] = {
    # the four editable relations of a landmark
    "name": (
        "What is the name of the landmark in the image?",
        "What is the landmark in the image called?",
        "Which landmark is shown in the image?",
    ),
    "city": (
        "Which city is the landmark in the image in?",
        "In which city is the landmark in the image located?",
        "Where is the landmark in the image located?",
    ),
    "builder": (
        "Which company built the landmark in the image?",
        "Who built the landmark in the image?",
        "The landmark in the image was built by which company?",
    ),
    "architect": (
        "Who designed the landmark in the image?",
        "Who was the architect of the landmark in the image?",
        "Which architect designed the landmark in the image?",
    ),
    # facts one or more hops further (portability questions use the first template)
    "country": (
        "Which country is the landmark in the image in?",
        "In which country is the landmark in the image located?",
    ),
    "region": (
        "Which region is the landmark in the image in?",
        "In which region is the landmark in the image located?",
    ),
    "builder_city": (
        "Which city is the builder of the landmark in the image based in?",
        "Where is the builder of the landmark in the image based?",
    ),
    "builder_country": (
        "Which country is the builder of the landmark in the image based in?",
        "In which country is the builder of the landmark in the image based?",
    ),
    "builder_region": (
        "Which region is the builder of the landmark in the image based in?",
        "In which region is the builder of the landmark in the image based?",
    ),
    "architect_city": (
        "Which city was the architect of the landmark in the image born in?",
        "Where was the architect of the landmark in the image born?",
    ),
    "architect_country": (
        "Which country was the architect of the landmark in the image born in?",
        "In which country was the architect of the landmark in the image born?",
    ),
    "architect_region": (
        "Which region was the architect of the landmark in the image born in?",
        "In which region was the architect of the landmark in the image born?",
    ),
}

# --- text-only facts (NQ analogue) ----------------------------------------------------------

NQ_PREFIX = "nq question: "
TEXT_FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city_country": ("which country is the city {x} in", "the city {x} is in which country"),
    "country_region": ("which region is the country {x} in", "the country {x} is in which region"),
    "country_capital": ("what is the capital of {x}", "which city is the capital of {x}"),
    "builder_city": (
        "which city is the company {x} based in",
        "where is the company {x} based",
    ),
    "architect_city": (
        "which city was the architect {x} born in",
        "where was the architect {x} born",
    ),
}
"""Text facts are asked as ``"nq question: <question>"`` (no question mark: the record view adds
it, as MMEdit's ``loc`` field has none)."""


def closed_words() -> set[str]:
    """Every word of the closed lists and templates above (synthetic names must avoid them)."""
    texts = [*SHAPES, *SHAPE_PLURALS.values(), *COLOURS, *SIZES, *BACKGROUNDS, *POSITIONS]
    texts += [*COUNT_WORDS, OBJECT_NOUN, OBJECT_PLURAL, *CAPTION_PROMPTS, NQ_PREFIX]
    for table in (QUESTION_TEMPLATES, KNOWLEDGE_TEMPLATES, TEXT_FACT_TEMPLATES):
        texts += [t for templates in table.values() for t in templates]
    return {w.lower() for t in texts for w in words(t)}
