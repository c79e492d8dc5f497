"""Loaders for the public editing datasets: MMEdit's E-VQA / E-IC and VLKEB (DESIGN §2.1).

All three are JSON lists of objects with MMEdit's field names, read into one
:class:`~liveedit.data.records.EditRecord` type. Everything is validated *at load*, before any
compute: a malformed file raises :class:`DataError` naming the file; a malformed record raises one
naming the file, the record index (its position in the JSON list) and the field.

Schema (as the official loaders read it)
----------------------------------------
One object per edit (EasyEdit ``easyeditor/dataset/vqa.py`` / ``caption.py``; VLKEB
``easyeditor/dataset/coco_caption.py`` and ``KE/src/data/mmkb_dataset.py``)::

    {"src": str, "pred": str, "rephrase": str, "alt": str,
     "image": str, "image_rephrase": str,
     "loc": str, "loc_ans": str,
     "m_loc": str, "m_loc_q": str, "m_loc_a": str,
     "port_new": [...]}                      # VLKEB only, optional

- Image fields are paths relative to an image root: ``val2014/COCO_val2014_….jpg`` and
  ``val2014_image_rephrase/….png`` for MMEdit (``m_loc`` points at OK-VQA / COCO images), and
  ``m.<freebase id>/….jpg`` under VLKEB's image folder (``mmkb_images/`` / ``VLKEB_images/``).
  The official code joins ``image`` and ``m_loc`` to one root and ``image_rephrase`` to a second
  "rephrase" root that is in practice the same directory; here all of them resolve against the one
  ``image_root`` given to :func:`load_records`.
- ``pred`` (the pre-edit answer) is read by the official code but never scored; here it is optional
  (missing or ``null`` -> ``None``). Every other field above is a required string.
- Records whose ``alt`` is ``""`` are skipped by the official loaders (silently); here they are
  skipped and counted under ``"empty alt"``.

VLKEB portability (``port_new``)
--------------------------------
Stored as a *list* of objects, one per hop count, in both the one-hop and the multi-hop files
(``eval_edit_onehop.json`` / ``eval_multihop.json``)::

    "port_new": [
      {"port_type": "1-hop", "Q&A": {"Question": "...", "Answer": "..."}},
      {"port_type": "2-hop", "Q&A": {"Question": "...", "Answer": "..."}},
      ...
    ]

The official multi-hop evaluation picks, for ``hop = n``, the first entry whose ``port_type`` is
``"n-hop"`` and reads ``entry["Q&A"]["Question"]`` / ``["Answer"]`` (the multi-hop question is one
composed question whose answer is the end of the chain); the portability probe uses the edit
image. So the one-hop form is an entry with ``port_type "1-hop"`` and the multi-hop form one with
``"2-hop"`` … ``"4-hop"``: the same structure, distinguished by ``port_type``, which we keep as
:attr:`PortabilityQA.hops`. Two tolerances, both documented decisions rather than official forms:
a lone entry object (not in a list) is read as a one-element list, and an entry may carry its own
``"image"`` (relative to the image root, checked like the other image fields); without one the
probe uses the edit image, as in the official code. :func:`record_to_json` always writes the list
form, which is the only one the official code can read.

Per-format differences live in :data:`FORMAT_SPECS` (one small table); the loader is shared.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import FORMATS, DataError, EditRecord, PortabilityQA

__all__ = [
    "FORMAT_SPECS",
    "FormatSpec",
    "LoadResult",
    "check_data",
    "load_records",
    "record_to_json",
    "write_records",
]


@dataclass(frozen=True)
class FormatSpec:
    """What differs between the dataset formats. Everything else is shared."""

    name: str
    dataset: str  # human-readable name of the public dataset
    image_layout: str  # how image paths look under the image root (for messages and docs)
    portability: bool  # whether ``port_new`` belongs to the schema


# Fields of the common schema, in the order the public files (and record_to_json) use.
TEXT_FIELDS = ("src", "rephrase", "alt", "loc", "loc_ans", "m_loc_q", "m_loc_a")
IMAGE_FIELDS = ("image", "image_rephrase", "m_loc")
REQUIRED_FIELDS = ("src", "rephrase", "alt", *IMAGE_FIELDS, "loc", "loc_ans", "m_loc_q", "m_loc_a")
OPTIONAL_FIELDS = ("pred",)
JSON_ORDER = (
    "src",
    "pred",
    "rephrase",
    "alt",
    "image",
    "image_rephrase",
    "loc",
    "loc_ans",
    "m_loc",
    "m_loc_q",
    "m_loc_a",
)

FORMAT_SPECS: dict[str, FormatSpec] = {
    "evqa": FormatSpec(
        "evqa", "MMEdit E-VQA", "val2014/..., val2014_image_rephrase/...", portability=False
    ),
    "eic": FormatSpec(
        "eic", "MMEdit E-IC", "val2014/..., val2014_image_rephrase/...", portability=False
    ),
    "vlkeb": FormatSpec("vlkeb", "VLKEB", "mmkb_images/m.<id>/...", portability=True),
}
assert tuple(FORMAT_SPECS) == FORMATS

EMPTY_ALT = "empty alt"
_PORT_TYPE = re.compile(r"^\s*(\d+)\s*-\s*hop\s*$", re.IGNORECASE)


@dataclass
class LoadResult:
    """The outcome of :func:`load_records`: the records, what was skipped (reason -> count),
    how many distinct image files were found, and the file read."""

    records: list[EditRecord]
    skipped: dict[str, int]
    images_found: int
    file: Path
    format: str = ""
    images_checked: bool = True
    errors: list[str] = field(default_factory=list)  # messages of skipped invalid records

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """A few lines for ``liveedit data check``."""
        spec = FORMAT_SPECS.get(self.format)
        name = f" ({spec.dataset})" if spec else ""
        lines = [f"{self.file}{name}", f"  records: {len(self.records)}"]
        if self.skipped:
            parts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
            lines.append(f"  skipped: {self.num_skipped} ({parts})")
        else:
            lines.append("  skipped: 0")
        if self.images_checked:
            lines.append(f"  images found: {self.images_found}")
        else:
            lines.append("  images found: not checked")
        n_port = sum(len(r.port_new) for r in self.records)
        if n_port:
            hops = Counter(qa.hops for r in self.records for qa in r.port_new)
            per_hop = ", ".join(f"{h}-hop: {n}" for h, n in sorted(hops.items()))
            lines.append(f"  portability questions: {n_port} ({per_hop})")
        for msg in self.errors[:10]:
            lines.append(f"  invalid: {msg}")
        if len(self.errors) > 10:
            lines.append(f"  ... and {len(self.errors) - 10} more invalid records")
        return "\n".join(lines)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


class _RecordParser:
    """Parses and validates one file's records; caches image existence checks."""

    def __init__(self, spec: FormatSpec, file: Path, image_root: Path, check_images: bool):
        self.spec = spec
        self.file = file
        self.image_root = image_root
        self.check_images = check_images
        self.found: set[str] = set()
        self._exists: dict[str, bool] = {}

    def error(self, index: int, fld: str, msg: str) -> DataError:
        return DataError(self.file, msg, index, fld)

    def string(self, obj: dict, index: int, key: str, where: str | None = None) -> str:
        where = where or key
        if key not in obj:
            raise self.error(index, where, "required field is missing")
        value = obj[key]
        if not isinstance(value, str):
            raise self.error(index, where, f"expected a string, got {_type_name(value)}")
        return value

    def image(self, obj: dict, index: int, key: str, where: str | None = None) -> str:
        where = where or key
        rel = self.string(obj, index, key, where)
        if not rel.strip():
            raise self.error(index, where, "empty image path")
        if self.check_images:
            exists = self._exists.get(rel)
            if exists is None:
                exists = self._exists[rel] = (self.image_root / rel).is_file()
            if not exists:
                raise self.error(
                    index,
                    where,
                    f"image file not found: {self.image_root / rel} (image root "
                    f"{self.image_root}; {self.spec.dataset} paths look like "
                    f"{self.spec.image_layout})",
                )
            self.found.add(rel)
        return rel

    def portability(self, value: Any, index: int) -> tuple[PortabilityQA, ...]:
        if isinstance(value, dict):  # tolerated: a lone entry instead of a list
            value = [value]
        if not isinstance(value, list):
            raise self.error(
                index, "port_new", f"expected a list of objects, got {_type_name(value)}"
            )
        out = []
        for j, entry in enumerate(value):
            where = f"port_new[{j}]"
            if not isinstance(entry, dict):
                raise self.error(index, where, f"expected an object, got {_type_name(entry)}")
            port_type = self.string(entry, index, "port_type", f"{where}.port_type")
            m = _PORT_TYPE.match(port_type)
            if not m or int(m.group(1)) < 1:
                raise self.error(
                    index, f"{where}.port_type", f"expected '<n>-hop', got {port_type!r}"
                )
            if "Q&A" not in entry:
                raise self.error(index, f"{where}.Q&A", "required field is missing")
            qa = entry["Q&A"]
            if not isinstance(qa, dict):
                raise self.error(index, f"{where}.Q&A", f"expected an object, got {_type_name(qa)}")
            question = self.string(qa, index, "Question", f"{where}.Q&A.Question")
            answer = self.string(qa, index, "Answer", f"{where}.Q&A.Answer")
            image = None
            if entry.get("image") is not None:
                image = self.image(entry, index, "image", f"{where}.image")
            out.append(PortabilityQA(question, answer, int(m.group(1)), image))
        return tuple(out)

    def parse(self, obj: Any, index: int) -> EditRecord | None:
        """The record at ``index``, or ``None`` if it is to be skipped for an empty ``alt``."""
        if not isinstance(obj, dict):
            raise self.error(index, "", f"expected a JSON object, got {_type_name(obj)}")
        if obj.get("alt") == "":
            return None
        values: dict[str, Any] = {}
        for key in REQUIRED_FIELDS:
            values[key] = self.string(obj, index, key)
        for key in IMAGE_FIELDS:
            values[key] = self.image(obj, index, key)
        pred = obj.get("pred")
        if pred is not None and not isinstance(pred, str):
            raise self.error(index, "pred", f"expected a string or null, got {_type_name(pred)}")
        port: tuple[PortabilityQA, ...] = ()
        if obj.get("port_new") is not None:
            if not self.spec.portability:
                raise self.error(
                    index, "port_new", f"a VLKEB field; the {self.spec.dataset} schema has none"
                )
            port = self.portability(obj["port_new"], index)
        return EditRecord(
            **values,
            pred=pred,
            port_new=port,
            format=self.spec.name,
            index=index,
            image_root=str(self.image_root),
            source=str(self.file),
        )


