"""The lifelong editing protocol (paper §3, §5.2; DESIGN §2.5).

For a number of edits T and a seed:

1. Order the test records: seed 0 keeps the file order (so that results are comparable with runs
   that never shuffle, such as the official code); every other seed ``s`` shuffles the records
   with ``random.Random(s)``.
2. Split them into consecutive chunks of T records. The trailing partial chunk (fewer than T
   records) is evaluated and reported (``LifelongResult.tail``), never dropped.
3. For each chunk: ``editor.reset()``; record the *pre-edit* locality reference on the ``loc``
   (T-Loc) and ``m_loc`` (M-Loc) views of the chunk's records, once per chunk, batched; apply the
   chunk's edits in order — one ``editor.edit([record])`` call per edit by default (a lifelong
   stream), or ``edit_batch`` records per call; then score all five views of every record of the
   chunk through the edited model, in batches of ``score_batch_size``.
4. Per record: Rel / T-Gen / M-Gen = token accuracy of the target tokens on the ``edit`` /
   ``rephrase`` / ``image_rephrase`` views; T-Loc / M-Loc under a named locality definition
   (:data:`~liveedit.evaluation.metrics.LOCALITY_DEFINITIONS`):

   - ``liveedit``: post-edit argmax vs pre-edit argmax on the locality answer tokens;
   - ``easyedit-top1`` / ``easyedit-top10``: top-k agreement over all non-padding positions of
     the locality input. The logits over all positions are read at the output of the backbone's
     LM head (a forward hook) while the editor scores the batch, so every editor that runs the
     backbone is measured the same way. Only the pre-edit top-k ids are kept between the two
     passes (not the full logits).

The pre-edit reference is measured through ``editor.score`` right after ``editor.reset()``, i.e.
on f_θ0 as the editor sees it (the protocol's contract: a reset editor is the unedited model).

Across seeds, :func:`aggregate_seeds` reports the mean and the sample standard deviation
(``ddof=1``; 0 for a single seed) of the per-seed averages. :func:`paired_ttest` compares two
editors on paired per-record values (``scipy.stats.ttest_rel``).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .metrics import LOCALITY_DEFINITIONS, METRICS, VIEW_OF_METRIC, five_metric_average

if TYPE_CHECKING:
    import torch

    from liveedit.backbones.base import LMBatch
    from liveedit.data.records import EditRecord
    from liveedit.editors.base import Editor

DEFAULT_EDITS: tuple[int, ...] = (1, 10, 100, 1000)
AVERAGE = "average"
SUMMARY_KEYS: tuple[str, ...] = (*METRICS, AVERAGE)
"""The five metrics in table order, then their plain average."""

_LOC_METRICS = ("t_loc", "m_loc")
_TOPK = {"easyedit-top1": 1, "easyedit-top10": 10}


# ----------------------------------------------------------------------------- results


@dataclass
class RecordResult:
    """The five metric values (fractions in [0, 1]) of one record, measured after the edits of
    its chunk, with where they come from."""

    edit_id: str
    chunk: int
    edits: int
    seed: int
    rel: float
    t_gen: float
    m_gen: float
    t_loc: float
    m_loc: float

    @property
    def average(self) -> float:
        return five_metric_average(self.values())

    def values(self) -> dict[str, float]:
        return {m: getattr(self, m) for m in METRICS}

    def value(self, metric: str) -> float:
        return self.average if metric == AVERAGE else float(getattr(self, metric))


@dataclass
class LifelongResult:
    """Per-record results of one (editor, T, seed) run over a record list."""

    edits: int
    seed: int
    records: list[RecordResult]
    n_chunks: int
    tail: int
    """Size of the trailing partial chunk (0 when T divides the record count)."""
    n_edits: int
    """Edits actually applied (the record count: every record is edited once)."""
    locality: str = "liveedit"
    seconds: float = 0.0

    def means(self) -> dict[str, float]:
        """Average over records of each metric, and the five-metric average."""
        if not self.records:
            raise ValueError("no records were evaluated")
        out = {
            m: math.fsum(getattr(r, m) for r in self.records) / len(self.records) for m in METRICS
        }
        out[AVERAGE] = five_metric_average(out)
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["records"] = [asdict(r) for r in self.records]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LifelongResult:
        data = dict(data)
        data["records"] = [RecordResult(**r) for r in data["records"]]
        return cls(**data)


# ----------------------------------------------------------------------------- ordering


def order_records(records: Sequence[EditRecord], seed: int) -> list[EditRecord]:
    """Seed 0: the file order; any other seed: a ``random.Random(seed)`` shuffle."""
    ordered = list(records)
    if seed != 0:
        random.Random(seed).shuffle(ordered)
    return ordered


def chunk_records(records: Sequence[Any], edits: int) -> list[list[Any]]:
    """Consecutive chunks of ``edits`` items; the last one may be shorter (it is kept)."""
    if edits < 1:
        raise ValueError(f"edits must be >= 1, got {edits}")
    return [list(records[i : i + edits]) for i in range(0, len(records), edits)]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ----------------------------------------------------------------------------- scoring


def _view_batches(
    editor: Editor, records: Sequence[EditRecord], views: Sequence[str]
) -> dict[str, LMBatch]:
    """LM batches of ``views`` for ``records`` (images decoded once per record and view)."""
    from liveedit.data.dataset import EditViewDataset

    dataset = EditViewDataset(list(records), views=views)
    items = [dataset[i] for i in range(len(dataset))]
    out = {}
    for view in views:
        samples = [item[view] for item in items]
        out[view] = editor.backbone.build_inputs(
            [s.image for s in samples], [s.prompt for s in samples], [s.target for s in samples]
        )
    return out


def _score(editor: Editor, batch: LMBatch, full_logits: bool) -> tuple[Any, torch.Tensor | None]:
    """``editor.score(batch)`` and, with ``full_logits``, the ``[B, L, V]`` logits over every
    position read at the backbone's LM head during that call."""
    import torch

    if not full_logits:
        with torch.no_grad():
            return editor.score(batch), None
    head = editor.backbone.model.get_output_embeddings()
    shape = tuple(batch.input_ids.shape)
    captured: list[torch.Tensor] = []

    def keep(module: Any, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and tuple(output.shape[:2]) == shape:
            captured.append(output.detach())

    handle = head.register_forward_hook(keep)
    try:
        with torch.no_grad():
            scores = editor.score(batch)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(
            f"editor {editor.name!r} did not run the backbone's LM head on the whole batch; the "
            "EasyEdit locality definitions need the logits over all positions"
        )
    return scores, captured[-1]


@dataclass
class _LocalityReference:
    """Pre-edit reference of one locality batch: argmax on the answer tokens (``liveedit``) or
    the top-k ids over all positions (EasyEdit definitions)."""

    argmax: torch.Tensor | None = None
    topk: torch.Tensor | None = None


def _reference(editor: Editor, batch: LMBatch, definition: str) -> _LocalityReference:
    if definition == "liveedit":
        scores, _ = _score(editor, batch, full_logits=False)
        return _LocalityReference(argmax=scores.argmax.detach().cpu())
    _, logits = _score(editor, batch, full_logits=True)
    assert logits is not None
    return _LocalityReference(topk=logits.topk(_TOPK[definition], dim=-1).indices.cpu())


def _locality_values(
    editor: Editor, batch: LMBatch, reference: _LocalityReference, definition: str
) -> list[float]:
    import torch

    from .metrics import locality

    if definition == "liveedit":
        scores, _ = _score(editor, batch, full_logits=False)
        values = locality(
            "liveedit",
            post_argmax=scores.argmax.detach().cpu(),
            pre_argmax=reference.argmax,
            answer_mask=scores.mask.cpu(),
        )
        return values.tolist()
    _, logits = _score(editor, batch, full_logits=True)
    assert logits is not None and reference.topk is not None
    post = logits.float()
    top = reference.topk.to(post.device)
    k = top.shape[-1]
    # A stand-in for the pre-edit logits whose top-k are exactly the stored ids (ranks k..1);
    # it lives only for this batch, on the device of the post-edit logits.
    ranks = torch.arange(k, 0, -1, dtype=post.dtype, device=post.device).expand(top.shape)
    pre = torch.zeros_like(post).scatter_(-1, top, ranks)
    mask = batch.attention_mask.to(post.device).bool()
    values = locality(definition, post_logits=post, pre_logits=pre, position_mask=mask)
    return values.cpu().tolist()


def evaluate_chunk(
    editor: Editor,
    chunk: Sequence[EditRecord],
    *,
    locality: str = "liveedit",
    score_batch_size: int = 32,
    edit_batch: int = 1,
) -> list[dict[str, float]]:
    """Reset, record the pre-edit locality reference, apply the chunk's edits in order, score
    the five views of every record. Returns one ``{metric: value}`` per record, in order."""
    import torch

    from .metrics import token_accuracy

    if locality not in LOCALITY_DEFINITIONS:
        allowed = ", ".join(LOCALITY_DEFINITIONS)
        raise ValueError(f"locality definition {locality!r} is unknown; allowed values: {allowed}")
    editor.reset()
    loc_views = [VIEW_OF_METRIC[m] for m in _LOC_METRICS]
    references: list[dict[str, _LocalityReference]] = []
    for part in _batches(chunk, score_batch_size):
        batches = _view_batches(editor, part, loc_views)
        references.append({v: _reference(editor, batches[v], locality) for v in loc_views})

    for part in _batches(chunk, edit_batch):
        editor.edit(list(part))

    rows: list[dict[str, float]] = []
    views = [VIEW_OF_METRIC[m] for m in METRICS]
    for part, reference in zip(_batches(chunk, score_batch_size), references, strict=True):
        batches = _view_batches(editor, part, views)
        columns: dict[str, list[float]] = {}
        for metric in METRICS:
            view = VIEW_OF_METRIC[metric]
            if metric in _LOC_METRICS:
                columns[metric] = _locality_values(editor, batches[view], reference[view], locality)
            else:
                with torch.no_grad():
                    scores = editor.score(batches[view])
                acc = token_accuracy(
                    scores.argmax.cpu(), scores.target_ids.cpu(), scores.mask.cpu()
                )
                columns[metric] = acc.tolist()
        rows.extend({m: float(columns[m][i]) for m in METRICS} for i in range(len(part)))
    return rows


def run_lifelong(
    editor: Editor,
    records: Sequence[EditRecord],
    edits: int,
    seed: int = 0,
    *,
    locality: str = "liveedit",
    score_batch_size: int = 32,
    edit_batch: int = 1,
    show_progress: bool = True,
    desc: str = "",
) -> LifelongResult:
    """The protocol of the module docstring for one (editor, T = ``edits``, seed). The editor
    is reset at the end as well (the backbone is left clean)."""
    from liveedit.progress import progress

    if score_batch_size < 1 or edit_batch < 1:
        raise ValueError("score_batch_size and edit_batch must be >= 1")
    if not records:
        raise ValueError("run_lifelong: no records")
    start = time.perf_counter()
    chunks = chunk_records(order_records(records, seed), edits)
    results: list[RecordResult] = []
    loop = enumerate(chunks)
    if show_progress:
        loop = progress(loop, desc or f"{editor.name} T={edits} seed={seed}", len(chunks), "chunk")
    try:
        for index, chunk in loop:
            rows = evaluate_chunk(
                editor,
                chunk,
                locality=locality,
                score_batch_size=score_batch_size,
                edit_batch=edit_batch,
            )
            for record, row in zip(chunk, rows, strict=True):
                results.append(RecordResult(record.edit_id, index, edits, seed, **row))
    finally:
        editor.reset()
    tail = len(records) % edits
    return LifelongResult(
        edits=edits,
        seed=seed,
        records=results,
        n_chunks=len(chunks),
        tail=tail,
        n_edits=len(results),
        locality=locality,
        seconds=time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------- statistics


def aggregate_seeds(
    per_seed: Sequence[dict[str, float]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) of per-seed values."""
    if not per_seed:
        raise ValueError("aggregate_seeds: no seeds")
    keys = list(per_seed[0])
    mean = {k: math.fsum(s[k] for s in per_seed) / len(per_seed) for k in keys}
    std = {}
    for k in keys:
        if len(per_seed) < 2:
            std[k] = 0.0
        else:
            var = math.fsum((s[k] - mean[k]) ** 2 for s in per_seed) / (len(per_seed) - 1)
            std[k] = math.sqrt(var)
    return mean, std


@dataclass
class PairedTest:
    """A paired t-test of ``a`` against ``b`` (``statistic > 0``: a is higher)."""

    statistic: float
    pvalue: float
    n: int
    mean_diff: float
    note: str = field(default="")

    def significant(self, alpha: float = 0.05) -> bool:
        return not math.isnan(self.pvalue) and self.pvalue < alpha


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """``scipy.stats.ttest_rel(a, b)`` with the degenerate cases answered explicitly:
    identical values -> statistic 0, p 1; a constant non-zero difference -> statistic ±inf,
    p 0; fewer than two pairs -> NaN."""
    if len(a) != len(b):
        raise ValueError(f"paired_ttest: {len(a)} values against {len(b)}")
    n = len(a)
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    mean_diff = math.fsum(diffs) / n if n else math.nan
    if n < 2:
        return PairedTest(math.nan, math.nan, n, mean_diff, "fewer than two pairs")
    if all(d == diffs[0] for d in diffs):
        if diffs[0] == 0:
            return PairedTest(0.0, 1.0, n, 0.0, "identical values")
        return PairedTest(
            math.copysign(math.inf, diffs[0]), 0.0, n, mean_diff, "constant difference"
        )
    from scipy.stats import ttest_rel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ttest_rel(list(map(float, a)), list(map(float, b)))
    return PairedTest(float(result.statistic), float(result.pvalue), n, mean_diff)


def paired_values(
    a: Sequence[RecordResult], b: Sequence[RecordResult], metric: str = AVERAGE
) -> tuple[list[float], list[float]]:
    """Values of ``metric`` for the records both result lists hold, paired by
    (T, seed, edit_id), in a stable order."""
    left = {(r.edits, r.seed, r.edit_id): r.value(metric) for r in a}
    right = {(r.edits, r.seed, r.edit_id): r.value(metric) for r in b}
    keys = sorted(set(left) & set(right))
    return [left[k] for k in keys], [right[k] for k in keys]


def compare_editors(
    a: Sequence[RecordResult], b: Sequence[RecordResult], metric: str = AVERAGE
) -> PairedTest:
    """Paired t-test of two editors' per-record values of ``metric`` (see :func:`paired_values`)."""
    x, y = paired_values(a, b, metric)
    return paired_ttest(x, y)
