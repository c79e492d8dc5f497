"""The torch Dataset over edit records: five views, decoded images, collate by view."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from liveedit.data import (
    VIEWS,
    DataError,
    EditViewDataset,
    ViewBatch,
    collate_views,
    load_image,
    load_records,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
IMAGES = FIXTURES / "images"

# sizes of the fixture images (tests/fixtures/data/make_images.py)
BUS, BUS_REPHRASE = (32, 24), (24, 24)
MAN, MAN_REPHRASE = (20, 16), (18, 14)
BUILDING = (28, 20)
PERSON = (22, 30)


def dataset(fmt: str, **kwargs) -> EditViewDataset:
    return EditViewDataset(load_records(fmt, FIXTURES / f"{fmt}.json", IMAGES), **kwargs)


def test_evqa_five_views():
    ds = dataset("evqa")
    assert len(ds) == 2
    item = ds[0]
    assert tuple(item) == VIEWS
    assert item["edit"].prompt == "What color is the bus? The answer is:"
    assert item["rephrase"].prompt == "Which colour does the bus have? The answer is:"
    assert item["image_rephrase"].prompt == "What color is the bus? The answer is:"
    assert item["loc"].prompt == "nq question: who wrote the declaration of independence?"
    assert item["m_loc"].prompt == "What is the man holding? The answer is:"
    assert [item[v].target for v in VIEWS] == [
        "blue",
        "blue",
        "blue",
        "Thomas Jefferson",
        "umbrella",
    ]
    assert item["loc"].image is None
    sizes = {v: item[v].image.size for v in ("edit", "rephrase", "image_rephrase", "m_loc")}
    assert sizes == {"edit": BUS, "rephrase": BUS, "image_rephrase": BUS_REPHRASE, "m_loc": MAN}
    for v in ("edit", "rephrase", "image_rephrase", "m_loc"):
        assert isinstance(item[v].image, Image.Image) and item[v].image.mode == "RGB"
    assert {item[v].edit_id for v in VIEWS} == {"evqa-0"}


def test_grayscale_image_is_converted_to_rgb():
    item = dataset("evqa")[1]  # record 2: its image_rephrase is a grayscale PNG
    assert item["image_rephrase"].image.size == MAN_REPHRASE
    assert item["image_rephrase"].image.mode == "RGB"


def test_eic_and_vlkeb_use_src_as_is():
    item = dataset("eic")[0]
    assert item["edit"].prompt == "a photo of"
    assert item["rephrase"].prompt == "a picture showing"
    assert item["edit"].target == "a blue bus driving down a road"
    assert item["loc"].prompt == "nq question: how many players are on a soccer team?"
    assert item["m_loc"].prompt == "What is the man holding? The answer is:"
    item = dataset("vlkeb")[0]
    assert item["edit"].prompt == "What is the name of this building?"
    assert item["edit"].image.size == BUILDING
    assert "portability" not in item


def test_collate_groups_by_view():
    loader = DataLoader(dataset("evqa"), batch_size=2, collate_fn=collate_views)
    (batch,) = list(loader)
    assert tuple(batch) == VIEWS
    for view in VIEWS:
        assert isinstance(batch[view], ViewBatch)
        assert len(batch[view]) == 2
        assert batch[view].edit_ids == ["evqa-0", "evqa-2"]
    assert batch["edit"].prompts == [
        "What color is the bus? The answer is:",
        "What animal is on the bed? The answer is:",
    ]
    assert batch["edit"].targets == ["blue", "dog"]
    assert batch["loc"].images == [None, None]
    assert batch["loc"].targets == ["Thomas Jefferson", "1914"]
    assert [im.size for im in batch["image_rephrase"].images] == [BUS_REPHRASE, MAN_REPHRASE]
    assert [im.size for im in batch["m_loc"].images] == [MAN, BUS]


def test_view_subset():
    ds = dataset("evqa", views=("edit", "loc"))
    assert tuple(ds[0]) == ("edit", "loc")
    with pytest.raises(ValueError, match="unknown views"):
        dataset("evqa", views=("edit", "portability"))


def test_vlkeb_portability_views_grouped_by_hops():
    ds = dataset("vlkeb", portability=True)
    items = [ds[i] for i in range(len(ds))]
    assert [len(it["portability"]) for it in items] == [1, 3, 0]
    batch = collate_views(items)
    assert list(batch) == [*VIEWS, "port_1hop", "port_2hop", "port_3hop"]
    assert batch["port_1hop"].edit_ids == ["vlkeb-0", "vlkeb-1"]
    assert batch["port_1hop"].targets == ["London", "Democratic Party"]
    assert batch["port_3hop"].prompts == [
        "Where was the founder of the political party of the person in the picture born?"
    ]
    # portability probes use the edit image
    assert [im.size for im in batch["port_1hop"].images] == [BUILDING, PERSON]
    assert len(batch["edit"]) == 3


def test_image_decode_error_names_file_record_field(tmp_path):
    root = tmp_path / "images"
    shutil.copytree(IMAGES, root)
    bad = root / "val2014_image_rephrase" / "COCO_val2014_000000000042.png"
    bad.write_bytes(b"not a png")
    json_path = FIXTURES / "evqa.json"
    ds = EditViewDataset(load_records("evqa", json_path, root))  # exists, so it loads
    with pytest.raises(DataError) as info:
        ds[0]
    message = str(info.value)
    assert message.startswith(f"{json_path}: record 0: field 'image_rephrase': cannot decode")
    assert str(bad) in message
    ds[1]  # the other record is fine


def test_load_image_missing_file(tmp_path):
    with pytest.raises(DataError, match="image file not found") as info:
        load_image(tmp_path / "x.png", source="f.json", index=3, field="m_loc")
    assert str(info.value).startswith("f.json: record 3: field 'm_loc'")
