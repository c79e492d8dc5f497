"""Typed run configuration: dataclasses loaded from YAML with dotted command-line overrides.

Every run's configuration is a (possibly nested) dataclass. :func:`load_config` reads a YAML file,
applies ``key.sub=value`` overrides, converts each value to its field's type and validates the
whole tree *before any work*, raising one :class:`ConfigError` that lists every problem with its
dotted key and the allowed values. :func:`save_config` writes the resolved configuration next to a
run's outputs, so every run can be repeated from what it saved.

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``pathlib.Path``,
``typing.Literal[...]``, ``X | None``, ``list[X]`` / ``tuple[X, ...]``, ``dict[str, X]`` and nested
dataclasses.
Numeric bounds go in field metadata: ``field(default=4, metadata={"min": 1})``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

CONFIG_FILE = "config.yaml"


class ConfigError(ValueError):
    """A configuration that cannot run. ``problems`` lists one message per bad key."""

    def __init__(self, problems: Sequence[str], source: str = ""):
        self.problems = list(problems)
        head = f"invalid configuration{f' ({source})' if source else ''}:"
        super().__init__("\n  ".join([head, *self.problems]))


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a validated ``cls`` from an optional YAML file and ``key.sub=value`` overrides."""
    data: dict[str, Any] = {}
    source = ""
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError([f"config file not found: {path}"], source) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"the top level must be a mapping, got {type(loaded).__name__}"])
        data = loaded
    problems: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override '{item}': expected key.sub=value")
            continue
        _set_dotted(data, key.strip(), raw.strip(), problems)
    if problems:
        raise ConfigError(problems, source)
    return from_dict(cls, data, source=source)


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "") -> T:
    """Convert and validate a plain mapping into ``cls``; all problems are reported at once."""
    problems: list[str] = []
    value = _build(cls, data, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (paths as strings, tuples as lists)."""
    return _plain(dataclasses.asdict(config))


def save_config(config: Any, out_dir: str | Path, name: str = CONFIG_FILE) -> Path:
    """Write the resolved configuration as YAML into ``out_dir`` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    tmp.replace(path)
    return path


def flatten(config: Any) -> dict[str, Any]:
    """Dotted-key view of a config (``editor.d_m: 128``), e.g. for MLflow params."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(to_dict(config), "")
    return flat


def config_hash(config: Any, length: int = 16) -> str:
    """A stable hash of a config's values (hex), used for cache keys and compatibility checks."""
    text = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# --------------------------------------------------------------------------------------------
# internals


def _set_dotted(data: dict[str, Any], key: str, raw: str, problems: list[str]) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"{key}: '{part}' is a value, not a section")
            return
        node = child
    node[parts[-1]] = _RawString(raw)


class _RawString(str):
    """A value typed on the command line: converted by the field's type, not by YAML alone."""


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, Mapping):
        problems.append(f"{prefix[:-1] or '<root>'}: expected a section (mapping)")
        return None
    before = len(problems)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            problems.append(f"{prefix}{key}: unknown key; allowed keys: {allowed}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = prefix + name
        nested = dataclasses.is_dataclass(hints[name]) and _has_default(f)
        if nested:
            # a nested section starts from the field's own default (its default_factory may
            # differ from the nested class's defaults); given keys override it
            given = data.get(name, {})
            if not isinstance(given, Mapping):
                problems.append(f"{key}: expected a section (mapping)")
                continue
            base = dataclasses.asdict(_field_default(f))
            kwargs[name] = _build(hints[name], _merge(base, given), key + ".", problems)
        elif name in data:
            kwargs[name] = _convert(hints[name], data[name], key, problems, f.metadata)
        elif not _has_default(f):
            problems.append(f"{key}: required")
    if len(problems) > before:
        return None
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{prefix[:-1] or '<root>'}: {exc}")
        return None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            found = validate() or ()
        except (TypeError, ValueError) as exc:
            found = [str(exc)]
        for problem in found:
            problems.append(f"{prefix}{problem}")
    return obj


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _merge(base: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over ``base``, recursively for sections present in both."""
    merged = dict(base)
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _convert(tp: Any, value: Any, key: str, problems: list[str], meta: Mapping = {}) -> Any:  # noqa: B006
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, _RawString) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, key, problems, meta)
        problems.append(f"{key}: unsupported union type {tp}")
        return None
    if origin is Literal:
        choices = args
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        allowed = ", ".join(repr(c) for c in choices)
        problems.append(f"{key}: {value!r} is not allowed; allowed values: {allowed}")
        return None
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", problems)
    if origin in (dict, Mapping, typing.Mapping):
        if isinstance(value, _RawString):
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return None
        key_type, value_type = args if args else (str, Any)
        return {
            _convert(key_type, k, f"{key}.{k}", problems): _convert(
                value_type, v, f"{key}.{k}", problems, meta
            )
            for k, v in value.items()
        }
    if origin in (list, tuple, Sequence, typing.Sequence):
        items = value
        if isinstance(value, _RawString):
            parsed = yaml.safe_load(value) if value.startswith("[") else value.split(",")
            items = [_RawString(str(v).strip()) for v in parsed if str(v).strip()]
        if not isinstance(items, list | tuple):
            problems.append(f"{key}: expected a list, got {value!r}")
            return None
        elem = args[0] if args else Any
        out = [_convert(elem, v, f"{key}[{i}]", problems, meta) for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        problems.append(f"{key}: {value!r} is not a boolean; allowed values: true, false")
        return None
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = tp(value) if tp is float or not isinstance(value, float) else None
            if number is None or (tp is int and isinstance(value, str) and "." in value):
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"{key}: {value!r} is not {'an integer' if tp is int else 'a number'}")
            return None
        low, high = meta.get("min"), meta.get("max")
        if (low is not None and number < low) or (high is not None and number > high):
            bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            problems.append(f"{key}: {number} is out of range; allowed range: {bounds}")
        return number
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            problems.append(f"{key}: expected a string, got {value!r}")
            return None
        return str(value)
    if tp is Path:
        if not isinstance(value, str | Path):
            problems.append(f"{key}: expected a path, got {value!r}")
            return None
        return Path(value)
    problems.append(f"{key}: unsupported field type {tp}")
    return None


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    if isinstance(node, Path):
        return str(node)
    return node
