"""Typed configuration from plain data: every stage's config is a dataclass, and this module turns a mapping
(a TOML section, a ``--set`` override, a published version's stored config) into one, or back.

Validation is pydantic's (types, nested dataclasses, ``Literal`` choices), plus each dataclass's own
``__post_init__`` checks; an unknown key or a bad value is one `ConfigError` line naming where it came
from, the key and what is allowed. TOML has no null, so a field that may be None reads and writes the
string ``"none"``. It never imports a stage package: stages import it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic

from freshrec.errors import ConfigError

__all__ = ["NONE", "as_plain", "known_keys", "parse", "parse_assignment", "read_toml", "set_path", "to_toml"]

Config = TypeVar("Config")

#: How None is written in a TOML file (which has no null) for fields that may be None.
NONE = "none"


def parse(cls: type[Config], data: Mapping[str, Any], where: str = "", section: str = "") -> Config:
    """An instance of the dataclass `cls` from `data` (nested mappings for nested dataclasses), every
    field not in `data` at its default.

    Errors read ``WHERE: SECTION.KEY: what is wrong``: `where` names the origin (a file, ``--set``, a
    published version), `section` the dotted path of `data` in it (``model``, ``trainer``). A dataclass
    may declare ``legacy_keys`` (old flat name -> nested names), which are rewritten first.

    >>> from freshrec.embeddings.config import TableConfig
    >>> parse(TableConfig, {"capacity": 10, "ttl_seconds": "none"}, "table").capacity
    10
    >>> parse(TableConfig, {"eviction": "fifo"}, "a.toml", "t")
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: a.toml: t.eviction: 'fifo' is not allowed; use one of 'lru', 'lfu', 'none'
    """
    plain = _rewrite(cls, dict(data))
    try:
        return _adapter(cls).validate_python(plain)
    except pydantic.ValidationError as error:
        raise ConfigError(_describe(cls, error, where, section)) from None
    except ConfigError as error:  # a __post_init__ check pydantic did not wrap
        raise ConfigError(_located(where, section, str(error))) from None


def as_plain(config: Any) -> Any:
    """A dataclass (or a value inside one) as TOML/JSON-able data: dicts, lists, numbers, strings; None
    as `NONE`; paths as strings.

    >>> from freshrec.embeddings.config import TableConfig
    >>> as_plain(TableConfig(capacity=5))["ttl_seconds"]
    'none'
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: as_plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}
    if isinstance(config, Mapping):
        return {str(k): as_plain(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [as_plain(v) for v in config]
    if config is None:
        return NONE
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, float) and not math.isfinite(config):
        return str(config)
    return config


def known_keys(cls: type) -> list[str]:
    """The keys a section of dataclass `cls` accepts, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML file; a missing file or a syntax error is a `ConfigError` naming the file."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror or error}") from None


def to_toml(data: Mapping[str, Any]) -> str:
    """`data` (plain, see `as_plain`) as TOML text, short arrays on one line.

    >>> print(to_toml({"model": {"name": "blend", "buckets": [1, 2, 5]}}), end="")
    [model]
    name = "blend"
    buckets = [1, 2, 5]
    """
    import tomli_w

    text = tomli_w.dumps(_tables_last(data))
    return _SHORT_ARRAY.sub(_one_line, text)


# An array tomli-w wrote one element per line, whose elements are plain values (no nested arrays).
_SHORT_ARRAY = re.compile(r"= \[\n((?:    [^\[\]\n]+,\n)*)\]")


def _one_line(match: re.Match[str]) -> str:
    items = [line.strip().rstrip(",") for line in match.group(1).splitlines()]
    joined = "= [" + ", ".join(items) + "]"
    return joined if len(joined) <= 100 else match.group(0)


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """A ``--set`` override ``section.key=value`` as (path, value). The value is read as a TOML value
    (``5``, ``0.1``, ``true``, ``"lru"``, ``[1, 2]``), or taken as a string when it is not one (``lru``).

    >>> parse_assignment("model.items.capacity=5000")
    (['model', 'items', 'capacity'], 5000)
    >>> parse_assignment("model.name=two-tower")
    (['model', 'name'], 'two-tower')
    """
    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set trainer.batch_size=512")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating the tables on the way."""
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


# -- internals ------------------------------------------------------------------------------------------


@cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    _forbid_extra(cls)
    return pydantic.TypeAdapter(cls)


def _forbid_extra(cls: type) -> None:
    """Make pydantic refuse unknown keys in `cls` and every dataclass nested in it."""
    if not dataclasses.is_dataclass(cls) or "__pydantic_config__" in cls.__dict__:
        return
    cls.__pydantic_config__ = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)  # type: ignore[attr-defined]
    for hint in typing.get_type_hints(cls).values():
        for inner in _types_in(hint):
            _forbid_extra(inner)


