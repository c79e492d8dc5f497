"""One record type for every editing dataset (DESIGN §2.1).

Field names are MMEdit's, so that the real E-VQA / E-IC / VLKEB JSON files load unchanged.
Image fields hold paths *relative to an image root* (``val2014/...``, ``mmkb_images/m.<id>/...``);
:meth:`EditRecord.image_path` resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("evqa", "eic", "vlkeb")


class DataError(ValueError):
    """A malformed file, record or field. The message names the file, the record index and the
    field, so that a user can find and fix the input before any compute runs."""

    def __init__(self, file: str | Path, message: str, index: int | None = None, field: str = ""):
        self.file = str(file)
        self.index = index
        self.field = field
        where = self.file
        if index is not None:
            where += f": record {index}"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class PortabilityQA:
    """One VLKEB portability question (``port_new``): a one-hop question, or a multi-hop chain
    whose last answer is the target. ``hops`` is 1 for the one-hop form (VLKEB's ``port_type``
    ``"<hops>-hop"``). ``image`` is the probe's own image (relative to the image root) when the
    file gives one; ``None`` means the record's edit image, as in the official code."""

    question: str
    answer: str
    hops: int = 1
    image: str | None = None


@dataclass(frozen=True)
class EditRecord:
    """An edit request with its generality and locality probes (MMEdit field names).

    - ``src`` / ``alt``: the edit prompt and the new target; ``pred``: the pre-edit answer.
    - ``rephrase``: the text-generality prompt (T-Gen); ``image_rephrase``: the M-Gen image.
    - ``loc`` / ``loc_ans``: a text-only locality question and answer (T-Loc).
    - ``m_loc`` / ``m_loc_q`` / ``m_loc_a``: a multimodal locality image, question, answer (M-Loc).
    - ``port_new``: VLKEB portability questions (empty elsewhere).
    """

    src: str
    alt: str
    rephrase: str
    image: str
    image_rephrase: str
    loc: str
    loc_ans: str
    m_loc: str
    m_loc_q: str
    m_loc_a: str
    pred: str | None = None
    port_new: tuple[PortabilityQA, ...] = ()
    format: str = "evqa"
    index: int = 0
    image_root: str = field(default="", compare=False)
    source: str = field(default="", compare=False)  # the JSON file the record was read from

    def image_path(self, relative: str) -> Path:
        """Absolute path of one of this record's image fields (``image``, ``image_rephrase``,
        ``m_loc``)."""
        return Path(self.image_root) / relative

    @property
    def edit_id(self) -> str:
        """A stable identifier of the edit within its file (format and record index)."""
        return f"{self.format}-{self.index}"


VIEWS = ("edit", "rephrase", "image_rephrase", "loc", "m_loc")
"""The five evaluation views of a record: Rel, T-Gen, M-Gen, T-Loc, M-Loc."""


@dataclass(frozen=True)
class View:
    """One (image | None, prompt, target) sample of a record. ``image`` is relative to the
    record's image root; ``None`` means a text-only input (text locality)."""

    image: str | None
    prompt: str
    target: str


def format_question(question: str, fmt: str) -> str:
    """The prompt the paper's baselines feed for a question (DESIGN §2.1): E-VQA appends
    ``" The answer is:"``; E-IC and VLKEB use the prompt as is."""
    return f"{question} The answer is:" if fmt == "evqa" else question


def record_views(record: EditRecord) -> dict[str, View]:
    """The five views of ``record``, with the prompt formats of the official code."""
    edit_prompt = format_question(record.src, record.format)
    return {
        "edit": View(record.image, edit_prompt, record.alt),
        "rephrase": View(record.image, format_question(record.rephrase, record.format), record.alt),
        "image_rephrase": View(record.image_rephrase, edit_prompt, record.alt),
        "loc": View(None, f"{record.loc}?", record.loc_ans),
        "m_loc": View(record.m_loc, f"{record.m_loc_q} The answer is:", record.m_loc_a),
    }


def portability_views(record: EditRecord) -> list[View]:
    """VLKEB portability probes of ``record`` (on the edit image unless the question has its own
    image); empty for other formats."""
    return [
        View(qa.image if qa.image is not None else record.image, qa.question, qa.answer)
        for qa in record.port_new
    ]
