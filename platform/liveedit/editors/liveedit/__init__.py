"""LiveEdit (Chen et al., lifelong editing of VLLMs): the editor's modules, one concept per module.

- :mod:`.config` — :class:`LiveEditConfig`
- :mod:`.attention` — cross-attention CA (Eq. 2)
- :mod:`.spans` — per-example vision / prompt / target spans
- :mod:`.generator` — expert generator f_eg (Eq. 1)
- :mod:`.features` — feature extractors f̂fe, f̄fe and the vision sentinel Θ (Eqs. 3–5)
- :mod:`.routing` — hard / soft routing and the edited representation (Eqs. 5–7)
- :mod:`.repository` — the expert repository E_t
- :mod:`.losses` — edit and routing losses (Eqs. 8–16)
- :mod:`.modules` — :class:`LiveEditModules` tying them together
"""

from .attention import CrossAttention
from .config import LiveEditConfig
from .features import FeatureExtractor, Features, InputFeatureExtractor, InputFeatures
from .generator import ExpertGenerator, Experts
from .losses import (
    LossBreakdown,
    hard_routing_loss,
    info_nce,
    liveedit_loss,
    locality_kl,
    split_generality_domain,
    sr1_loss,
    sr2_loss,
    target_nll,
)
from .modules import LiveEditModules
from .repository import ExpertRepository, RepositoryMismatch
from .routing import RepositoryViews, apply_experts, hard_route, route, soft_route
from .spans import Spans, gather_spans

__all__ = [
    "CrossAttention",
    "ExpertGenerator",
    "ExpertRepository",
    "Experts",
    "FeatureExtractor",
    "Features",
    "InputFeatureExtractor",
    "InputFeatures",
    "LiveEditConfig",
    "LiveEditModules",
    "LossBreakdown",
    "RepositoryMismatch",
    "RepositoryViews",
    "Spans",
    "apply_experts",
    "gather_spans",
    "hard_route",
    "hard_routing_loss",
    "info_nce",
    "liveedit_loss",
    "locality_kl",
    "route",
    "soft_route",
    "split_generality_domain",
    "sr1_loss",
    "sr2_loss",
    "target_nll",
]
