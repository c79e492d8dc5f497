"""The ``Editor`` protocol that LiveEdit and every baseline implement (paper §3).

An editor wraps a frozen :class:`~liveedit.backbones.base.Backbone` f_θ0 and turns a lifelong
stream of edits (v_et, p_et, o_et), t = 1, 2, ... into an edited model f_θt. Evaluation only
talks to this interface: ``reset`` -> ``edit`` (in order) -> ``score`` / ``generate``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from liveedit.data.records import EditRecord, record_views

if TYPE_CHECKING:
    from PIL import Image

    from liveedit.backbones.base import Backbone, LMBatch, Scores


@dataclass(frozen=True)
class EditSample:
    """One edit as an editor consumes it: the image (decoded, or ``None``), the prompt already in
    its dataset format, the new target and a stable id."""

    edit_id: str
    image: Image.Image | None
    prompt: str
    target: str


def edit_samples(records: Sequence[EditRecord]) -> list[EditSample]:
    """The edit view of each record (prompt format of its dataset), images decoded by Pillow."""
    from PIL import Image as PILImage

    samples = []
    for record in records:
        view = record_views(record)["edit"]
        image = None
        if view.image is not None:
            with PILImage.open(record.image_path(view.image)) as img:
                image = img.convert("RGB")
        samples.append(EditSample(record.edit_id, image, view.prompt, view.target))
    return samples


class EditNotRemovable(NotImplementedError):
    """Raised by ``remove`` for methods whose edits are entangled in shared weights."""


class Editor(ABC):
    """A lifelong VLLM editor. Subclasses set ``name`` and implement the abstract methods."""

    name: str = "editor"

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    def edit(self, records: Sequence[EditRecord]) -> list[str]:
        """Apply ``records`` in order, as a lifelong stream; returns their edit ids."""
        return self.apply(edit_samples(records))

    @abstractmethod
    def apply(self, samples: Sequence[EditSample]) -> list[str]:
        """Apply decoded edit samples in order; returns their edit ids."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every edit: the model behaves as f_θ0 again."""

    def score(self, batch: LMBatch) -> Scores:
        """Teacher-forced scores of the target tokens through the *edited* model. The default
        suits editors that change the backbone's weights in place."""
        return self.backbone.score(batch)

    def generate(
        self, images: Sequence[Image.Image | None], prompts: Sequence[str], max_new_tokens: int = 8
    ) -> list[str]:
        """Greedy answers of the edited model."""
        return self.backbone.generate(list(images), list(prompts), max_new_tokens=max_new_tokens)

    def save(self, directory: str | Path) -> Path:
        """Persist the edit state (not the backbone) into ``directory``."""
        raise NotImplementedError(f"{self.name} cannot save its edit state")

    def load(self, directory: str | Path) -> None:
        """Restore an edit state written by :meth:`save`."""
        raise NotImplementedError(f"{self.name} cannot load an edit state")

    def remove(self, edit_id: str) -> None:
        """Roll one edit back, where the method allows it."""
        raise EditNotRemovable(f"{self.name} cannot remove a single edit ({edit_id})")


class EditableVLLM:
    """The user-facing API over any editor: edit with an image, a prompt and a target; ask
    questions; undo.

    >>> vllm = EditableVLLM(editor)                                       # doctest: +SKIP
    >>> edit_id = vllm.edit(image, "What colour is the circle?", "green")  # doctest: +SKIP
    >>> vllm.generate(image, "What colour is the circle?")                # doctest: +SKIP
    """

    def __init__(self, editor: Editor):
        self.editor = editor
        self._count = 0

    def edit(self, image: Image.Image | None, prompt: str, target: str) -> str:
        """Apply one edit; the prompt is used exactly as given (no dataset template)."""
        if not target.strip():
            raise ValueError("target: an edit needs a non-empty target")
        self._count += 1
        sample = EditSample(f"user-{self._count}", image, prompt, target)
        return self.editor.apply([sample])[0]

    def generate(self, image: Image.Image | None, prompt: str, max_new_tokens: int = 8) -> str:
        """The edited model's greedy answer."""
        return self.editor.generate([image], [prompt], max_new_tokens=max_new_tokens)[0]

    def undo(self, edit_id: str) -> None:
        """Roll back one edit (editors that keep edits apart, such as LiveEdit)."""
        self.editor.remove(edit_id)
