"""One loader for every config file and every saved config: TOML / YAML / JSON files of overrides on top
of a typed dataclass's defaults, and config dataclasses rebuilt from their saved JSON.

A file's keys follow the dataclass nesting; an unknown key or a value of the wrong type is a
:class:`ConfigError` that names the file and the key (``session.leave_bias``)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "build", "config_from_json", "load_config_file", "read_config_file", "to_dict",
           "yaml_load"]


class ConfigError(ValueError):
    """A config file names an unknown parameter or gives one a value of the wrong type."""


def to_dict(obj: Any) -> Any:
    """A (nested) config dataclass as plain dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of parameters, got {value!r}")
        return build(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    return value


def build(cls: type, overrides: dict[str, Any], where: str = "") -> Any:
    """``cls``'s defaults overridden by the (nested) dict ``overrides``, types checked key by key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown parameter(s) {', '.join(prefix + u for u in unknown)}; "
                          f"{cls.__name__} has: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in overrides.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def yaml_load(text: str) -> Any:
    """yaml.safe_load, but reading exponent floats without a dot (``5e-2``) as numbers, as YAML 1.2,
    TOML and JSON do (YAML 1.1's resolver leaves them strings)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader plus the float resolver below (added to this subclass only)."""

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return yaml.load(text, Loader=Loader)


def read_config_file(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level table of a .toml / .yaml / .yml / .json file; ``what`` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format {suffix!r} (use .toml, .yaml or .json)")
    except (tomllib.TOMLDecodeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot parse: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of parameters at the top level")
    return data


def load_config_file(cls: type, path: str | Path | None, what: str) -> Any:
    """``cls()`` overridden by the file at ``path`` (None: the defaults), then its ``validate()`` if it has one;
    every error names the file."""
    if path is None:
        return cls()
    data = read_config_file(path, what)
    try:
        cfg = build(cls, data)
        validate = getattr(cfg, "validate", None)
        if validate is not None:
            validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    return cfg


def config_from_json(config_cls: type, d: dict) -> Any:
    """Rebuild a frozen config dataclass from its ``asdict`` JSON (lists back to tuples); unknown or
    ill-typed keys raise ``TypeError``/``ValueError`` naming them."""
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for {config_cls.__name__}")
    kw = {}
    for k, v in d.items():
        default = known[k].default
        kw[k] = tuple(v) if isinstance(default, tuple) and isinstance(v, list) else v
    return config_cls(**kw)
