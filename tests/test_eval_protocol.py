"""The lifelong protocol on a real tiny backbone: chunking and the trailing chunk, edit counts,
pre-edit locality, an oracle editor, the unedited model, both locality definitions, statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image

from liveedit.backbones import load_backbone
from liveedit.data.loaders import load_records
from liveedit.data.records import record_views
from liveedit.editors.base import Editor, EditSample
from liveedit.editors.finetune import FTL, FTConfig, NoEdit
from liveedit.evaluation.lifelong import (
    LifelongResult,
    RecordResult,
    aggregate_seeds,
    chunk_records,
    compare_editors,
    evaluate_chunk,
    order_records,
    paired_ttest,
    run_lifelong,
)
from liveedit.evaluation.metrics import token_accuracy, topk_agreement


@pytest.fixture(scope="module")
def backbone(tiny_llava_dir: Path):
    torch.set_num_threads(1)
    return load_backbone(tiny_llava_dir)


@pytest.fixture(scope="module")
def records(tiny_world: Path):
    return load_records("evqa", tiny_world / "vqa" / "test.json", tiny_world / "images").records


def view_batch(backbone, recs, view: str):
    images, prompts, targets = [], [], []
    for r in recs:
        v = record_views(r)[view]
        images.append(None if v.image is None else Image.open(r.image_path(v.image)).convert("RGB"))
        prompts.append(v.prompt)
        targets.append(v.target)
    return backbone.build_inputs(images, prompts, targets)


class CountingNoEdit(NoEdit):
    """The unedited model, recording every call the protocol makes."""

    def __init__(self, backbone):
        super().__init__(backbone)
        self.calls: list[list[str]] = []
        self.edits_per_reset: list[int] = []
        self.edits_seen_by_score: list[int] = []

    def apply(self, samples: Sequence[EditSample]) -> list[str]:
        self.calls.append([s.edit_id for s in samples])
        return super().apply(samples)

    def reset(self) -> None:
        self.edits_per_reset.append(len(self.edit_ids))
        super().reset()

    def score(self, batch):
        self.edits_seen_by_score.append(len(self.edit_ids))
        return super().score(batch)


class Oracle(Editor):
    """An editor that answers the edited (prompt, target) pairs exactly and leaves every other
    input to the backbone: Rel must be 100 and locality untouched."""

    name = "oracle"

    def __init__(self, backbone):
        super().__init__(backbone)
        self.known: set[tuple[str, str]] = set()

    def apply(self, samples: Sequence[EditSample]) -> list[str]:
        self.known |= {(s.prompt, s.target) for s in samples}
        return [s.edit_id for s in samples]

    def reset(self) -> None:
        self.known = set()

    def score(self, batch):
        scores = self.backbone.score(batch)
        for i, pair in enumerate(zip(batch.prompts, batch.targets, strict=True)):
            if pair in self.known:
                m = scores.mask[i]
                scores.argmax[i, m] = scores.target_ids[i, m]
        return scores


def test_chunking_keeps_the_tail_and_seed_zero_keeps_file_order(records) -> None:
    assert [len(c) for c in chunk_records(list(range(7)), 3)] == [3, 3, 1]
    assert [len(c) for c in chunk_records(list(range(6)), 3)] == [3, 3]
    assert [len(c) for c in chunk_records(list(range(2)), 1000)] == [2]
    with pytest.raises(ValueError):
        chunk_records([1], 0)
    assert order_records(records, 0) == list(records)
    shuffled = order_records(records, 1)
    assert shuffled != list(records) and sorted(r.edit_id for r in shuffled) == sorted(
        r.edit_id for r in records
    )
    assert order_records(records, 1) == shuffled  # deterministic per seed


def test_protocol_applies_exactly_t_edits_per_chunk_and_evaluates_the_tail(
    backbone, records
) -> None:
    editor = CountingNoEdit(backbone)
    seven = records[:7]
    result = run_lifelong(editor, seven, 3, seed=0, score_batch_size=4, show_progress=False)
    assert (result.n_chunks, result.tail, result.n_edits) == (3, 1, 7)
    assert [r.chunk for r in result.records] == [0, 0, 0, 1, 1, 1, 2]
    assert [r.edit_id for r in result.records] == [r.edit_id for r in seven]
    assert {(r.edits, r.seed) for r in result.records} == {(3, 0)}
    # One edit call per record, in order; each chunk starts from a reset.
    assert editor.calls == [[r.edit_id] for r in seven]
    assert editor.edits_per_reset == [0, 3, 3, 1]  # resets before chunks 0..2 and at the end
    # Scoring: per chunk, 2 pre-edit locality views with no edit applied, then 5 views after all
    # of the chunk's edits (batches of 4: one batch per chunk here).
    assert editor.edits_seen_by_score == [0, 0, 3, 3, 3, 3, 3] * 2 + [0, 0, 1, 1, 1, 1, 1]


def test_edit_batch_passes_several_records_per_call(backbone, records) -> None:
    editor = CountingNoEdit(backbone)
    run_lifelong(editor, records[:7], 3, seed=0, edit_batch=2, show_progress=False)
    assert [len(c) for c in editor.calls] == [2, 1, 2, 1, 1]


def test_oracle_editor_gets_full_reliability_and_locality(backbone, records) -> None:
    result = run_lifelong(Oracle(backbone), records[:6], 3, seed=1, show_progress=False)
    means = result.means()
    assert means["rel"] == 1.0
    assert means["m_gen"] == 1.0  # same prompt and target, another image
    assert means["t_loc"] == 1.0 and means["m_loc"] == 1.0


def test_unedited_model_reliability_and_locality(backbone, records) -> None:
    recs = records[:6]
    result = run_lifelong(NoEdit(backbone), recs, 2, seed=0, show_progress=False)
    with torch.no_grad():
        direct = backbone.score(view_batch(backbone, recs, "edit"))
    expected = token_accuracy(direct.argmax, direct.target_ids, direct.mask).tolist()
    got = {r.edit_id: r.rel for r in result.records}
    assert [got[r.edit_id] for r in recs] == pytest.approx(expected)
    assert all(r.t_loc == 1.0 and r.m_loc == 1.0 for r in result.records)
    for definition in ("easyedit-top1", "easyedit-top10"):
        rows = evaluate_chunk(NoEdit(backbone), recs[:3], locality=definition)
        assert all(row["t_loc"] == 1.0 and row["m_loc"] == 1.0 for row in rows)


@pytest.mark.parametrize("definition", ["liveedit", "easyedit-top10"])
def test_locality_against_direct_pre_and_post_computation(backbone, records, definition) -> None:
    chunk = records[:3]
    editor = FTL(backbone, FTConfig(steps=5))
    batch = view_batch(backbone, chunk, "m_loc")
    with torch.no_grad():
        pre = backbone.forward(batch)
    try:
        rows = evaluate_chunk(editor, chunk, locality=definition, score_batch_size=2)
        with torch.no_grad():
            post = backbone.forward(batch)  # the chunk's edits are still applied
    finally:
        editor.reset()
    if definition == "liveedit":
        pre_s, post_s = backbone.score(batch, pre), backbone.score(batch, post)
        expected = token_accuracy(post_s.argmax, pre_s.argmax, post_s.mask)
    else:
        expected = topk_agreement(post, pre, batch.attention_mask, k=10)
    assert [row["m_loc"] for row in rows] == pytest.approx(expected.tolist(), abs=1e-6)
    assert min(row["m_loc"] for row in rows) < 1.0  # FT-L did move the model


def test_unknown_locality_definition_is_refused(backbone, records) -> None:
    with pytest.raises(ValueError, match="allowed values"):
        evaluate_chunk(NoEdit(backbone), records[:1], locality="exact")


def test_paired_ttest_matches_scipy_on_hand_values() -> None:
    from scipy.stats import ttest_rel

    a = [0.9, 0.8, 1.0, 0.7, 0.95, 0.85]
    b = [0.6, 0.82, 0.7, 0.65, 0.5, 0.8]
    ref = ttest_rel(a, b)
    test = paired_ttest(a, b)
    assert test.statistic == pytest.approx(float(ref.statistic))
    assert test.pvalue == pytest.approx(float(ref.pvalue))
    assert test.n == 6 and test.mean_diff == pytest.approx(sum(a) / 6 - sum(b) / 6)
    assert test.significant(alpha=0.1) and not test.significant()  # p = 0.057
    same = paired_ttest([1.0, 0.5, 0.0], [1.0, 0.5, 0.0])
    assert (same.statistic, same.pvalue) == (0.0, 1.0)
    shifted = paired_ttest([1.0, 0.5], [0.5, 0.0])
    assert shifted.statistic == math.inf and shifted.pvalue == 0.0
    assert math.isnan(paired_ttest([1.0], [0.0]).pvalue)
    with pytest.raises(ValueError):
        paired_ttest([1.0], [1.0, 2.0])


def test_compare_editors_pairs_records_by_seed_and_id() -> None:
    def rec(edit_id: str, seed: int, value: float) -> RecordResult:
        return RecordResult(edit_id, 0, 1, seed, value, value, value, 1.0, 1.0)

    a = [rec("x", 0, 1.0), rec("y", 0, 0.5), rec("x", 1, 0.9), rec("z", 0, 0.2)]
    b = [rec("y", 0, 0.25), rec("x", 1, 0.3), rec("x", 0, 0.5)]  # no "z"; other order
    test = compare_editors(a, b, "rel")
    ref = paired_ttest([1.0, 0.5, 0.9], [0.5, 0.25, 0.3])
    assert test.n == 3
    assert test.statistic == pytest.approx(ref.statistic)


def test_aggregate_seeds_and_result_round_trip() -> None:
    mean, std = aggregate_seeds([{"x": 1.0}, {"x": 3.0}])
    assert mean["x"] == 2.0 and std["x"] == pytest.approx(math.sqrt(2.0))
    assert aggregate_seeds([{"x": 0.5}])[1]["x"] == 0.0
    result = LifelongResult(
        2, 0, [RecordResult("a", 0, 2, 0, 1.0, 0.5, 0.0, 1.0, 1.0)], 1, 1, 1, "liveedit", 0.1
    )
    again = LifelongResult.from_dict(result.to_dict())
    assert again == result
    assert again.means()["average"] == pytest.approx(0.7)
