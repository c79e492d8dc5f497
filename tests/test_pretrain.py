"""Twin pretraining, end to end on the tiny world with a handful of steps (a smoke run, not a
quality run), the cache, and ``liveedit backbone info``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from liveedit.backbones import load_backbone
from liveedit.backbones.pretrain import (
    GroupSampler,
    PretrainConfig,
    cache_key,
    ensure_twin,
    evaluate_corpus,
)
from liveedit.cli import main
from liveedit.config import load_config


def smoke_config(world: Path, out: Path, *extra: str) -> PretrainConfig:
    return load_config(
        PretrainConfig,
        None,
        [
            f"world={world}",
            f"out={out}",
            "arch=llava-1.5",
            "twin.hidden_size=32",
            "twin.num_layers=2",
            "vision.steps=3",
            "vision.batch_size=8",
            "language.steps=4",
            "language.batch_size=8",
            "eval_every=2",
            "eval_examples=40",
            "tracking.enabled=false",
            *extra,
        ],
    )


def test_group_sampler_follows_weights_and_cycles() -> None:
    tasks = ["text_fact"] * 3 + ["vqa_colour"] * 50
    sampler = GroupSampler(tasks, {"text_fact": 0.5, "vqa": 0.5}, seed=0)
    draws = sampler.draw(600)
    facts = [i for i in draws if i < 3]
    assert 240 < len(facts) < 360  # ~50% although text facts are 6% of the corpus
    assert sorted(facts[:3]) == [0, 1, 2]  # one shuffled pass before any repeat
    with pytest.raises(ValueError, match=r"no corpus task in group\(s\) \['knowledge'\]"):
        GroupSampler(tasks, {"knowledge": 1.0}, seed=0)


def test_pretrain_saves_a_loadable_twin_and_reuses_the_cache(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("LIVEEDIT_CACHE", str(tmp_path / "cache"))
    config = smoke_config(tiny_world, tmp_path / "twin")
    first = ensure_twin(config)
    assert not first.cached and first.out == tmp_path / "twin"
    assert first.steps >= 5  # 3 vision steps + at least 2 language steps
    info = json.loads((tmp_path / "twin" / "liveedit_backbone.json").read_text())
    pre = info["metadata"]["pretraining"]
    assert pre["cache_key"] == cache_key(config)
    assert set(pre["accuracy"]) >= {"vqa", "caption", "knowledge", "text_fact"}
    curve = json.loads((tmp_path / "twin" / "pretrain_curve.json").read_text())
    assert any("vision_loss" in row for row in curve) and any("loss" in row for row in curve)

    backbone = load_backbone(tmp_path / "twin")
    assert backbone.hidden_size == 32 and backbone.num_layers == 2
    # the recorded accuracy is what the saved model scores on the held-out corpus
    from liveedit.backbones.pretrain import _ImageCache, _read_corpus, _stratified

    heldout = _stratified(_read_corpus(tiny_world / "corpus" / "heldout.jsonl"), 40, 0)
    again = evaluate_corpus(backbone, heldout, _ImageCache(tiny_world / "images"))
    assert again["vqa"] == pytest.approx(pre["accuracy"]["vqa"], abs=1e-4)

    second = ensure_twin(smoke_config(tiny_world, tmp_path / "copy"))
    assert second.cached and (tmp_path / "copy" / "model.safetensors").is_file()
    changed = ensure_twin(smoke_config(tiny_world, tmp_path / "other", "seed=1"))
    assert not changed.cached

    assert main(["backbone", "info", str(tmp_path / "twin")]) == 0
    out = capsys.readouterr().out
    assert "llava-1.5" in out and "num_vision_tokens" in out and "pretraining" in out
