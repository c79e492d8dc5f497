"""A torch ``Dataset`` over edit records that yields their evaluation views with decoded images.

Each item is a ``dict`` from view name to :class:`ViewSample`: the five views of
:func:`~liveedit.data.records.record_views` (``edit``, ``rephrase``, ``image_rephrase``, ``loc``,
``m_loc``), with images decoded by Pillow as RGB (``None`` for the text-only ``loc`` view), and,
with ``portability=True``, the record's VLKEB portability probes under ``"portability"`` (a list,
possibly empty). :func:`collate_views` turns a list of items into one :class:`ViewBatch` per view;
portability probes are grouped by hop count into ``port_<n>hop`` batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .loaders import LoadResult
from .records import VIEWS, DataError, EditRecord, View, portability_views, record_views

__all__ = ["EditViewDataset", "ViewBatch", "ViewSample", "collate_views", "load_image"]

PORTABILITY = "portability"


def load_image(
    path: str | Path, *, source: str = "", index: int | None = None, field: str = ""
) -> Image.Image:
    """Decode ``path`` as an RGB PIL image. A missing or undecodable file raises
    :class:`DataError` naming the image file and, where given, the source JSON file, the record
    index and the field."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        what = "image file not found" if isinstance(exc, FileNotFoundError) else "cannot decode"
        raise DataError(source or path, f"{what}: {path} ({exc})", index, field) from exc


@dataclass(frozen=True)
class ViewSample:
    """One view of one record, ready for a backbone: ``image`` is decoded (``None`` for a
    text-only input). ``hops`` is the portability hop count (0 for the five standard views)."""

    image: Image.Image | None
    prompt: str
    target: str
    edit_id: str
    hops: int = 0


@dataclass
class ViewBatch:
    """A batch of one view: parallel lists, one entry per example."""

    images: list[Image.Image | None] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    edit_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def append(self, sample: ViewSample) -> None:
        self.images.append(sample.image)
        self.prompts.append(sample.prompt)
        self.targets.append(sample.target)
        self.edit_ids.append(sample.edit_id)


# The record field each view's image comes from (for error messages).
_IMAGE_FIELD = {
    "edit": "image",
    "rephrase": "image",
    "image_rephrase": "image_rephrase",
    "m_loc": "m_loc",
}


class EditViewDataset(Dataset):
    """The evaluation views of ``records`` (a list of :class:`EditRecord` or a
    :class:`LoadResult`), images decoded on access.

    ``views`` selects a subset of the five views (default: all); ``portability=True`` adds the
    VLKEB portability probes under ``"portability"``. Use :func:`collate_views` as the
    ``DataLoader``'s ``collate_fn``.
    """

    def __init__(
        self,
        records: Sequence[EditRecord] | LoadResult,
        *,
        views: Iterable[str] = VIEWS,
        portability: bool = False,
    ):
        self.records = list(records.records if isinstance(records, LoadResult) else records)
        self.views = tuple(views)
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown:
            raise ValueError(f"unknown views {unknown}; expected a subset of {VIEWS}")
        self.portability = portability

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, record: EditRecord, view: View, fld: str) -> Image.Image | None:
        if view.image is None:
            return None
        return load_image(
            record.image_path(view.image), source=record.source, index=record.index, field=fld
        )

    def __getitem__(self, i: int) -> dict[str, ViewSample | list[ViewSample]]:
        record = self.records[i]
        all_views = record_views(record)
        item: dict[str, ViewSample | list[ViewSample]] = {}
        for name in self.views:
            view = all_views[name]
            image = self._image(record, view, _IMAGE_FIELD.get(name, name))
            item[name] = ViewSample(image, view.prompt, view.target, record.edit_id)
        if self.portability:
            samples = []
            for j, (qa, view) in enumerate(
                zip(record.port_new, portability_views(record), strict=True)
            ):
                fld = f"port_new[{j}].image" if qa.image is not None else "image"
                image = self._image(record, view, fld)
                samples.append(ViewSample(image, view.prompt, view.target, record.edit_id, qa.hops))
            item[PORTABILITY] = samples
        return item


def collate_views(
    items: Sequence[dict[str, ViewSample | list[ViewSample]]],
) -> dict[str, ViewBatch]:
    """Group a list of dataset items by view: one :class:`ViewBatch` per view name, in the order
    the views first appear. Portability probes become ``port_<n>hop`` batches (one per hop count,
    ascending), so a record contributes to the hop counts it has questions for."""
    out: dict[str, ViewBatch] = {}
    ports: dict[int, ViewBatch] = {}
    for item in items:
        for name, value in item.items():
            if name == PORTABILITY:
                for sample in value:  # type: ignore[union-attr]
                    ports.setdefault(sample.hops, ViewBatch()).append(sample)
            else:
                out.setdefault(name, ViewBatch()).append(value)  # type: ignore[arg-type]
    for hops in sorted(ports):
        out[f"port_{hops}hop"] = ports[hops]
    return out
