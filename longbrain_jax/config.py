"""Frozen-dataclass configurations and their JSON record.

Every run writes its full configuration as JSON next to its outputs (`write_config`)
so any result can be rerun from that file (`read_config`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from longbrain_jax.files import atomic_file

C = TypeVar("C")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A nested dataclass as plain JSON-ready values (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild `cls` from `config_to_dict` output (nested dataclasses and tuples)."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        value = data[field.name]
        ftype = field.type if isinstance(field.type, type) else None
        default = field.default if field.default is not dataclasses.MISSING else None
        if default is None and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if dataclasses.is_dataclass(ftype) or dataclasses.is_dataclass(default):
            value = config_from_dict(ftype or type(default), value)
        elif isinstance(value, list):
            value = _as_tuples(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def _as_tuples(value: Any) -> Any:
    """JSON lists back to (nested) tuples, as frozen configs hold them."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def write_config(cfg: Any, path: str | os.PathLike, overwrite: bool = True, **extra: Any) -> None:
    """Write `cfg` (plus any `extra` keys, e.g. the command line) as JSON, atomically."""
    record = {"config": config_to_dict(cfg), "type": type(cfg).__qualname__, **extra}
    with atomic_file(Path(path), overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_config(cls: type[C], path: str | os.PathLike) -> C:
    """Read a configuration written by `write_config`."""
    return config_from_dict(cls, json.loads(Path(path).read_text())["config"])
