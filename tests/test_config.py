"""Typed configuration: YAML + dotted overrides, complete validation, saving, hashing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from liveedit.config import (
    ConfigError,
    config_hash,
    flatten,
    from_dict,
    load_config,
    save_config,
)
from liveedit.world.config import WorldConfig


@dataclass
class Inner:
    d_m: int = field(default=128, metadata={"min": 1, "max": 4096})
    lr: float = 1e-4
    layers: list[int] = field(default_factory=lambda: [2, 4])


@dataclass
class Outer:
    name: str = "run"
    size: Literal["tiny", "small"] = "tiny"
    out: Path = Path("runs/x")
    flag: bool = False
    note: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ninner:\n  d_m: 64\n  lr: 0.01\n")
    cfg = load_config(
        Outer, path, ["inner.lr=1e-3", "inner.layers=1,3,5", "flag=true", "out=/tmp/o"]
    )
    assert cfg.name == "a"
    assert cfg.inner.d_m == 64
    assert cfg.inner.lr == pytest.approx(1e-3)
    assert cfg.inner.layers == [1, 3, 5]
    assert cfg.flag is True
    assert cfg.out == Path("/tmp/o")
    assert cfg.note is None


def test_every_problem_is_reported_with_key_and_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            Outer,
            None,
            ["size=huge", "inner.d_m=0", "inner.lr=fast", "inner.bogus=1", "flag=maybe"],
        )
    problems = info.value.problems
    assert "size: 'huge' is not allowed; allowed values: 'tiny', 'small'" in problems
    assert "inner.d_m: 0 is out of range; allowed range: [1, 4096]" in problems
    assert "inner.lr: 'fast' is not a number" in problems
    assert "inner.bogus: unknown key; allowed keys: d_m, layers, lr" in problems
    assert "flag: 'maybe' is not a boolean; allowed values: true, false" in problems
    assert len(problems) == 5


def test_integer_field_refuses_fraction_and_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"inner.d_m: '2.5' is not an integer"):
        load_config(Outer, None, ["inner.d_m=2.5"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(Outer, None, ["justakey"])


def test_bad_yaml_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_save_round_trip_and_hash(tmp_path: Path) -> None:
    cfg = load_config(Outer, None, ["inner.d_m=32", "note=hello"])
    path = save_config(cfg, tmp_path / "run")
    assert path.name == "config.yaml"
    again = load_config(Outer, path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(Outer, None, ["inner.d_m=33"])) != config_hash(cfg)
    assert yaml.safe_load(path.read_text())["inner"]["d_m"] == 32


def test_flatten_uses_dotted_keys() -> None:
    flat = flatten(Outer())
    assert flat["inner.d_m"] == 128
    assert flat["inner.layers"] == [2, 4]
    assert flat["out"] == "runs/x"


def test_validate_hook_of_world_config() -> None:
    with pytest.raises(ConfigError, match="repeats a family"):
        from_dict(WorldConfig, {"families": ["vqa", "vqa"]})
    with pytest.raises(ConfigError, match="allowed values: 'vqa', 'caption', 'knowledge'"):
        from_dict(WorldConfig, {"families": ["vqa", "pictures"]})


@dataclass
class WithFactory:
    inner: Inner = field(default_factory=lambda: Inner(d_m=7, lr=0.5))


def test_nested_section_starts_from_the_field_default_factory() -> None:
    assert load_config(WithFactory).inner == Inner(d_m=7, lr=0.5)
    partial = load_config(WithFactory, None, ["inner.lr=0.25"])
    assert partial.inner == Inner(d_m=7, lr=0.25)  # d_m keeps the factory's 7, not 128
