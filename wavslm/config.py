"""Dataclass configs from JSON/YAML dicts: unknown keys and mistyped values are one clear `InputError`."""

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .errors import InputError

C = TypeVar("C")
log = logging.getLogger("wavslm.config")

_SCALARS: dict[Any, tuple[type, ...]] = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def from_dict(cls: type[C], values: dict[str, Any], source: object) -> C:
    """Build the dataclass `cls` from `values`, naming `source` (a file or a config section) in errors.

    Lists become tuples where the field is a tuple; scalar fields are type-checked (an int is accepted
    for a float, a bool never for an int). Keys of older configs that `cls.LEGACY_KEYS` lists (old name ->
    new name, or None for a key that no longer does anything) still load, with a note.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = _renamed(cls, values, source)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"{source} has unknown keys {unknown}; expected some of {sorted(fields)}")
    clean = {}
    for name, value in values.items():
        kind = fields[name].type
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            clean[name] = from_dict(kind, value, f"{source}: '{name}'")
            continue
        allowed = _SCALARS.get(kind)
        if kind is float and isinstance(value, str):
            # YAML 1.1 reads "2e-3" (no dot) as a string; accept what is plainly a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if allowed and (not isinstance(value, allowed) or (kind is not bool and isinstance(value, bool))):
            raise InputError(f"{source}: '{name}' must be {kind.__name__}, got {value!r}")
        if isinstance(value, list) and getattr(kind, "__origin__", None) is tuple:
            value = tuple(value)
        clean[name] = value
    return cls(**clean)


def renamed(cls: type, values: dict[str, Any], source: object) -> dict[str, Any]:
    """`values` with the older keys that `cls.LEGACY_KEYS` lists, at any depth, under their new names (with a
    note), before overrides by the new names are applied to them; `from_dict` does the same."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    out = dict(_renamed(cls, values, source))
    for name, value in out.items():
        if dataclasses.is_dataclass(fields.get(name)) and isinstance(value, dict):
            out[name] = renamed(fields[name], value, f"{source}: '{name}'")
    return out


def _renamed(cls: type, values: dict[str, Any], source: object) -> dict[str, Any]:
    legacy: dict[str, str | None] = getattr(cls, "LEGACY_KEYS", {})
    if not legacy.keys() & values.keys():
        return values
    out = {}
    for name, value in values.items():
        if name not in legacy:
            out[name] = value
        elif legacy[name] is None:
            log.info("%s: '%s' is no longer needed and is ignored", source, name)
        elif legacy[name] in values:
            raise InputError(f"{source} has both '{name}' and its new name '{legacy[name]}'; keep '{legacy[name]}'")
        else:
            log.info("%s: '%s' is now called '%s'", source, name, legacy[name])
            out[legacy[name]] = value
    return out


def to_dict(config: object) -> dict[str, Any]:
    """The JSON form of a config dataclass (tuples as lists, nested configs as dicts)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@contextmanager
def buildable(what: str) -> Iterator[None]:
    """Sizes that cannot make a model (heads that do not divide the width, groups that do not divide the
    channels) are bad input: the `ValueError` a module raises becomes one sentence naming `what`."""
    try:
        yield
    except InputError:
        raise
    except ValueError as error:
        raise InputError(f"this {what} config cannot be built: {error}") from error
