"""Shared fixtures: a tiny world and small random twins, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--size tiny`` world (all three families)."""
    from liveedit.world.build import build_world

    out = tmp_path_factory.mktemp("world") / "tiny"
    build_world(out, size="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_llava_dir(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny LLaVA twin (d 64, 4 layers) over the tiny world's vocabulary, saved
    with ``save_pretrained`` so that loading goes through the real path."""
    from liveedit.backbones import build_twin
    from liveedit.world.build import load_world

    world = load_world(tiny_world, check_images=False)
    twin = build_twin("llava-1.5", world.vocabulary, seed=0, hidden_size=64, num_layers=4)
    # A random init's logits barely vary (std ~0.15), so no residual could steer them; sharpen the
    # output embeddings so that the model is steerable like a trained one.
    with torch.no_grad():
        twin.model.get_output_embeddings().weight.mul_(30.0)
    out = tmp_path_factory.mktemp("twin") / "llava"
    twin.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ray_local():
    """A private local 2-CPU Ray instance per test module. Authentication off, as in every Ray
    test module: Ray keeps the auth mode of the first ``ray.init`` of a process, so all modules
    must agree."""
    ray = pytest.importorskip("ray")
    from liveedit.distributed import import_trainables

    import_trainables()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
