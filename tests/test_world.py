"""The synthetic world: round trips through the public loaders, determinism, disjoint splits,
truthful answers and counterfactual targets, jitter invariance, portability, corpus formats."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liveedit.data.loaders import load_records
from liveedit.data.records import format_question, portability_views, record_views
from liveedit.world import WorldError, build_world, load_world
from liveedit.world.build import MANIFEST, GeneratedWorld, generate_world
from liveedit.world.build import SIZES as WORLD_SIZES
from liveedit.world.families import FAMILIES, FAMILY_FORMATS, Generated
from liveedit.world.knowledge import CHAINS, RECORD_RENDERINGS, RELATIONS
from liveedit.world.questions import ANSWERS, CountBalance, caption, parse_question, sample_query
from liveedit.world.render import (
    BACKGROUND_RGB,
    CELL,
    IMAGE_SIZE,
    Jitter,
    nearest_colour,
    object_anchor,
    object_box,
    render,
)
from liveedit.world.scene import Object, Scene, ScenePools
from liveedit.world.vocabulary import COLOURS, NQ_PREFIX, POSITIONS, SHAPES, SIZES, words

ANSWER_SUFFIX = " The answer is:"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GeneratedWorld]:
    out = tmp_path_factory.mktemp("world") / "tiny"
    build_world(out, size="tiny", seed=0)
    return out, generate_world(size="tiny", seed=0)


def all_generated(gen: GeneratedWorld) -> list[tuple[str, str, Generated]]:
    return [(f, s, g) for f, d in gen.data.items() for s, gs in d.splits.items() for g in gs]


_CAPTION_PART = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) at the "
    rf"({'|'.join(sorted(POSITIONS, key=len, reverse=True))})"
)


def caption_objects(text: str) -> set[tuple[str, str, str, str]]:
    """The (size, colour, shape, position) objects a canonical caption names."""
    parts = _CAPTION_PART.findall(text)
    assert _CAPTION_PART.sub("X", text) in ("X", "X and X", "X, X and X"), text
    return set(parts)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- layout and round trip --------------------------------------------------------------------


def test_layout_and_manifest(built: tuple[Path, GeneratedWorld]) -> None:
    out, _ = built
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["version"] == 3 and manifest["seed"] == 0 and manifest["size"] == "tiny"
    assert manifest["families"] == list(FAMILIES) and manifest["image_size"] == IMAGE_SIZE
    for family in FAMILIES:
        train, test = WORLD_SIZES["tiny"].records[family]
        assert manifest["counts"][family] == {"train": train, "test": test}
        for split in ("train", "test"):
            assert (out / family / f"{split}.json").is_file()
    for split in ("train", "heldout"):
        lines = (out / "corpus" / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == manifest["counts"]["corpus"][split] > 100
    assert manifest["vocabulary"] == sorted(set(manifest["vocabulary"]))
    assert not list(out.parent.glob(".*building*")) and not list(out.parent.glob(".*replaced*"))


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_through_public_loader(built: tuple[Path, GeneratedWorld], family: str) -> None:
    out, gen = built
    for split in ("train", "test"):
        result = load_records(
            FAMILY_FORMATS[family], out / family / f"{split}.json", out / "images"
        )
        expected = [g.record for g in gen.data[family].splits[split]]
        assert result.records == expected
        assert result.skipped == {}
        assert all(r.format == FAMILY_FORMATS[family] for r in result.records)
        assert result.images_found == len(
            {p for r in expected for p in (r.image, r.image_rephrase, r.m_loc)}
        )
    world = load_world(out)
    assert world.records(family, "test") == [g.record for g in gen.data[family].splits["test"]]


def test_written_images_are_the_scenes(built: tuple[Path, GeneratedWorld]) -> None:
    out, gen = built
    for job in gen.jobs[::7]:
        on_disk = np.asarray(Image.open(out / "images" / job.path).convert("RGB"))
        assert on_disk.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert np.array_equal(on_disk, np.asarray(render(job.scene, job.jitter)))


# --- determinism --------------------------------------------------------------------------------


def test_deterministic_bytes_for_a_seed(tmp_path: Path, built: tuple[Path, GeneratedWorld]) -> None:
    out, _ = built
    again = tmp_path / "again"
    build_world(again, size="tiny", seed=0)
    assert tree_digest(again) == tree_digest(out)
    other = tmp_path / "other"
    build_world(other, size="tiny", seed=1)
    a, b = tree_digest(out), tree_digest(other)
    assert a[MANIFEST] != b[MANIFEST]
    assert a["vqa/test.json"] != b["vqa/test.json"]
    assert a["knowledge/train.json"] != b["knowledge/train.json"]


def test_family_subset_keeps_the_other_families_files(tmp_path: Path) -> None:
    full, only = tmp_path / "full", tmp_path / "only"
    build_world(full, size="tiny", seed=3)
    build_world(only, families=("knowledge",), size="tiny", seed=3)
    assert json.loads((only / MANIFEST).read_text())["families"] == ["knowledge"]
    assert not (only / "vqa").exists()
    for name in ("knowledge/train.json", "knowledge/test.json", "corpus/train.jsonl"):
        assert (only / name).read_bytes() == (full / name).read_bytes()


# --- splits -----------------------------------------------------------------------------------


def test_train_test_disjoint_in_scenes_and_entities(built: tuple[Path, GeneratedWorld]) -> None:
    _, gen = built
    scenes: dict[str, set[str]] = {"train": set(), "test": set()}
    landmarks: dict[str, set[str]] = {"train": set(), "test": set()}
    for family, split, g in all_generated(gen):
        if family == "knowledge":
            assert g.landmark is not None and g.landmark.split == split
            landmarks[split].add(g.landmark.mid)
            assert g.record.image.startswith(f"mmkb_images/{g.landmark.mid}/")
        else:
            scenes[split].add(g.scene.signature())
        scenes[split].add(g.m_loc_scene.signature())
    assert scenes["train"] and scenes["test"] and not scenes["train"] & scenes["test"]
    assert landmarks["train"] and landmarks["test"] and not landmarks["train"] & landmarks["test"]
    test_images = {
        p
        for _, s, g in all_generated(gen)
        if s == "test"
        for p in (g.record.image, g.record.image_rephrase)
    }
    train_images = {
        p
        for _, s, g in all_generated(gen)
        if s == "train"
        for p in (g.record.image, g.record.image_rephrase)
    }
    assert not test_images & train_images
    # corpus scenes are fresh: never a record's scene, and held-out scenes are not train scenes
    corpus_scenes = {
        split: {j.scene.signature() for j in gen.jobs if j.path.startswith(f"corpus/{split}/")}
        for split in ("train", "heldout")
    }
    assert corpus_scenes["train"] and corpus_scenes["heldout"]
    assert not corpus_scenes["train"] & corpus_scenes["heldout"]
    for split in ("train", "heldout"):
        assert not corpus_scenes[split] & (scenes["train"] | scenes["test"])
    emblems = [lm.emblem.signature() for lm in gen.graph.landmarks]
    assert len(set(emblems)) == len(emblems)


# --- answers ------------------------------------------------------------------------------------


def test_alt_is_counterfactual_and_pred_is_true(built: tuple[Path, GeneratedWorld]) -> None:
    _, gen = built
    for family, _, g in all_generated(gen):
        r = g.record
        assert r.alt and r.pred and r.alt != r.pred
        if family == "vqa":
            assert g.query is not None
            assert r.pred == g.query.answer(g.scene)
            assert r.alt in ANSWERS[g.query.kind]
        elif family == "caption":
            assert r.pred == caption(g.scene)
            true, alt = caption_objects(r.pred), caption_objects(r.alt)
            assert len(true) == len(alt) == len(g.scene.objects)
            (old,), (new,) = true - alt, alt - true  # one object changed ...
            assert sum(a != b for a, b in zip(old, new, strict=True)) == 1  # ... in one attribute
        else:
            assert g.landmark is not None and g.relation is not None
            assert r.pred == g.landmark.tail(g.relation)
            assert r.alt in gen.graph.candidates(g.landmark, g.relation)


def test_every_vqa_question_is_unambiguous(built: tuple[Path, GeneratedWorld]) -> None:
    _, gen = built
    for family, _, g in all_generated(gen):
        r = g.record
        if family == "vqa":
            src, t_src = parse_question(r.src)
            rephrase, t_rephrase = parse_question(r.rephrase)
            assert src == rephrase == g.query and t_src != t_rephrase
            matches = [o for o in g.scene.objects if src.referent.matches(o)]
            assert len(matches) == 1 or src.kind == "count"
            assert src.answer(g.scene) == r.pred
        m_loc, _ = parse_question(r.m_loc_q)
        assert m_loc == g.m_loc_query
        assert m_loc.answer(g.m_loc_scene) == r.m_loc_a
        assert g.m_loc_scene.signature() != g.scene.signature()


def test_ambiguous_questions_are_never_answered() -> None:
    scene = Scene(
        (Object("circle", "red", "small", 0), Object("circle", "blue", "large", 4)), "gray"
    )
    query, _ = parse_question("What colour is the circle?")
    assert query.answer(scene) is None
    assert parse_question("What colour is the small circle?")[0].answer(scene) == "red"
    assert parse_question("How many circles are there?")[0].answer(scene) == "two"
    assert parse_question("Where is the blue object located?")[0].answer(scene) == "center"
    with pytest.raises(ValueError):
        parse_question("What colour is the dog?")


def test_image_rephrase_keeps_the_answers(built: tuple[Path, GeneratedWorld]) -> None:
    out, gen = built
    for _, _, g in all_generated(gen):
        rephrased = np.asarray(Image.open(out / "images" / g.record.image_rephrase).convert("RGB"))
        assert np.array_equal(rephrased, np.asarray(render(g.scene, g.rephrase_jitter)))
        original = np.asarray(Image.open(out / "images" / g.record.image).convert("RGB"))
        assert not np.array_equal(original, rephrased)
        clean = Jitter(g.rephrase_jitter.dx, g.rephrase_jitter.dy, g.rephrase_jitter.scale)
        clean_px = np.asarray(render(g.scene, clean)).astype(int)
        mask = np.abs(clean_px - np.array(BACKGROUND_RGB[g.scene.background])).sum(-1) > 0
        inside = np.zeros_like(mask)
        for obj in g.scene.objects:
            # the colour at a point of the shape is the object's colour, under shift + noise
            x, y = object_anchor(obj, g.rephrase_jitter)
            assert nearest_colour(tuple(rephrased[y, x])) == obj.colour
            # the object stays inside its cell (so position and count questions keep answers)
            x0, y0, x1, y1 = object_box(obj, g.rephrase_jitter)
            row, col = divmod(obj.cell, 3)
            assert col * CELL < x0 < x1 < (col + 1) * CELL
            assert row * CELL < y0 < y1 < (row + 1) * CELL
            inside[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = True
        assert not (mask & ~inside).any()  # nothing drawn outside the objects' cells


def test_jittered_renders_change_pixels_not_content() -> None:
    scene = Scene(
        (Object("ring", "green", "small", 2), Object("cross", "pink", "large", 6)), "white"
    )
    base = np.asarray(render(scene))
    jittered = np.asarray(render(scene, Jitter(2, -2, 1.08, "black", 6.0, 7)))
    assert not np.array_equal(base, jittered)
    for obj in scene.objects:
        for img, j in ((base, None), (jittered, Jitter(2, -2, 1.08, "black", 6.0, 7))):
            x, y = object_anchor(obj, j)
            assert nearest_colour(tuple(img[y, x])) == obj.colour
    ring = scene.objects[0]
    cx, cy = (int(v) for v in object_anchor(Object("circle", "green", "small", 2)))
    assert nearest_colour(tuple(base[cy, cx])) == "white"  # the ring's hole shows the background
    assert ring.position == "top right"


def test_portability_follows_the_graph(built: tuple[Path, GeneratedWorld]) -> None:
    _, gen = built
    kg = gen.graph
    seen_hops = set()
    for g in gen.data["knowledge"].splits["train"] + gen.data["knowledge"].splits["test"]:
        r, relation = g.record, g.relation
        assert relation in RELATIONS and r.port_new
        assert [qa.hops for qa in r.port_new] == list(range(1, len(CHAINS[relation]) + 1))
        seen_hops |= {qa.hops for qa in r.port_new}
        # follow the new tail through the raw tables
        if relation == "name":
            city = kg.landmark_named(r.alt).city
            expected = [city, kg.city_country[city], kg.country_region[kg.city_country[city]]]
        elif relation == "city":
            expected = [kg.city_country[r.alt], kg.country_region[kg.city_country[r.alt]]]
        else:
            table = kg.builder_city if relation == "builder" else kg.architect_city
            city = table[r.alt]
            expected = [city, kg.city_country[city], kg.country_region[kg.city_country[city]]]
        assert [qa.answer for qa in r.port_new] == expected
        # the one-hop answer changes with the edit wherever the graph allows it
        true_first = kg.chain(relation, r.pred)[0][1]
        if any(
            kg.chain(relation, t)[0][1] != true_first for t in kg.candidates(g.landmark, relation)
        ):
            assert r.port_new[0].answer != true_first
        assert [v.image for v in portability_views(r)] == [r.image] * len(r.port_new)
        assert r.image != r.image_rephrase
    assert seen_hops == {1, 2, 3}


# --- corpus and vocabulary ----------------------------------------------------------------------


def test_corpus_uses_the_record_view_formats(built: tuple[Path, GeneratedWorld]) -> None:
    out, gen = built
    world = load_world(out)
    corpus = world.corpus("train")
    assert [e.to_json() for e in corpus] == [e.to_json() for e in gen.corpus["train"]]
    by_task: dict[str, set[str]] = {}
    for ex in corpus + world.corpus("heldout"):
        by_task.setdefault(ex.task, set()).add(ex.prompt)
        if ex.image is not None:
            assert (world.image_root / ex.image).is_file()
        if ex.task.startswith("vqa_"):
            assert ex.prompt.endswith(ANSWER_SUFFIX)
            query, _ = parse_question(ex.prompt[: -len(ANSWER_SUFFIX)])
            assert ex.task == f"vqa_{query.kind}" and ex.target in ANSWERS[query.kind]
        elif ex.task == "text_fact":
            assert ex.image is None and ex.prompt.startswith(NQ_PREFIX) and ex.prompt.endswith("?")
        else:
            assert ex.image is not None
    assert set(by_task) == {
        "vqa_colour", "vqa_shape", "vqa_count", "vqa_position", "caption",
        "knowledge_name", "knowledge_fact", "knowledge_hop", "text_fact",
    }  # fmt: skip
    all_prompts = set().union(*by_task.values())
    for family, _, g in all_generated(gen):
        views = record_views(g.record)
        assert views["loc"].prompt in by_task["text_fact"]
        assert parse_question(views["m_loc"].prompt.removesuffix(ANSWER_SUFFIX))[0] == (
            g.m_loc_query
        )
        if family == "vqa":
            assert views["edit"].prompt == format_question(g.record.src, "evqa")
        if family in ("caption", "knowledge"):
            assert views["edit"].prompt in all_prompts and views["rephrase"].prompt in all_prompts
        for qa in g.record.port_new:
            assert qa.question in by_task["knowledge_hop"] | by_task["knowledge_fact"]


def test_count_balance_asks_the_least_asked_form_and_answer() -> None:
    two_red_circles = Scene(
        (Object("circle", "red", "small", 0), Object("circle", "red", "large", 4)), "black"
    )
    one_blue_square = Scene((Object("square", "blue", "small", 8),), "white")
    balance, rng = CountBalance(), random.Random(0)
    asked = []
    for scene in (two_red_circles,) * 3 + (one_blue_square,) * 3:
        query = balance.sample(rng, scene)
        assert query is not None
        form = tuple(k for k in ("colour", "shape") if getattr(query.referent, k))
        asked.append((form, query.answer(scene)))
    # each scene allows three (form, answer) pairs; none is asked twice before all were asked once
    assert sorted(asked[:3]) == [((), "two"), (("colour",), "two"), (("shape",), "two")]
    assert sorted(asked[3:]) == [((), "one"), (("colour",), "one"), (("shape",), "one")]
    assert balance.asked == Counter({pair: 1 for pair in asked})
    empty = Scene((), "black")
    assert balance.sample(rng, empty) is None


def test_count_balance_removes_the_answer_prior() -> None:
    """Drawn per scene, "How many <colour|shape> objects?" is answered "one" most of the time
    (two objects sharing one of 8 colours / 6 shapes are rare); balanced, far less often."""
    pools, rng = ScenePools(seed=0), random.Random(0)
    scenes = [pools.sample(rng, "corpus_train") for _ in range(3000)]

    def share_of_one(draw) -> float:  # noqa: ANN001
        answers = [
            q.answer(s)
            for s in scenes
            if (q := draw(s)) is not None and (q.referent.colour or q.referent.shape)
        ]
        return answers.count("one") / len(answers)

    per_scene = share_of_one(lambda s: sample_query(random.Random(s.signature()), s, "count"))
    balance = CountBalance()
    balanced = share_of_one(lambda s: balance.sample(rng, s))
    assert per_scene > 0.8 and balanced < 0.6, (per_scene, balanced)
    by_pair = balance.asked
    for form in (("colour",), ("shape",)):  # "one" and "two" about equally often per form
        assert abs(by_pair[(form, "one")] - by_pair[(form, "two")]) <= 0.1 * by_pair[(form, "one")]


def test_corpus_knows_every_entity_on_new_renderings(built: tuple[Path, GeneratedWorld]) -> None:
    _, gen = built
    record_images = {
        p for _, _, g in all_generated(gen) for p in (g.record.image, g.record.image_rephrase)
    }
    images = {s: {e.image for e in gen.corpus[s] if e.image} for s in ("train", "heldout")}
    assert not images["train"] & images["heldout"]
    for landmark in gen.graph.landmarks:  # train and test landmarks alike
        for split in ("train", "heldout"):
            mine = {i for i in images[split] if i.startswith(f"mmkb_images/{landmark.mid}/")}
            assert mine and not mine & record_images
            assert all(int(Path(i).stem) >= RECORD_RENDERINGS for i in mine)
        facts = gen.graph.facts(landmark)
        known = {(e.image, e.target) for e in gen.corpus["train"]}
        assert (landmark.image_path(RECORD_RENDERINGS), facts["city"]) in known
    texts = {e.prompt for e in gen.corpus["train"] if e.task == "text_fact"}
    assert texts == {e.prompt for e in gen.corpus["heldout"] if e.task == "text_fact"}
    assert len(texts) == sum(len(f.questions) for f in gen.graph.text_facts())


def test_vocabulary_covers_every_word(built: tuple[Path, GeneratedWorld]) -> None:
    out, _ = built
    vocabulary = set(json.loads((out / MANIFEST).read_text())["vocabulary"])
    texts: list[str] = []
    for family in FAMILIES:
        for split in ("train", "test"):
            for obj in json.loads((out / family / f"{split}.json").read_text()):
                texts += [obj[k] for k in ("src", "pred", "rephrase", "alt", "loc", "loc_ans")]
                texts += [obj["m_loc_q"], obj["m_loc_a"], ANSWER_SUFFIX, "?"]
                for port in obj.get("port_new", []):
                    texts += [port["Q&A"]["Question"], port["Q&A"]["Answer"]]
    for split in ("train", "heldout"):
        for line in (out / "corpus" / f"{split}.jsonl").read_text().splitlines():
            obj = json.loads(line)
            texts += [obj["prompt"], obj["target"]]
    used = {w for t in texts for w in words(t)}
    assert used == vocabulary
    assert len(vocabulary) < 400


# --- errors ---------------------------------------------------------------------------------------


def test_load_world_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(WorldError, match="no such directory"):
        load_world(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(WorldError, match="not a liveedit world"):
        load_world(tmp_path / "plain")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / MANIFEST).write_text(json.dumps({"version": 2}))
    with pytest.raises(WorldError, match="world version 2, this liveedit reads version 3; rebuild"):
        load_world(tmp_path / "old")
    (tmp_path / "old" / MANIFEST).write_text(json.dumps({"version": 3, "families": ["vqa"]}))
    with pytest.raises(WorldError, match="damaged world manifest"):
        load_world(tmp_path / "old")


def test_build_refuses_foreign_dirs_and_replaces_worlds(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(WorldError, match="not a world"):
        build_world(foreign, size="tiny")
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(WorldError, match="families"):
        build_world(tmp_path / "w", families=("vqa", "photos"), size="tiny")
    with pytest.raises(WorldError, match="size"):
        build_world(tmp_path / "w", size="huge")
    out = tmp_path / "w"
    build_world(out, families=("caption",), size="tiny", seed=2)
    summary = build_world(out, families=("vqa",), size="tiny", seed=2)
    assert load_world(out).families == ("vqa",) and not (out / "caption").exists()
    text = summary.format()
    assert "vqa" in text and "corpus" in text and "vocabulary" in text and "images" in text
    assert summary.counts == {"vqa": {"train": 40, "test": 20}}
