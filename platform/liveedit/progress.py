"""Progress bars for every loop that can run longer than a second."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar that appears only once the loop has run for a second, so
    short loops stay silent and long ones always show progress."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, delay=1.0, dynamic_ncols=True))


def progress_bar(desc: str, total: int | None = None, unit: str = "it", show: bool = True) -> tqdm:
    """A manually updated bar (``bar.update(n)``, ``bar.set_postfix(...)``) with the same rule;
    ``show=False`` keeps the same interface silent."""
    return tqdm(desc=desc, total=total, unit=unit, delay=1.0, dynamic_ncols=True, disable=not show)
