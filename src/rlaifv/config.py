"""One config object per stage serves the Python API, the CLI flags and a YAML file.

Configs are dataclasses (with nested dataclasses allowed). ``load_config(cls, yaml, overrides)``
builds one from defaults, then the YAML file, then the CLI flags that were given (``None``
means "not given"). Unknown keys are errors that name the key, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or flag does not fit the config's fields."""


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build dataclass ``cls`` from a (possibly nested) dict; unknown keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        typ = hints.get(key)
        if dataclasses.is_dataclass(typ):
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping of {typ.__name__} fields, got {value!r}")
            value = from_dict(typ, value, f"{where}.{key}")  # type: ignore[arg-type]
        elif isinstance(value, list) and _is_tuple(typ):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    return cls(**kwargs)


def _is_tuple(typ: Any) -> bool:
    return getattr(typ, "__origin__", None) is tuple


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config(cls: type[C], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None, base: C | None = None) -> C:
    """defaults (or ``base``) <- YAML file <- overrides whose value is not None."""
    data: dict[str, Any] = to_dict(base) if base is not None else {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = _deep_update(data, loaded, cls)
    data = _deep_update(data, {k: v for k, v in (overrides or {}).items() if v is not None}, cls)
    return from_dict(cls, data, where=str(yaml_path or cls.__name__))


def _deep_update(a: dict[str, Any], b: dict[str, Any], cls: Any) -> dict[str, Any]:
    """Merge ``b`` into ``a``: nested config sections merge field by field, plain values (a
    dict-valued field such as a task mix included) are replaced whole."""
    hints = get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    out = dict(a)
    for k, v in b.items():
        sub = hints.get(k)
        nested = dataclasses.is_dataclass(sub) and isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_update(out[k], v, sub) if nested else v
    return out


def dump_yaml(cfg: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_plain(to_dict(cfg)), sort_keys=False))
    return path


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
