"""FT-L, FT-M and N/A over a real tiny backbone: what they train, bitwise reset, persistence,
and the editor registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from liveedit.backbones import load_backbone
from liveedit.data.loaders import load_records
from liveedit.editors.base import edit_samples
from liveedit.editors.finetune import FT_WEIGHTS, FTL, FTM, FTConfig, NoEdit
from liveedit.editors.registry import (
    EDITOR_NAMES,
    build_editor,
    check_editor_options,
    editor_fingerprint,
    editor_title,
)


@pytest.fixture(scope="module")
def backbone(tiny_llava_dir: Path):
    torch.set_num_threads(1)
    return load_backbone(tiny_llava_dir)


@pytest.fixture(scope="module")
def records(tiny_world: Path):
    return load_records("evqa", tiny_world / "vqa" / "test.json", tiny_world / "images").records


def snapshot(backbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def names_of(backbone, module) -> set[str]:
    ids = {id(t) for t in [*module.parameters(), *module.buffers()]}
    return {
        name
        for name, t in [*backbone.model.named_parameters(), *backbone.model.named_buffers()]
        if id(t) in ids
    }


def edit_nll(backbone, record) -> float:
    sample = edit_samples([record])[0]
    batch = backbone.build_inputs([sample.image], [sample.prompt], [sample.target])
    with torch.no_grad():
        return float(backbone.score(batch).nll.mean())


@pytest.mark.parametrize("cls", [FTL, FTM])
def test_ft_changes_only_its_module_and_reset_restores_bitwise(backbone, records, cls) -> None:
    before = snapshot(backbone)
    editor = cls(backbone)
    module = editor.module
    expected = backbone.last_decoder_layer if cls is FTL else backbone.bridge
    assert module is expected
    trained = names_of(backbone, module)
    assert trained and len(trained) < len(before)
    nll_before = edit_nll(backbone, records[0])
    editor.edit(records[:2])  # two edits of the stream, accumulated
    assert editor.edit_ids == [records[0].edit_id, records[1].edit_id]
    after = snapshot(backbone)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trained
    assert edit_nll(backbone, records[0]) < nll_before
    assert not any(p.requires_grad for p in backbone.model.parameters())  # frozen again
    editor.reset()
    restored = snapshot(backbone)
    assert all(torch.equal(before[k], restored[k]) for k in before)
    assert editor.edit_ids == []


def test_ft_reset_keeps_only_the_module_state(backbone) -> None:
    editor = FTL(backbone)
    module_keys = set(backbone.last_decoder_layer.state_dict())
    assert set(editor._original) == module_keys
    assert len(editor._original) < len(backbone.model.state_dict())


def test_ft_edits_accumulate_over_the_stream(backbone, records) -> None:
    editor = FTL(backbone, FTConfig(steps=3))
    try:
        editor.edit(records[:1])
        one = {k: v.clone() for k, v in backbone.last_decoder_layer.state_dict().items()}
        editor.edit(records[1:2])
        two = {k: v.clone() for k, v in backbone.last_decoder_layer.state_dict().items()}
        assert any(not torch.equal(one[k], two[k]) for k in one)
        editor.reset()
        editor.edit(records[1:2])  # the same edit from the original weights differs
        fresh = backbone.last_decoder_layer.state_dict()
        assert any(not torch.equal(fresh[k], two[k]) for k in fresh)
    finally:
        editor.reset()


def test_ft_save_and_load_round_trip(backbone, records, tmp_path: Path) -> None:
    editor = FTM(backbone, FTConfig(steps=4))
    try:
        editor.edit(records[:1])
        edited = {k: v.clone() for k, v in backbone.bridge.state_dict().items()}
        editor.save(tmp_path / "state")
        assert (tmp_path / "state" / FT_WEIGHTS).is_file()
        editor.reset()
        editor.load(tmp_path / "state")
        assert all(torch.equal(edited[k], v) for k, v in backbone.bridge.state_dict().items())
        assert editor.edit_ids == [records[0].edit_id]
        with pytest.raises(ValueError, match="ft-m"):
            FTL(backbone).load(tmp_path / "state")
    finally:
        editor.reset()


def test_noedit_changes_nothing(backbone, records, tmp_path: Path) -> None:
    before = snapshot(backbone)
    editor = NoEdit(backbone)
    assert editor.edit(records[:3]) == [r.edit_id for r in records[:3]]
    after = snapshot(backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)
    editor.save(tmp_path)
    other = NoEdit(backbone)
    other.load(tmp_path)
    assert other.edit_ids == editor.edit_ids


def test_registry_builds_every_editor(backbone, tmp_path: Path) -> None:
    from liveedit.editors.liveedit import LiveEditConfig, LiveEditModules
    from liveedit.editors.liveedit.editor import LiveEdit, save_editor_weights

    assert EDITOR_NAMES == ("none", "ft-l", "ft-m", "liveedit")
    assert isinstance(build_editor("none", backbone), NoEdit)
    ft = build_editor("ft-l", backbone, steps="3", lr=0.01)
    assert isinstance(ft, FTL) and ft.config.steps == 3 and ft.config.lr == 0.01
    assert isinstance(build_editor("ft-m", backbone), FTM)
    cfg = LiveEditConfig(
        d=backbone.hidden_size, n_vision=backbone.num_vision_tokens, layer=2, d_m=32, heads=4
    )
    save_editor_weights(LiveEditModules(cfg), tmp_path / "weights")
    live = build_editor("liveedit", backbone, weights=str(tmp_path / "weights"))
    assert isinstance(live, LiveEdit)
    fp = editor_fingerprint("liveedit", {"weights": str(tmp_path / "weights")})
    assert set(fp["weights"]) == {"liveedit_config.json", "liveedit.safetensors"}
    assert editor_fingerprint("ft-l", {"steps": "3"}) == editor_fingerprint("ft-l", {"steps": 3})
    assert [editor_title(n) for n in EDITOR_NAMES] == ["N/A", "FT-L", "FT-M", "LiveEdit"]


def test_registry_reports_bad_names_and_options(backbone, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allowed values: none, ft-l, ft-m, liveedit"):
        build_editor("mend", backbone)
    assert any("needs weights" in p for p in check_editor_options("liveedit", {}))
    assert any("missing" in p for p in check_editor_options("liveedit", {"weights": tmp_path}))
    assert any("stepz" in p for p in check_editor_options("ft-l", {"stepz": 3}))
    assert any("steps" in p for p in check_editor_options("ft-m", {"steps": 0}))
    assert check_editor_options("none", {"lr": 1}) != []
