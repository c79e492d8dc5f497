"""Scenes: a few coloured shapes on a 3x3 grid, seeded sampling, and disjoint scene pools.

A scene's *signature* describes its content (objects, not the background, which a re-render may
change); train, test, corpus and emblem scenes are drawn from disjoint pools of signatures
(:class:`ScenePools`), so that no test scene is ever a training scene.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from .vocabulary import BACKGROUNDS, COLOURS, GRID, POSITIONS, SHAPES, SIZES


@dataclass(frozen=True, order=True)
class Object:
    """One shape in one grid cell (``cell`` = ``row * 3 + column``)."""

    shape: str
    colour: str
    size: str
    cell: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")
        if not 0 <= self.cell < GRID * GRID:
            raise ValueError(f"cell {self.cell} outside the {GRID}x{GRID} grid")

    @property
    def position(self) -> str:
        """The cell's name ("top left", "center", ...)."""
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class Scene:
    """Objects in distinct cells (kept in cell order, the canonical order) on a background."""

    objects: tuple[Object, ...]
    background: str

    def __post_init__(self) -> None:
        cells = [o.cell for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {cells}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}")
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: o.cell)))

    def signature(self) -> str:
        """The scene's content (objects in cell order), independent of the background."""
        return ";".join(f"{o.cell}:{o.size}:{o.colour}:{o.shape}" for o in self.objects)

    def with_objects(self, objects: tuple[Object, ...] | list[Object]) -> Scene:
        """The same background with other objects."""
        return Scene(tuple(objects), self.background)


def sample_object(rng: random.Random, cell: int) -> Object:
    """A uniformly random object in ``cell``."""
    return Object(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), cell)


def sample_scene(rng: random.Random, n_objects: int) -> Scene:
    """A scene of ``n_objects`` uniformly random objects in distinct random cells."""
    cells = rng.sample(range(GRID * GRID), n_objects)
    return Scene(tuple(sample_object(rng, c) for c in cells), rng.choice(BACKGROUNDS))


POOLS: dict[str, float] = {
    "train": 0.25,
    "test": 0.2,
    "corpus_train": 0.3,
    "corpus_heldout": 0.15,
    "emblem": 0.1,
}
"""The disjoint scene pools and the share of the signature space each one owns."""


@dataclass(frozen=True)
class ScenePools:
    """Assigns every scene signature to exactly one pool by a seeded hash, and samples scenes of
    a given pool by rejection. Pools are disjoint by construction, whatever the sample sizes."""

    seed: int

    def pool_of(self, scene: Scene) -> str:
        digest = hashlib.sha256(f"{self.seed}|{scene.signature()}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        acc = 0.0
        for name, share in POOLS.items():
            acc += share
            if u < acc:
                return name
        return name

    def sample(
        self,
        rng: random.Random,
        pool: str,
        n_objects: tuple[int, ...] = (1, 2, 3),
        weights: tuple[float, ...] = (0.2, 0.4, 0.4),
    ) -> Scene:
        """A random scene of ``pool`` with a number of objects drawn from ``n_objects``."""
        if pool not in POOLS:
            raise ValueError(f"unknown scene pool {pool!r}; expected one of {', '.join(POOLS)}")
        for _ in range(10_000):
            scene = sample_scene(rng, rng.choices(n_objects, weights)[0])
            if self.pool_of(scene) == pool:
                return scene
        raise RuntimeError(f"could not sample a scene of pool {pool!r}")  # pragma: no cover