def _types_in(hint: Any) -> list[Any]:
    args = typing.get_args(hint)
    return [hint, *[t for arg in args for t in _types_in(arg)]]


def _rewrite(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Legacy keys rewritten, ``"none"`` made None where the field may be None, recursively."""
    if not dataclasses.is_dataclass(cls):
        return data
    legacy: Mapping[str, tuple[str, ...]] = getattr(cls, "legacy_keys", {})
    for old in [key for key in data if key in legacy]:
        value = data.pop(old)
        for target in legacy[old]:
            set_path(data, target.split("."), value)
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in list(data.items()):
        hint = hints.get(name)
        nested = _dataclass_of(hint)
        if nested is not None and isinstance(value, Mapping):
            # A partial section overrides the keys it names; the others keep this field's own default
            # (``MFConfig.users`` starts its rows at 0, not at `TableConfig`'s init_std).
            base = _default_of(defaults[name]) if name in defaults else None
            merged = _merged(as_plain(base), value) if dataclasses.is_dataclass(base) else dict(value)
            data[name] = _rewrite(nested, merged)
        elif (
            isinstance(value, str) and value.lower() == NONE and _admits_none(hint) and not _names_none(hint)
        ):
            data[name] = None
    return data


def _default_of(spec: dataclasses.Field) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None if spec.default is dataclasses.MISSING else spec.default


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _dataclass_of(hint: Any) -> type | None:
    for inner in _types_in(hint):
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            return inner
    return None


def _admits_none(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _names_none(hint: Any) -> bool:
    """Whether ``"none"`` is itself one of the field's allowed values (``eviction = "none"``)."""
    literals = [typing.get_args(inner) for inner in _types_in(hint) if typing.get_origin(inner) is Literal]
    return any(NONE in choices for choices in literals)


def _located(where: str, key: str, message: str) -> str:
    parts = [part for part in (where, key) if part]
    return ": ".join([*parts, message])


def _describe(cls: type, error: pydantic.ValidationError, where: str, section: str) -> str:
    """One line for the first problem pydantic found: where, the key, what is wrong, what is allowed."""
    problem = error.errors(include_url=False)[0]
    location = [str(part) for part in problem["loc"]]
    kind, given = problem["type"], problem.get("input")
    key = ".".join(part for part in (section, *location) if part)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        owner = _owner(cls, location[:-1])
        known = ", ".join(known_keys(owner)) if owner is not None else "?"
        return _located(where, key, f"unknown key; the keys of this section are {known}")
    if kind == "literal_error":
        choices = problem.get("ctx", {}).get("expected", "")
        return _located(where, key, f"{given!r} is not allowed; use one of {choices.replace(' or ', ', ')}")
    if kind == "value_error":
        return _located(where, key, str(problem.get("ctx", {}).get("error", problem["msg"])))
    if kind in ("dataclass_type", "dataclass_args_type", "model_type") or (
        isinstance(given, str | int | float) and _owner(cls, location) is not None
    ):
        return _located(where, key, f"expected a section (a table of keys), got {given!r}")
    return _located(where, key, f"{problem['msg'].lower()} (got {given!r})")


def _owner(cls: type, location: list[str]) -> type | None:
    """The dataclass found by following `location` field by field from `cls` (None if it leaves them)."""
    current: type | None = cls
    for part in location:
        if current is None or not dataclasses.is_dataclass(current):
            return None
        hint = typing.get_type_hints(current).get(part)
        current = _dataclass_of(hint) if hint is not None else None
    return current if current is not None and dataclasses.is_dataclass(current) else None


def _tables_last(data: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values before sub-tables, so the TOML reads top-down (tomli-w writes them in dict order)."""
    values = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: _tables_last(v) for k, v in data.items() if isinstance(v, Mapping)}
    return {**values, **tables}
