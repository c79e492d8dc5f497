"""The typed configuration of the LiveEdit editor (paper §4, §7.4; DESIGN §2.4).

``d`` and ``n_vision`` come from the backbone (its hidden size and N_v); everything else is the
editor's own. The defaults are *tiny* (for the d = 128 test backbones); :meth:`LiveEditConfig.paper`
gives the paper's setting (§7.4: d_m = 1024, r = 4, k = 4, l_e = 21, 8 heads as in the official
code, lr = 1e-4).

Expert scale. The official code multiplies every generated expert's residual by a constant built
from its ``lora_scale`` (5): ``scale = 1 / (expert_scale · sqrt(r))``. The constant lives here
(``expert_scale``); :attr:`LiveEditConfig.scale` is the resulting factor, applied in Eq. 6.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

#: Fields that fix the shapes or the meaning of stored experts and routing features. The
#: repository's config hash covers exactly these (changing a loss weight or the learning rate does
#: not invalidate a saved repository; changing d_m, r, k, l_e, heads, the scale or hr_star does).
ARCHITECTURE_FIELDS = (
    "d",
    "n_vision",
    "d_m",
    "r",
    "k",
    "layer",
    "heads",
    "expert_scale",
    "hr_star",
    "segment_embedding",
)
LOSS_WEIGHTS = ("weight_rel", "weight_gen", "weight_loc", "weight_hr", "weight_sr1", "weight_sr2")


@dataclass
class LiveEditConfig:
    """Hyper-parameters of LiveEdit.

    Shapes: the expert generator f_eg produces experts (U_e, V_e) ∈ R^{r×d} × R^{r×d}; the feature
    extractors produce φ, ψ features of k × d_m, flattened to k·d_m. Cross-attention runs with
    ``heads`` heads over d_m (``d_m % heads == 0``).
    """

    # --- from the backbone
    d: int = field(default=128, metadata={"min": 1})
    """LLM hidden size d (the backbone's ``hidden_size``)."""
    n_vision: int = field(default=32, metadata={"min": 1})
    """N_v, the number of vision tokens (size of the vision sentinel Θ ∈ R^{N_v×d})."""
    layer: int = field(default=2, metadata={"min": 0})
    """l_e, the decoder layer whose output LiveEdit reads and edits (chosen by the user)."""

    # --- module sizes (tiny defaults; paper: 1024 / 4 / 4 / 8)
    d_m: int = field(default=128, metadata={"min": 1})
    """Module dimension d_m of the cross-attentions and the φ/ψ features."""
    r: int = field(default=4, metadata={"min": 1})
    """Rank r of each editing expert."""
    k: int = field(default=4, metadata={"min": 1})
    """Feature-extraction control k: φ, ψ ∈ R^{k×d_m}."""
    heads: int = field(default=4, metadata={"min": 1})
    """Attention heads of every cross-attention (official code: 8)."""
    expert_scale: float = field(default=5.0, metadata={"min": 0.0})
    """The official ``lora_scale``; residual factor ``1 / (expert_scale · sqrt(r))``."""

    # --- loss weights (Eqs. 8, 12; all 1 in the paper)
    weight_rel: float = field(default=1.0, metadata={"min": 0.0})
    weight_gen: float = field(default=1.0, metadata={"min": 0.0})
    weight_loc: float = field(default=1.0, metadata={"min": 0.0})
    weight_hr: float = field(default=1.0, metadata={"min": 0.0})
    weight_sr1: float = field(default=1.0, metadata={"min": 0.0})
    weight_sr2: float = field(default=1.0, metadata={"min": 0.0})
    token_reduction: Literal["sum", "mean"] = "sum"
    """How ℓ_rel / ℓ_gen / ℓ_loc reduce over the target tokens of one example: ``sum`` is the
    sequence log-likelihood of Eqs. 9–11 as written; ``mean`` averages per token."""

    # --- ablations (Table 2)
    no_sr1: bool = False
    """Drop ℓ_sr1 (Eq. 15)."""
    no_sr2: bool = False
    """Drop ℓ_sr2 (Eq. 16)."""
    no_soft_routing: bool = False
    """'- SR': plain average of the hard-routed experts instead of Eq. 7 (also drops ℓ_sr1/2)."""
    hr_star: bool = False
    """'HR*': φ compresses the whole visual representation (no prompt-guided CA_φ1)."""

    segment_embedding: bool = False
    """Not in the paper: f_eg's cross-attention keys also see which of h_v, h_p, h_o each token
    comes from, ``LN(h) + E[segment]`` with a learned ``E ∈ R^{3×d}`` (see
    :class:`~.generator.ExpertGenerator`). Off = Eq. 1 as written."""
    # --- optimisation
    lr: float = field(default=1e-4, metadata={"min": 0.0})

    def __post_init__(self) -> None:
        problems = self.validate()
        if problems:
            raise ValueError("; ".join(problems))

    def validate(self) -> list[str]:
        """Every problem of this configuration as ``field: message`` (empty when valid)."""
        problems = []
        for name in ("d", "n_vision", "d_m", "r", "k", "heads"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: {getattr(self, name)} must be >= 1")
        if self.layer < 0:
            problems.append(f"layer: {self.layer} must be >= 0")
        if self.heads >= 1 and self.d_m % self.heads:
            problems.append(f"heads: d_m = {self.d_m} is not divisible by heads = {self.heads}")
        if self.expert_scale <= 0:
            problems.append(f"expert_scale: {self.expert_scale} must be > 0")
        for name in LOSS_WEIGHTS:
            if getattr(self, name) < 0:
                problems.append(f"{name}: {getattr(self, name)} must be >= 0")
        if self.lr <= 0:
            problems.append(f"lr: {self.lr} must be > 0")
        return problems

    @classmethod
    def paper(cls, d: int, n_vision: int, **overrides: object) -> LiveEditConfig:
        """The paper's setting (§7.4) for a backbone of hidden size ``d`` with ``n_vision`` vision
        tokens: d_m = 1024, r = 4, k = 4, l_e = 21, 8 heads (official code), lr = 1e-4."""
        values: dict[str, object] = dict(
            d=d, n_vision=n_vision, d_m=1024, r=4, k=4, layer=21, heads=8, lr=1e-4
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def head_dim(self) -> int:
        return self.d_m // self.heads

    @property
    def feature_dim(self) -> int:
        """k·d_m, the length of a flattened φ or ψ feature."""
        return self.k * self.d_m

    @property
    def scale(self) -> float:
        """The residual factor of Eq. 6: ``1 / (expert_scale · sqrt(r))`` (official: 1/(5·2))."""
        return 1.0 / (self.expert_scale * math.sqrt(self.r))

    @property
    def sim_scale(self) -> float:
        """The factor of every similarity (Eqs. 5, 7, 13–16): ``1 / sqrt(d_m)``."""
        return 1.0 / math.sqrt(self.d_m)

    def architecture_hash(self, length: int = 16) -> str:
        """Hash of :data:`ARCHITECTURE_FIELDS`; an expert repository is valid only for it."""
        values = {name: asdict(self)[name] for name in ARCHITECTURE_FIELDS}
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:length]
