"""One config object per stage serves the Python API, the CLI flags and a YAML file.

Configs are dataclasses (with nested dataclasses allowed). ``load_config(cls, yaml, overrides)``
builds one from defaults, then the YAML file, then the CLI flags that were given (``None``
means "not given"). Unknown keys are errors that name the key, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or flag does not fit the config's fields."""


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build dataclass ``cls`` from a (possibly nested) dict.

    Unknown keys, values of the wrong type (see ``_check_type``) and values the dataclass's own
    ``__post_init__`` refuses all raise ConfigError naming the key, before any work starts.
    """
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
        else:
            value = _check_type(value, typ, f"{where}.{key}")
            if isinstance(value, list) and _is_tuple(typ):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a __post_init__ check: the message names the setting
        raise ConfigError(f"{where}: {e}") from e


#: YAML 1.1 (PyYAML) reads ``1e-4`` (no dot) as a string; such strings are numbers here.
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _check_type(value: Any, typ: Any, where: str) -> Any:
    """``value`` if it fits the field type ``typ`` (scientific-notation strings become numbers);
    ConfigError naming ``where`` otherwise. Types this does not know are accepted as they are."""
    origin, args = get_origin(typ), get_args(typ)
    if typ is Any or typ is None or isinstance(typ, TypeVar):
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for t in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, t, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {typ}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if typ in (bool, int, float, str):
        return _check_scalar(value, typ, where)
    if origin is tuple or typ is tuple:
        return _check_tuple(value, args, where)
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if len(args) == 2:
            return {_check_type(k, args[0], f"{where} key"): _check_type(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return value
    if (origin is list or typ is list) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value


def _check_scalar(value: Any, typ: type, where: str) -> Any:
    """bool / int / float / str fields: exact types, ints in float fields, integral floats and
    scientific-notation strings ("1e-4") as numbers; anything else is an error naming the key."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r} ({type(value).__name__})")
    number = value
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        number = float(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        kind = "an integer" if typ is int else "a number"
        raise ConfigError(f"{where}: expected {kind}, got {value!r} ({type(value).__name__})")
    if typ is float:
        return float(number)
    if isinstance(number, float):
        if not number.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    return number


def _check_tuple(value: Any, args: tuple, where: str) -> Any:
    """A tuple field from a YAML list (or a tuple): each element checked against its type."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if not args:
        return value
    if len(args) == 2 and args[1] is Ellipsis:
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if len(args) != len(value):
        raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
    return [_check_type(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args))]


ON_ERROR_CHOICES = ("raise", "skip")


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """ConfigError naming ``key`` unless ``value`` is one of ``choices`` (checked at startup)."""
    if value not in choices:
        raise ConfigError(f"{key}: unknown {key.rsplit('.', 1)[-1]} {value!r}; expected one of {', '.join(choices)}")


def check_positive(cfg: Any, section: str, names: tuple[str, ...], minimum: float = 1) -> None:
    """ConfigError naming ``section.name`` for the first of ``names`` below ``minimum``."""
    for name in names:
        if getattr(cfg, name) < minimum:
            raise ConfigError(f"{section}.{name} must be >= {minimum}, got {getattr(cfg, name)}")


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
        loaded = _read_yaml(path)
        _check_sections(loaded, cls, str(path))
        data = _deep_update(data, loaded, cls)
    data = _deep_update(data, {k: v for k, v in (overrides or {}).items() if v is not None}, cls)
    return from_dict(cls, data, where=str(yaml_path or cls.__name__))


def _read_yaml(path: Path) -> dict[str, Any]:
    """The YAML file's top-level mapping; ConfigError (naming file and line) if it is not one."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{at}: invalid YAML ({problem})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read ({e})") from e
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def _check_sections(data: dict[str, Any], cls: Any, where: str) -> None:
    """A section (a nested config) given as a scalar or list is an error, never dropped: a flag
    override merged over it later must not hide it behind the defaults."""
    hints = get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    for key, value in data.items():
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {key!r} must be a mapping of {sub.__name__} fields, got {value!r}")
            _check_sections(value, sub, f"{where}: {key}")


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
