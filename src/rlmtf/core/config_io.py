"""One loader for every config file and every saved config: TOML / YAML / JSON files of overrides on top
of a typed dataclass's defaults, and config dataclasses rebuilt from their saved JSON.

A file's keys follow the dataclass nesting; an unknown key, a value of the wrong type, a number that is not
finite or a value outside its range is a :class:`ConfigError` that names the file and the key
(``session.leave_bias``). The range checks every config gets (:func:`check_values`) go by the field's name
(sizes, probabilities, rates, learning rates, spreads, ordered ranges); a config's own ``validate()`` adds
the checks between its fields (``list_len <= n_candidates``). A saved config (``policy.json``'s
``config``) is rebuilt with the same checks (:func:`config_from_json`)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "build", "check_values", "config_from_json", "load_config_file", "read_config_file",
           "to_dict", "yaml_load"]


class ConfigError(ValueError):
    """A config file names an unknown parameter or gives one a value of the wrong type."""


def to_dict(obj: Any) -> Any:
    """A (nested) config dataclass as plain dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of parameters, got {value!r}")
        return build(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}: expected a list, got {value!r}")
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _coerce(value, rest[0], where)
        return value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
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
        return _number(value, where)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# --- the range checks every config gets, by field name ------------------------------------------------

#: ints that count something that must exist: at least 1
_SIZE_INTS = re.compile(r"^(max_\w+|\w+_len|\w+_size|popsize|ensemble_size|target_every|sessions_per_candidate|"
                        r"n_action_samples|n_candidates|latent_dim|observed_top_k|n_tasks)$")
#: shares, probabilities, discounts and rates of an exponential average: in [0, 1]
_UNIT = re.compile(r"^(\w+_prob|\w+_fraction|\w+_share|\w+_mix|gamma|session_gamma|tau|expectile|\w+_rate|"
                   r"start_carry|fatigue_decay)$")
#: learning rates: > 0
_POSITIVE = re.compile(r"^(\w+_lr|\w+_concentration)$")
#: spreads and noise levels: >= 0
_NON_NEGATIVE = re.compile(r"^(\w+_sigma|\w+_noise|n_\w+|embed_dim|\w+_s|\w+_days|\w+_smoothing)$")


def _field_problems(name: str, value: Any, where: str) -> list[str]:
    out = []
    if isinstance(value, bool) or value is None:
        return out
    if isinstance(value, int) and _SIZE_INTS.match(name) and value < 1:
        out.append(f"{where} must be >= 1, got {value}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            out.append(f"{where} must be a finite number, got {value}")
        elif _UNIT.match(name) and not 0.0 <= value <= 1.0:
            out.append(f"{where} must be in [0, 1], got {value}")
        elif _POSITIVE.match(name) and not value > 0:
            out.append(f"{where} must be > 0, got {value}")
        elif _NON_NEGATIVE.match(name) and value < 0:
            out.append(f"{where} must be >= 0, got {value}")
    elif isinstance(value, tuple):
        nums = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        bad = [v for v in nums if not math.isfinite(v)]
        if bad:
            out.append(f"{where} must hold finite numbers, got {list(value)}")
        elif name == "hidden" and any(isinstance(v, int) and v < 1 for v in value):
            out.append(f"{where}: every hidden layer needs >= 1 unit, got {list(value)}")
        elif (name.endswith("_range") or name.endswith("susceptibility")) and len(nums) == 2 and nums[0] > nums[1]:
            out.append(f"{where} must be an ordered range (low <= high), got {list(value)}")
    return out


def check_values(cfg: Any, where: str = "") -> list[str]:
    """The problems of a (nested) config dataclass's values, each naming its key: every number finite,
    sizes (``max_*``, ``*_len``, ``*_size``, ``hidden`` layers, ...) >= 1, counts ``n_*`` >= 0, shares,
    probabilities, discounts and rates in [0, 1], learning rates and concentrations > 0, spreads, noise
    levels and durations >= 0, ``*_range`` pairs ordered. Empty when all is well."""
    problems: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            problems += check_values(value, path)
        else:
            problems += _field_problems(f.name, value, path)
    return problems


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved at run time: no type checks for this class
        return {}


def build(cls: type, overrides: dict[str, Any], where: str = "", base: Any = None) -> Any:
    """``cls``'s defaults (or the instance ``base``'s values) overridden by the (nested) dict ``overrides``,
    types checked key by key. A nested table starts from the parent's default of that field, so a world
    config whose default sub-config differs from the sub-config class's defaults keeps them for the keys a
    file leaves out."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown parameter(s) {', '.join(prefix + u for u in unknown)}; "
                          f"{cls.__name__} has: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in overrides.items():
        path = f"{where}.{name}" if where else name
        tp = hints.get(name)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict):
            default = getattr(base, name) if base is not None else _field_default(fields[name])
            kwargs[name] = build(tp, value, path, base=default)
        else:
            kwargs[name] = _coerce(value, tp, path) if tp is not None else value
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def _field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (None if it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


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
    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as e:  # a syntax error, or a tag such as !!python/object (never constructed)
        raise ConfigError(f"not valid YAML: {' '.join(str(e).split())}") from None


def read_config_file(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level table of a .toml / .yaml / .yml / .json file; ``what`` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read {what} file ({e})") from None
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
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: cannot parse: {e}") from None
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
        problems = check_values(cfg)
        if problems:
            raise ConfigError("; ".join(problems))
        validate = getattr(cfg, "validate", None)
        if validate is not None:
            validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def config_from_json(config_cls: type, d: dict) -> Any:
    """Rebuild a frozen config dataclass from its ``asdict`` JSON (lists back to tuples), with the checks a
    config file gets (types, finite numbers, :func:`check_values`); a :class:`ConfigError` (a ``ValueError``)
    names the key."""
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a JSON object, got {type(d).__name__}")
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} for {config_cls.__name__}")
    hints = _hints(config_cls)
    kw = {}
    for k, raw in d.items():
        default = known[k].default
        v = tuple(raw) if isinstance(default, tuple) and isinstance(raw, list) else raw
        kw[k] = _coerce(v, hints[k], f"config.{k}") if k in hints else v
    try:
        cfg = config_cls(**kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config: {e}") from None
    problems = check_values(cfg, "config")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg
