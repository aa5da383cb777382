"""Frozen-dataclass configurations: validation, overrides, and their JSON record.

Configs are the one place defaults live. Every run writes its full configuration as
JSON next to its outputs (`write_config`), and any command reruns it from that file
(`read_config`, `--config RUN/config.json`), with options given on the command line
applied on top (`with_overrides`).

A string option is a `typing.Literal` field; `check_literals(self)` in a config's
`__post_init__` validates every such field at once, with a message naming the allowed
values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from longbrain_jax.errors import InputError
from longbrain_jax.files import atomic_file

C = TypeVar("C")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (its module's names, `from __future__` strings evaluated)."""
    import sys

    return typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]))


def _literal_values(hint: Any) -> tuple | None:
    """The allowed values of a `Literal[...]` (or `Literal[...] | None`) annotation, else None."""
    if get_origin(hint) is Literal:
        return get_args(hint)
    if get_origin(hint) in (typing.Union, types.UnionType):
        for arg in get_args(hint):
            if get_origin(arg) is Literal:
                return get_args(arg) + ((None,) if type(None) in get_args(hint) else ())
    return None


def check_literals(cfg: Any) -> None:
    """Raise `ValueError` naming the field and its allowed values if any `Literal` field holds another value."""
    for name, hint in _hints(type(cfg)).items():
        allowed = _literal_values(hint)
        if allowed is not None and getattr(cfg, name) not in allowed:
            shown = ", ".join(repr(a) for a in allowed)
            raise ValueError(f"{type(cfg).__name__}.{name} must be one of {shown}, got {getattr(cfg, name)!r}")


def _dataclass_type(hint: Any) -> type | None:
    """The dataclass type in an annotation (`X`, `X | None`), else None."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in get_args(hint) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A nested dataclass as plain JSON-ready values (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild `cls` from `config_to_dict` output: nested dataclasses by their annotated type,
    lists back to tuples; fields missing from `data` keep their defaults, except those in the
    class's `RECORDED_BEFORE` (field -> the value runs had before the field existed)."""
    hints = _hints(cls)
    before = getattr(cls, "RECORDED_BEFORE", {})
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            if field.name in before:
                kwargs[field.name] = before[field.name]
            continue
        value = data[field.name]
        nested = _dataclass_type(hints.get(field.name))
        if nested is not None and isinstance(value, dict):
            value = config_from_dict(nested, value)
        elif isinstance(value, list):
            value = _as_tuples(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def _as_tuples(value: Any) -> Any:
    """JSON lists back to (nested) tuples, as frozen configs hold them."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def with_overrides(cfg: C, overrides: dict[str, Any]) -> C:
    """`cfg` with dotted fields replaced, e.g. {"finetune.steps": 200, "inr.width": 64}; None values are skipped."""
    grouped: dict[str, dict[str, Any]] = {}
    direct = {}
    for path, value in overrides.items():
        if value is None:
            continue
        head, _, rest = path.partition(".")
        if not any(f.name == head for f in dataclasses.fields(cfg)):
            raise ValueError(f"{type(cfg).__name__} has no field {head!r}")
        if rest:
            grouped.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in grouped.items():
        direct[head] = with_overrides(direct.get(head, getattr(cfg, head)), sub)
    return dataclasses.replace(cfg, **direct) if direct else cfg


def field_value(cfg: Any, path: str) -> Any:
    """The value at a dotted field path of a config ("finetune.steps")."""
    for name in path.split("."):
        cfg = getattr(cfg, name)
    return cfg


def write_config(cfg: Any, path: str | os.PathLike, overwrite: bool = True, **extra: Any) -> None:
    """Write `cfg` (plus any `extra` keys, e.g. the command line) as JSON, atomically."""
    record = {"config": config_to_dict(cfg), "type": type(cfg).__qualname__, **extra}
    with atomic_file(Path(path), overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_config(cls: type[C], path: str | os.PathLike) -> C:
    """Read a configuration written by `write_config`; `InputError` naming the file if it is not one of `cls`."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read a configuration ({type(e).__name__}: {e})") from None
    if not isinstance(record, dict) or "config" not in record:
        raise InputError(path, "is not a config.json written by longbrain (no 'config' entry)")
    if record.get("type", cls.__qualname__) != cls.__qualname__:
        raise InputError(path, f"holds a {record['type']}, not the {cls.__qualname__} this command runs")
    try:
        return config_from_dict(cls, record["config"])
    except (TypeError, ValueError) as e:
        raise InputError(path, f"invalid configuration: {e}") from None