def _spec(fmt: str, file: Path) -> FormatSpec:
    try:
        return FORMAT_SPECS[fmt]
    except KeyError:
        raise DataError(
            file, f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}"
        ) from None


def _read_json_list(file: Path) -> list:
    if not file.exists():
        raise DataError(file, "file not found")
    if not file.is_file():
        raise DataError(file, "not a file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(file, f"cannot read file: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            file, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    if not isinstance(data, list):
        raise DataError(file, f"expected a JSON list of records, got {_type_name(data)}")
    return data


def load_records(
    fmt: str,
    json_path: str | Path,
    image_root: str | Path,
    *,
    skip_invalid: bool = False,
    check_images: bool = True,
) -> LoadResult:
    """Load and validate a public-schema JSON file (``fmt`` in ``evqa``, ``eic``, ``vlkeb``).

    File-level problems (missing, not JSON, not a list, unknown format) always raise
    :class:`DataError`. A malformed record raises one naming the file, record index and field, or,
    with ``skip_invalid=True``, is skipped and counted under ``"invalid field '<field>'"``
    (``"invalid record"`` for a record that is not an object). Records with an empty ``alt`` are
    skipped and counted under ``"empty alt"``. ``check_images=False`` skips the image existence
    checks (``images_found`` is then 0).
    """
    file = Path(json_path)
    spec = _spec(fmt, file)
    data = _read_json_list(file)
    parser = _RecordParser(spec, file, Path(image_root), check_images)
    records: list[EditRecord] = []
    skipped: Counter[str] = Counter()
    errors: list[str] = []
    for index, obj in enumerate(data):
        try:
            record = parser.parse(obj, index)
        except DataError as exc:
            if not skip_invalid:
                raise
            skipped[f"invalid field '{exc.field}'" if exc.field else "invalid record"] += 1
            errors.append(str(exc))
            continue
        if record is None:
            skipped[EMPTY_ALT] += 1
        else:
            records.append(record)
    return LoadResult(
        records=records,
        skipped=dict(skipped),
        images_found=len(parser.found),
        file=file,
        format=spec.name,
        images_checked=check_images,
        errors=errors,
    )


def check_data(
    fmt: str, json_path: str | Path, image_root: str | Path, skip_invalid: bool = False
) -> LoadResult:
    """What ``liveedit data check`` runs: a full load with image checks. The CLI prints
    :meth:`LoadResult.summary` and exits non-zero on :class:`DataError`."""
    return load_records(fmt, json_path, image_root, skip_invalid=skip_invalid, check_images=True)


def record_to_json(record: EditRecord) -> dict[str, Any]:
    """The inverse of loading: ``record`` as an object of its format's public schema.

    ``pred`` is always written (``null`` when unknown) so that the official loaders, which index
    ``record['pred']``, read the file too. ``port_new`` is written in VLKEB's list form, one
    ``{"port_type": "<n>-hop", "Q&A": {"Question", "Answer"}}`` entry per question (plus
    ``"image"`` where the question has its own image). A record with portability questions can
    only be written in the ``vlkeb`` format.
    """
    spec = FORMAT_SPECS.get(record.format)
    if spec is None:
        raise ValueError(f"record {record.edit_id}: unknown format {record.format!r}")
    out: dict[str, Any] = {key: getattr(record, key) for key in JSON_ORDER}
    if record.port_new:
        if not spec.portability:
            raise ValueError(
                f"record {record.edit_id}: port_new is a VLKEB field; the {spec.dataset} schema "
                "has no portability questions"
            )
        entries = []
        for qa in record.port_new:
            entry: dict[str, Any] = {
                "port_type": f"{qa.hops}-hop",
                "Q&A": {"Question": qa.question, "Answer": qa.answer},
            }
            if qa.image is not None:
                entry["image"] = qa.image
            entries.append(entry)
        out["port_new"] = entries
    return out


def write_records(records: list[EditRecord], json_path: str | Path, *, indent: int = 1) -> Path:
    """Write ``records`` as a public-schema JSON list (via :func:`record_to_json`), atomically.
    All records must share one format."""
    fmts = {r.format for r in records}
    if len(fmts) > 1:
        raise ValueError(f"records of several formats in one file: {sorted(fmts)}")
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps([record_to_json(r) for r in records], indent=indent, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    tmp.replace(path)
    return path
