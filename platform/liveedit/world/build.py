"""Building a world on disk and reading it back (layout in docs/CONTRACTS.md)::

    OUT/world.json                   manifest: version, seed, size, families, counts, image_size,
                                     vocabulary (sorted words of every prompt / target)
    OUT/images/                      the image root of every family and of the corpus
    OUT/<family>/{train,test}.json   vqa -> E-VQA schema, caption -> E-IC, knowledge -> VLKEB
    OUT/corpus/{train,heldout}.jsonl the backbones' pretraining corpus

The world is written into a temporary sibling directory and renamed into place, so ``OUT`` is
either the old world or the complete new one. Every byte is a function of (size, families,
seed): JSON with a fixed key order, PNGs without metadata, no timestamps. Reading goes through
:func:`liveedit.data.loaders.load_records`, exactly like the real datasets.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liveedit.data.loaders import LoadResult, load_records, write_records
from liveedit.data.records import DataError, EditRecord, portability_views, record_views
from liveedit.progress import progress

from .corpus import CORPUS_SPLITS, CorpusExample, generate_corpus, read_corpus, write_corpus
from .families import FAMILIES, FAMILY_FORMATS, SPLITS, FamilyData, generate_family
from .knowledge import RECORD_RENDERINGS, RELATIONS, KnowledgeGraph, build_graph
from .render import IMAGE_SIZE, ImageJob
from .scene import ScenePools
from .vocabulary import GRID, WORD_PATTERN, words

WORLD_VERSION = 3
"""2: the corpus's count questions are balanced over (referent form, answer). 3: the small and
paper worlds' corpora have five times the scenes (the twins memorised 4,000 training scenes:
98-100% vqa on them, 91-96% held-out)."""
MANIFEST = "world.json"
MANIFEST_KEYS = ("version", "seed", "size", "families", "counts", "image_size", "vocabulary")


class WorldError(DataError):
    """A directory that is not a (complete, current) world, or a bad build request. A
    :class:`DataError` (``WorldError(where, message)``), so callers that report data errors
    report it too."""

    def __init__(self, where: str | Path, message: str):
        super().__init__(where, message)


@dataclass(frozen=True)
class SizeSpec:
    """How big a world is: records per family and split, corpus scenes and landmark renderings
    per corpus split. The knowledge graph has enough landmarks for the knowledge records
    (one record per landmark and relation), whether or not that family is built."""

    name: str
    records: dict[str, tuple[int, int]]
    corpus_scenes: tuple[int, int]
    corpus_renderings: tuple[int, int]

    def counts(self, family: str) -> dict[str, int]:
        train, test = self.records[family]
        return {"train": train, "test": test}

    def landmarks(self) -> tuple[int, int]:
        train, test = self.records["knowledge"]
        return -(-train // len(RELATIONS)), -(-test // len(RELATIONS))

    def renderings(self, split: str) -> range:
        first = RECORD_RENDERINGS
        n_train, n_heldout = self.corpus_renderings
        if split == "train":
            return range(first, first + n_train)
        return range(first + n_train, first + n_train + n_heldout)


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(
        "tiny",
        {"vqa": (40, 20), "caption": (20, 10), "knowledge": (20, 10)},
        corpus_scenes=(40, 16),
        corpus_renderings=(2, 1),
    ),
    "small": SizeSpec(
        "small",
        {"vqa": (2000, 1000), "caption": (800, 400), "knowledge": (800, 400)},
        corpus_scenes=(20000, 1000),
        corpus_renderings=(3, 1),
    ),
    "paper": SizeSpec(
        "paper",
        {"vqa": (6345, 2093), "caption": (2849, 1000), "knowledge": (5000, 3174)},
        corpus_scenes=(40000, 2000),
        corpus_renderings=(3, 1),
    ),
}


@dataclass
class WorldSummary:
    """What a build produced (``format()`` prints it)."""

    out: Path
    seed: int
    size: str
    families: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    corpus: dict[str, int]
    vocabulary_size: int
    images: int
    bytes: int
    seconds: float
    landmarks: int = 0

    def format(self) -> str:
        lines = [f"world {self.out}  (size {self.size}, seed {self.seed})"]
        for family in self.families:
            c = self.counts[family]
            extra = f", {self.landmarks} landmarks" if family == "knowledge" else ""
            lines.append(
                f"  {family:<10} train {c['train']:>6,}  test {c['test']:>6,}"
                f"   ({FAMILY_FORMATS[family]} schema{extra})"
            )
        lines.append(
            f"  {'corpus':<10} train {self.corpus['train']:>6,}  heldout {self.corpus['heldout']:,}"
            " lines"
        )
        lines.append(f"  vocabulary {self.vocabulary_size:,} words")
        lines.append(
            f"  images     {self.images:,} PNG ({IMAGE_SIZE}x{IMAGE_SIZE});"
            f" {self.bytes / 1e6:.1f} MB on disk; built in {self.seconds:.1f} s"
        )
        return "\n".join(lines)


@dataclass
class World:
    """A world read back from disk: the manifest and every split loaded by ``load_records``."""

    root: Path
    manifest: dict[str, Any]
    splits: dict[str, dict[str, LoadResult]] = field(default_factory=dict)

    @property
    def image_root(self) -> Path:
        return self.root / "images"

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.manifest["families"])

    @property
    def vocabulary(self) -> list[str]:
        return list(self.manifest["vocabulary"])

    def records(self, family: str, split: str) -> list[EditRecord]:
        if family not in self.splits:
            raise WorldError(self.root, f"the world has no {family!r} family ({self.families})")
        return self.splits[family][split].records

    def corpus_path(self, split: str) -> Path:
        return self.root / "corpus" / f"{split}.jsonl"

    def corpus(self, split: str) -> list[CorpusExample]:
        return read_corpus(self.corpus_path(split))


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise WorldError(out, "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise WorldError(
            out,
            f"exists, is not empty and is not a world (no {MANIFEST}); "
            "refusing to replace it: choose another --out or remove it",
        )


def _unique_jobs(jobs: Iterable[ImageJob]) -> list[ImageJob]:
    by_path: dict[str, ImageJob] = {}
    for job in jobs:
        seen = by_path.setdefault(job.path, job)
        if seen != job:
            raise AssertionError(f"two different images for {job.path}")  # a generator bug
    return sorted(by_path.values(), key=lambda j: j.path)


def _vocabulary(families: Iterable[FamilyData], corpus: Iterable[CorpusExample]) -> list[str]:
    texts: set[str] = set()
    for data in families:
        for generated in data.splits.values():
            for g in generated:
                views = [*record_views(g.record).values(), *portability_views(g.record)]
                texts.update(t for v in views for t in (v.prompt, v.target))
                texts.add(g.record.pred or "")
    for ex in corpus:
        texts.update((ex.prompt, ex.target))
    return sorted({w for t in texts for w in words(t)})


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


@dataclass
class GeneratedWorld:
    """A world in memory, before it is written: the graph, the records with their ground truth,
    the corpus, the images to render and the vocabulary."""

    spec: SizeSpec
    seed: int
    families: tuple[str, ...]
    graph: KnowledgeGraph
    data: dict[str, FamilyData]
    corpus: dict[str, list[CorpusExample]]
    jobs: list[ImageJob]
    vocabulary: list[str]

    def manifest(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {
            f: {s: len(d.splits[s]) for s in SPLITS} for f, d in self.data.items()
        }
        counts["corpus"] = {s: len(self.corpus[s]) for s in CORPUS_SPLITS}
        return {
            "version": WORLD_VERSION,
            "seed": self.seed,
            "size": self.spec.name,
            "families": list(self.families),
            "formats": {f: FAMILY_FORMATS[f] for f in self.families},
            "counts": counts,
            "image_size": IMAGE_SIZE,
            "grid": GRID,
            "images": len(self.jobs),
            "landmarks": len(self.graph.landmarks),
            "word_pattern": WORD_PATTERN,
            "vocabulary": self.vocabulary,
        }


def _check_request(families: tuple[str, ...], size: str, seed: int) -> None:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families or len(set(families)) != len(families):
        raise WorldError(
            "world build",
            f"families {list(families)}: expected distinct values from {', '.join(FAMILIES)}",
        )
    if size not in SIZES:
        raise WorldError("world build", f"size {size!r}: expected one of {', '.join(SIZES)}")
    if seed < 0:
        raise WorldError("world build", f"seed {seed}: expected >= 0")


def generate_world(
    families: Sequence[str] = FAMILIES, size: str = "tiny", seed: int = 0
) -> GeneratedWorld:
    """Everything :func:`build_world` writes, in memory (no image is rendered yet)."""
    families = tuple(families)
    _check_request(families, size, seed)
    spec = SIZES[size]
    pools = ScenePools(seed)
    graph = build_graph(seed, *spec.landmarks())
    data = {
        f: generate_family(f, seed, spec.counts(f), pools, graph) for f in FAMILIES if f in families
    }
    corpus, corpus_jobs = {}, []
    for i, split in enumerate(CORPUS_SPLITS):
        corpus[split], jobs = generate_corpus(
            split, seed, pools, graph, spec.corpus_scenes[i], spec.renderings(split)
        )
        corpus_jobs += jobs
    return GeneratedWorld(
        spec=spec,
        seed=seed,
        families=families,
        graph=graph,
        data=data,
        corpus=corpus,
        jobs=_unique_jobs([j for d in data.values() for j in d.jobs] + corpus_jobs),
        vocabulary=_vocabulary(data.values(), (ex for exs in corpus.values() for ex in exs)),
    )


def build_world(
    out: str | Path,
    families: Sequence[str] = FAMILIES,
    size: str = "tiny",
    seed: int = 0,
) -> WorldSummary:
    """Generate a world into ``out`` (replacing a world already there; refusing to replace a
    non-empty directory that is not a world). Deterministic for ``(families, size, seed)``."""
    start = time.perf_counter()
    out = Path(out)
    _check_request(tuple(families), size, seed)
    _check_out(out)
    world = generate_world(families, size, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        image_root = tmp / "images"
        for job in progress(world.jobs, "world images", len(world.jobs)):
            job.write(image_root)
        for family, d in world.data.items():
            for split in SPLITS:
                write_records([g.record for g in d.splits[split]], tmp / family / f"{split}.json")
        for split, examples in world.corpus.items():
            write_corpus(tmp / "corpus" / f"{split}.jsonl", examples)
        manifest = world.manifest()
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        n_bytes = _tree_bytes(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    counts = manifest["counts"]
    return WorldSummary(
        out=out,
        seed=seed,
        size=size,
        families=world.families,
        counts={f: counts[f] for f in world.families},
        corpus=counts["corpus"],
        vocabulary_size=len(world.vocabulary),
        images=len(world.jobs),
        bytes=n_bytes,
        seconds=time.perf_counter() - start,
        landmarks=len(world.graph.landmarks),
    )


def load_world(out: str | Path, *, check_images: bool = True) -> World:
    """Read the manifest of the world in ``out`` and load every split through ``load_records``
    (which validates every record and, with ``check_images``, that every image exists)."""
    root = Path(out)
    hint = f"build one with `liveedit world build --out {root}`"
    if not root.is_dir():
        raise WorldError(root, f"no such directory; {hint}")
    path = root / MANIFEST
    if not path.is_file():
        raise WorldError(root, f"not a liveedit world (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorldError(path, f"unreadable world manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("version") != WORLD_VERSION:
        found = manifest.get("version") if isinstance(manifest, dict) else None
        raise WorldError(
            path,
            f"world version {found!r}, this liveedit reads version {WORLD_VERSION}; "
            f"rebuild it ({hint})",
        )
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    families = manifest.get("families")
    if missing or not isinstance(families, list) or not set(families) <= set(FAMILIES):
        raise WorldError(
            path, f"damaged world manifest (missing {missing}, families {families!r}); {hint}"
        )
    world = World(root, manifest)
    for family in families:
        world.splits[family] = {}
        for split in SPLITS:
            result = load_records(
                FAMILY_FORMATS[family],
                root / family / f"{split}.json",
                world.image_root,
                check_images=check_images,
            )
            expected = manifest["counts"][family][split]
            if len(result.records) != expected or result.skipped:
                raise WorldError(
                    result.file,
                    f"{len(result.records)} records (skipped {result.skipped}), "
                    f"the manifest says {expected}; the world is damaged, rebuild it",
                )
            world.splits[family][split] = result
    return world
