"""Loaders for the public E-VQA / E-IC / VLKEB JSON schemas (hand-written fixtures)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from liveedit.data import (
    DataError,
    EditRecord,
    PortabilityQA,
    check_data,
    load_records,
    record_to_json,
    write_records,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
IMAGES = FIXTURES / "images"


def fixture(fmt: str) -> Path:
    return FIXTURES / f"{fmt}.json"


def fixture_objects(fmt: str) -> list:
    return json.loads(fixture(fmt).read_text())


def write_json(tmp_path: Path, data, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# --- loading the three public schemas -----------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, n_records, n_images",
    [("evqa", 2, 4), ("eic", 1, 3), ("vlkeb", 3, 6)],
)
def test_load_public_schema(fmt, n_records, n_images):
    result = load_records(fmt, fixture(fmt), IMAGES)
    assert len(result.records) == n_records
    assert result.skipped == {"empty alt": 1}
    assert result.images_found == n_images
    assert result.file == fixture(fmt)
    objects = fixture_objects(fmt)
    for record in result.records:
        assert isinstance(record, EditRecord)
        assert record.format == fmt
        assert record.image_root == str(IMAGES)
        assert record.source == str(fixture(fmt))
        obj = objects[record.index]  # index = position in the file, skipped records included
        assert record.src == obj["src"] and record.alt == obj["alt"]
        assert record.pred == obj["pred"]
        assert record.image_path(record.image).is_file()
    assert [r.index for r in result.records] == [i for i, o in enumerate(objects) if o["alt"] != ""]


def test_evqa_fields():
    record = load_records("evqa", fixture("evqa"), IMAGES).records[0]
    assert record == EditRecord(
        src="What color is the bus?",
        pred="red",
        rephrase="Which colour does the bus have?",
        alt="blue",
        image="val2014/COCO_val2014_000000000042.jpg",
        image_rephrase="val2014_image_rephrase/COCO_val2014_000000000042.png",
        loc="nq question: who wrote the declaration of independence",
        loc_ans="Thomas Jefferson",
        m_loc="val2014/COCO_val2014_000000000073.jpg",
        m_loc_q="What is the man holding?",
        m_loc_a="umbrella",
        format="evqa",
        index=0,
    )
    assert record.edit_id == "evqa-0"


def test_vlkeb_portability_one_hop_and_multi_hop():
    records = load_records("vlkeb", fixture("vlkeb"), IMAGES).records
    one_hop, multi_hop, none = records
    assert one_hop.port_new == (
        PortabilityQA("In which city is the building in the image located?", "London", 1),
    )
    assert [qa.hops for qa in multi_hop.port_new] == [1, 2, 3]
    assert multi_hop.port_new[2] == PortabilityQA(
        "Where was the founder of the political party of the person in the picture born?",
        "Waxhaws",
        3,
    )
    assert none.port_new == ()


def test_vlkeb_port_new_lone_object_and_own_image(tmp_path):
    objects = fixture_objects("vlkeb")
    objects[0]["port_new"] = {"port_type": "1-hop", "Q&A": {"Question": "Q?", "Answer": "A"}}
    objects[1]["port_new"][0]["image"] = "mmkb_images/m.0cw5n/google_3.jpg"
    records = load_records("vlkeb", write_json(tmp_path, objects), IMAGES).records
    assert records[0].port_new == (PortabilityQA("Q?", "A", 1),)
    assert records[1].port_new[0].image == "mmkb_images/m.0cw5n/google_3.jpg"


def test_pred_optional(tmp_path):
    objects = fixture_objects("evqa")
    del objects[0]["pred"]
    objects[2]["pred"] = None
    records = load_records("evqa", write_json(tmp_path, objects), IMAGES).records
    assert [r.pred for r in records] == [None, None]


def test_check_images_false_skips_image_checks(tmp_path):
    result = load_records("evqa", fixture("evqa"), tmp_path / "nowhere", check_images=False)
    assert len(result.records) == 2
    assert result.images_found == 0
    assert "not checked" in result.summary()


def test_summary_and_check_data():
    result = check_data("vlkeb", fixture("vlkeb"), IMAGES)
    text = result.summary()
    assert str(fixture("vlkeb")) in text
    assert "records: 3" in text
    assert "skipped: 1 (empty alt: 1)" in text
    assert "images found: 6" in text
    assert "portability questions: 4 (1-hop: 2, 2-hop: 1, 3-hop: 1)" in text


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["evqa", "eic", "vlkeb"])
def test_record_to_json_is_the_public_schema(fmt):
    objects = fixture_objects(fmt)
    for record in load_records(fmt, fixture(fmt), IMAGES).records:
        assert record_to_json(record) == objects[record.index]


@pytest.mark.parametrize("fmt", ["evqa", "eic", "vlkeb"])
def test_round_trip(tmp_path, fmt):
    records = load_records(fmt, fixture(fmt), IMAGES).records
    # written by hand with record_to_json, and through write_records
    by_hand = write_json(tmp_path, [record_to_json(r) for r in records], "by_hand.json")
    written = write_records(records, tmp_path / "sub" / "written.json")
    for path in (by_hand, written):
        again = load_records(fmt, path, IMAGES)
        assert again.skipped == {}
        assert [record_to_json(r) for r in again.records] == [record_to_json(r) for r in records]
        # indices are positions in the new file; everything else is equal
        renumbered = [EditRecord(**{**r.__dict__, "index": i}) for i, r in enumerate(records)]
        assert again.records == renumbered


def test_round_trip_keeps_pred_none_and_port_image(tmp_path):
    record = EditRecord(
        src="q",
        alt="a",
        rephrase="r",
        image="i.png",
        image_rephrase="j.png",
        loc="l",
        loc_ans="la",
        m_loc="m.png",
        m_loc_q="mq",
        m_loc_a="ma",
        port_new=(PortabilityQA("pq", "pa", 4, image="p.png"),),
        format="vlkeb",
    )
    obj = record_to_json(record)
    assert obj["pred"] is None
    assert obj["port_new"] == [
        {"port_type": "4-hop", "Q&A": {"Question": "pq", "Answer": "pa"}, "image": "p.png"}
    ]
    path = write_records([record], tmp_path / "one.json")
    assert load_records("vlkeb", path, tmp_path, check_images=False).records == [record]


def test_record_to_json_refuses_port_new_outside_vlkeb():
    record = load_records("vlkeb", fixture("vlkeb"), IMAGES).records[0]
    with pytest.raises(ValueError, match="port_new is a VLKEB field"):
        record_to_json(EditRecord(**{**record.__dict__, "format": "evqa"}))


# --- file-level errors --------------------------------------------------------------------------


def test_file_missing(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(DataError, match="missing.json: file not found"):
        load_records("evqa", path, IMAGES)


def test_file_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"src": "a",')
    with pytest.raises(DataError, match=r"broken.json: not valid JSON: .* line 1 column"):
        load_records("evqa", path, IMAGES, skip_invalid=True)


def test_file_not_a_list(tmp_path):
    path = write_json(tmp_path, {"data": []})
    with pytest.raises(DataError, match="data.json: expected a JSON list of records, got object"):
        load_records("eic", path, IMAGES, skip_invalid=True)


def test_unknown_format():
    with pytest.raises(DataError, match="unknown dataset format 'mmedit'"):
        load_records("mmedit", fixture("evqa"), IMAGES)


# --- record-level errors ------------------------------------------------------------------------


def _set(key, value):
    def mutate(obj):
        obj[key] = value
        return obj

    return mutate


def _delete(key):
    def mutate(obj):
        del obj[key]
        return obj

    return mutate


def _port(mutate_entry):
    def mutate(obj):
        mutate_entry(obj["port_new"])
        return obj

    return mutate


RECORD_ERRORS = [
    # (format, mutation of record 2, field, message fragment)
    ("evqa", lambda obj: ["not", "an", "object"], None, "expected a JSON object, got list"),
    ("evqa", _delete("m_loc_q"), "m_loc_q", "required field is missing"),
    ("evqa", _delete("src"), "src", "required field is missing"),
    ("evqa", _set("rephrase", ["a", "list"]), "rephrase", "expected a string, got list"),
    ("evqa", _set("loc_ans", 3), "loc_ans", "expected a string, got int"),
    ("evqa", _set("alt", None), "alt", "expected a string, got null"),
    ("evqa", _set("pred", ["red"]), "pred", "expected a string or null, got list"),
    ("evqa", _set("image", "val2014/gone.jpg"), "image", "image file not found"),
    ("evqa", _set("image_rephrase", "val2014/gone.png"), "image_rephrase", "image file not found"),
    ("evqa", _set("m_loc", "val2014/gone.jpg"), "m_loc", "image file not found"),
    ("evqa", _set("image", ""), "image", "empty image path"),
    ("evqa", _set("port_new", []), "port_new", "a VLKEB field"),
    ("vlkeb", _set("port_new", "1-hop"), "port_new", "expected a list of objects, got string"),
    ("vlkeb", _port(lambda p: p.append(7)), "port_new[3]", "expected an object, got int"),
    (
        "vlkeb",
        _port(lambda p: p[1].update(port_type="two-hop")),
        "port_new[1].port_type",
        "expected '<n>-hop', got 'two-hop'",
    ),
    (
        "vlkeb",
        _port(lambda p: p[0].pop("Q&A")),
        "port_new[0].Q&A",
        "required field is missing",
    ),
    (
        "vlkeb",
        _port(lambda p: p[0]["Q&A"].pop("Answer")),
        "port_new[0].Q&A.Answer",
        "required field is missing",
    ),
    (
        "vlkeb",
        _port(lambda p: p[2]["Q&A"].update(Question=["q"])),
        "port_new[2].Q&A.Question",
        "expected a string, got list",
    ),
    (
        "vlkeb",
        _port(lambda p: p[0].update(image="mmkb_images/m.0/none.jpg")),
        "port_new[0].image",
        "image file not found",
    ),
]


def _bad_file(tmp_path: Path, fmt: str, mutate) -> Path:
    objects = fixture_objects(fmt)
    if fmt == "vlkeb":  # record 2 gets record 1's multi-hop port_new to be mutated
        objects[2]["port_new"] = copy.deepcopy(objects[1]["port_new"])
    objects[2] = mutate(objects[2])
    return write_json(tmp_path, objects, f"bad_{fmt}.json")


@pytest.mark.parametrize("fmt, mutate, field, fragment", RECORD_ERRORS)
def test_record_error_names_file_index_field(tmp_path, fmt, mutate, field, fragment):
    path = _bad_file(tmp_path, fmt, mutate)
    with pytest.raises(DataError) as info:
        load_records(fmt, path, IMAGES)
    err = info.value
    message = str(err)
    assert message.startswith(f"{path}: record 2")
    if field is not None:
        assert f"field '{field}'" in message
    assert fragment in message
    assert (err.file, err.index, err.field) == (str(path), 2, field or "")


@pytest.mark.parametrize("fmt, mutate, field, fragment", RECORD_ERRORS)
def test_skip_invalid_counts_each_kind(tmp_path, fmt, mutate, field, fragment):
    path = _bad_file(tmp_path, fmt, mutate)
    result = load_records(fmt, path, IMAGES, skip_invalid=True)
    reason = f"invalid field '{field}'" if field is not None else "invalid record"
    n_good = {"evqa": 1, "vlkeb": 2}[fmt]
    assert len(result.records) == n_good
    assert result.skipped == {"empty alt": 1, reason: 1}
    assert len(result.errors) == 1 and fragment in result.errors[0]
    assert reason in result.summary()


def test_missing_image_message_names_path_and_root(tmp_path):
    root = tmp_path / "images"
    shutil.copytree(IMAGES, root)
    (root / "val2014_image_rephrase" / "COCO_val2014_000000000073.png").unlink()
    with pytest.raises(DataError) as info:
        load_records("evqa", fixture("evqa"), root)
    message = str(info.value)
    assert message.startswith(f"{fixture('evqa')}: record 2: field 'image_rephrase'")
    assert str(root / "val2014_image_rephrase" / "COCO_val2014_000000000073.png") in message
    # the record with an empty alt that points at the same file is skipped, not an error
    assert "record 1" not in message


def test_skip_invalid_counts_several_reasons(tmp_path):
    objects = fixture_objects("evqa")
    objects = objects + [
        {**objects[0], "m_loc_q": ["x"]},
        {**objects[0], "m_loc_q": 5},
        {**objects[0], "image": "val2014/none.jpg"},
        "a string",
        {**objects[0], "alt": ""},
    ]
    result = load_records("evqa", write_json(tmp_path, objects), IMAGES, skip_invalid=True)
    assert [r.index for r in result.records] == [0, 2]
    assert result.skipped == {
        "empty alt": 2,
        "invalid field 'm_loc_q'": 2,
        "invalid field 'image'": 1,
        "invalid record": 1,
    }
    assert result.num_skipped == 6
    assert len(result.records) + result.num_skipped == len(objects)  # nothing dropped silently
    assert "skipped: 6" in result.summary()
