"""The typed configuration of a world build (``liveedit world build``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

FAMILIES = ("vqa", "caption", "knowledge")


@dataclass
class WorldConfig:
    """Where and how big a synthetic world to build; ``seed`` fixes every byte written."""

    out: Path = Path("worlds/default")
    families: tuple[Literal["vqa", "caption", "knowledge"], ...] = FAMILIES
    size: Literal["tiny", "small", "paper"] = "small"
    seed: int = field(default=0, metadata={"min": 0})

    def validate(self) -> list[str]:
        problems = []
        if not self.families:
            problems.append(f"families: empty; allowed values: {', '.join(FAMILIES)}")
        if len(set(self.families)) != len(self.families):
            problems.append(f"families: {list(self.families)} repeats a family")
        return problems
