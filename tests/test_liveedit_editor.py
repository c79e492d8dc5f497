"""LiveEdit over a real (tiny, random-init) backbone: editing, routing at layer l_e, persistence,
rollback, and the training step (real runs, nothing mocked)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from liveedit.backbones import load_backbone
from liveedit.data.loaders import load_records
from liveedit.data.records import record_views
from liveedit.editors.base import EditableVLLM, edit_samples
from liveedit.editors.liveedit import LiveEditConfig, LiveEditModules
from liveedit.editors.liveedit.editor import LiveEdit, hidden_at_layer
from liveedit.editors.liveedit.training import build_training_batch, training_step

LAYER = 2


@pytest.fixture(scope="module")
def backbone(tiny_llava_dir: Path):
    torch.set_num_threads(1)
    return load_backbone(tiny_llava_dir)


@pytest.fixture(scope="module")
def records(tiny_world: Path):
    return load_records("evqa", tiny_world / "vqa" / "train.json", tiny_world / "images").records


def make_modules(backbone, **overrides) -> LiveEditModules:
    torch.manual_seed(0)
    cfg = LiveEditConfig(
        d=backbone.hidden_size,
        n_vision=backbone.num_vision_tokens,
        layer=LAYER,
        d_m=32,
        heads=4,
        **overrides,
    )
    return LiveEditModules(cfg)


def view_batch(backbone, recs, view: str):
    from PIL import Image

    images, prompts, targets = [], [], []
    for r in recs:
        v = record_views(r)[view]
        images.append(None if v.image is None else Image.open(r.image_path(v.image)).convert("RGB"))
        prompts.append(v.prompt)
        targets.append(v.target)
    return backbone.build_inputs(images, prompts, targets)


def test_empty_repository_leaves_the_model_bitwise_unchanged(backbone, records) -> None:
    editor = LiveEdit(backbone, make_modules(backbone))
    for view in ("edit", "loc", "m_loc"):
        batch = view_batch(backbone, records[:4], view)
        plain = backbone.forward(batch)
        with torch.no_grad():
            edited = editor.score(batch).logits
        assert torch.equal(backbone.score(batch, plain).logits, edited)


def test_hidden_at_layer_stops_after_the_layer(backbone, records) -> None:
    batch = view_batch(backbone, records[:3], "edit")
    calls = []
    top = backbone.decoder_layers[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        h = hidden_at_layer(backbone, batch, LAYER)
    finally:
        top.remove()
    assert calls == []  # the layers above l_e never ran
    _, hidden = backbone.forward_with_hidden(batch, [LAYER])
    assert torch.equal(h, hidden[LAYER])


def test_editing_grows_the_repository_and_changes_only_image_inputs(backbone, records) -> None:
    editor = LiveEdit(backbone, make_modules(backbone, expert_scale=0.05))
    edits = records[:5]
    ids = editor.edit(edits)
    assert ids == [r.edit_id for r in edits]
    assert len(editor.repository) == 5
    # text-only inputs route to no expert: identical logits (T-Loc preserved by construction)
    loc = view_batch(backbone, edits, "loc")
    with torch.no_grad():
        assert torch.equal(editor.score(loc).logits, backbone.score(loc).logits)
    # an edit input whose own expert is routed must change
    batch = view_batch(backbone, edits, "edit")
    with torch.no_grad():
        after = editor.score(batch).logits
        before = backbone.score(batch).logits
    assert not torch.equal(after, before)


def test_batched_edits_equal_sequential_edits(backbone, records) -> None:
    modules = make_modules(backbone)
    one_by_one = LiveEdit(backbone, modules)
    for r in records[:4]:
        one_by_one.edit([r])
    batched = LiveEdit(backbone, modules)
    batched.edit(records[:4])
    a, b = one_by_one.repository.views(), batched.repository.views()
    assert one_by_one.repository.ids == batched.repository.ids
    for name in ("U", "V", "phi", "psi"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-5)


def test_save_load_and_remove_roll_back(backbone, records, tmp_path: Path) -> None:
    modules = make_modules(backbone, expert_scale=0.05)
    editor = LiveEdit(backbone, modules)
    editor.edit(records[:3])
    batch = view_batch(backbone, records[:3], "edit")
    with torch.no_grad():
        with_three = editor.score(batch).logits
    editor.save(tmp_path / "repo")

    restored = LiveEdit(backbone, modules)
    restored.load(tmp_path / "repo")
    with torch.no_grad():
        assert torch.equal(restored.score(batch).logits, with_three)

    # removing the last edit gives exactly the state of the first two
    two = LiveEdit(backbone, modules)
    two.edit(records[:2])
    restored.remove(records[2].edit_id)
    assert restored.repository.ids == two.repository.ids
    with torch.no_grad():
        assert torch.allclose(restored.score(batch).logits, two.score(batch).logits, atol=1e-6)
    with pytest.raises(KeyError, match="vqa-999"):
        restored.remove("vqa-999")

    other = LiveEdit(backbone, make_modules(backbone, r=2))
    with pytest.raises(ValueError, match="config"):
        other.load(tmp_path / "repo")


def test_config_must_fit_the_backbone(backbone) -> None:
    cfg = LiveEditConfig(d=backbone.hidden_size + 1, n_vision=backbone.num_vision_tokens, d_m=32)
    with pytest.raises(ValueError, match="hidden size"):
        LiveEdit(backbone, LiveEditModules(cfg))


def test_user_api_edits_and_generates(backbone, records) -> None:
    editor = LiveEdit(backbone, make_modules(backbone))
    vllm = EditableVLLM(editor)
    sample = edit_samples(records[:1])[0]
    edit_id = vllm.edit(sample.image, sample.prompt, "green")
    assert edit_id == "user-1" and len(editor.repository) == 1
    answer = vllm.generate(sample.image, sample.prompt, max_new_tokens=3)
    assert isinstance(answer, str)
    vllm.undo(edit_id)
    assert len(editor.repository) == 0
    with pytest.raises(ValueError, match="non-empty target"):
        vllm.edit(sample.image, sample.prompt, " ")


def test_training_step_gradients_reach_only_the_editor(backbone, records) -> None:
    modules = make_modules(backbone)
    modules.train()
    tb = build_training_batch(backbone, records[:4])
    losses = training_step(backbone, modules, tb, torch.Generator().manual_seed(0))
    losses.total.backward()
    assert all(p.grad is None for p in backbone.model.parameters())
    missing = [n for n, p in modules.named_parameters() if p.grad is None]
    assert missing == []
    values = losses.as_floats()
    assert set(values) == {"rel", "gen", "loc", "hr", "sr1", "sr2", "total"}
    assert values["loc"] >= 0.0


def test_training_reduces_every_loss_component(backbone, records) -> None:
    modules = make_modules(backbone)
    modules.train()
    optimizer = torch.optim.AdamW(modules.parameters(), lr=3e-3)
    fixed = records[:8]
    tb = build_training_batch(backbone, fixed)
    history = []
    for step in range(120):
        losses = training_step(backbone, modules, tb, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        history.append(losses.as_floats())
    first = {k: sum(h[k] for h in history[:10]) / 10 for k in history[0]}
    last = {k: sum(h[k] for h in history[-10:]) / 10 for k in history[0]}
    for key in ("rel", "gen", "hr", "sr1", "sr2", "total"):
        assert last[key] < 0.7 * first[key], (key, first[key], last[key])
    # ℓ_loc starts at 0 (no residual yet) and must stay small while rel/gen fall
    assert last["loc"] < 0.5
