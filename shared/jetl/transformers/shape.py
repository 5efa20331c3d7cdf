"""What a record model takes, field by field (`model_shape`, `model_paths`): the shape schema drift is measured
against (`jetl.transformers.drift`) and a per-field contract is checked against (`jetl.pipeline`). It knows no
pipeline, so the pipeline may ask it at start-up."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import Any
from uuid import UUID

from pydantic import BaseModel

__all__ = ["Shape", "json_kind", "model_paths", "model_shape"]

_ANY = frozenset({"int", "float", "str", "bool", "object", "array", "null"})
_SCALARS: dict[Any, frozenset[str]] = {
    int: frozenset({"int"}),
    float: frozenset({"int", "float"}),
    Decimal: frozenset({"int", "float", "str"}),
    str: frozenset({"str"}),
    bool: frozenset({"bool"}),
    bytes: frozenset({"str"}),
    datetime: frozenset({"str", "int", "float"}),
    date: frozenset({"str"}),
    time: frozenset({"str"}),
    timedelta: frozenset({"str", "int", "float"}),
    UUID: frozenset({"str"}),
    type(None): frozenset({"null"}),
}


@dataclass(frozen=True)
class Shape:
    """What a field takes: its JSON types, whether a record must hold it, and a nested model's own shape."""

    kinds: frozenset[str]
    required: bool
    nested: dict[str, Shape] | None = None
    name: str = ""


_KIND = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", dict: "object", list: "array"}


def json_kind(value: Any) -> str:
    """The JSON type of a parsed value."""
    kind = _KIND.get(type(value))
    if kind is not None:
        return kind
    for t, k in _KIND.items():  # a subclass (orjson gives none; a caller's records may)
        if t is not type(None) and isinstance(value, t):
            return k
    return "array"


def _kinds(annotation: Any) -> tuple[frozenset[str], dict[str, Shape] | None]:
    """The JSON types an annotation takes as they are, and its model's shape when it is one."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        nested = None
        for arg in typing.get_args(annotation):
            k, n = _kinds(arg)
            kinds |= k
            nested = nested or n
        return frozenset(kinds), nested
    if origin is typing.Literal:
        return frozenset(json_kind(v) for v in typing.get_args(annotation)), None
    if origin in (list, tuple, set, frozenset):
        return frozenset({"array"}), None
    if origin is dict:
        return frozenset({"object"}), None
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return frozenset({"object"}), model_shape(annotation)
        if issubclass(annotation, Enum):
            return frozenset(json_kind(m.value) for m in annotation), None
        exact = _SCALARS.get(annotation)  # before the subclass walk: bool is an int subclass, and takes no int
        if exact is not None:
            return exact, None
        for base, kinds_ in _SCALARS.items():
            if issubclass(annotation, base):
                return kinds_, None
        if issubclass(annotation, (list, tuple, set, frozenset)):
            return frozenset({"array"}), None
        if issubclass(annotation, dict):
            return frozenset({"object"}), None
    return _ANY, None


def _type_name(annotation: Any) -> str:
    """The annotation as people write it: `int`, `list[str]`, `str | None`."""
    if typing.get_origin(annotation) is None and isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


@cache
def model_shape(model: type[BaseModel], by_alias: bool = False) -> dict[str, Shape]:
    """Each field of `model` (by the key a record holds it under) and what it takes."""
    out: dict[str, Shape] = {}
    for name, f in model.model_fields.items():
        key = (f.validation_alias if isinstance(f.validation_alias, str) else None) or (f.alias if by_alias else None)
        kinds, nested = _kinds(f.annotation)
        out[key or name] = Shape(kinds, f.is_required(), nested, _type_name(f.annotation))
    return out


def model_paths(model: type[BaseModel], by_alias: bool = False) -> list[str]:
    """Every field path of `model` as records hold it, nested models' fields joined by dots (what a per-field
    `Contract` may name)."""

    def walk(shape: dict[str, Shape], prefix: str) -> list[str]:
        out = []
        for key, s in shape.items():
            out.append(prefix + key)
            if s.nested is not None:
                out += walk(s.nested, prefix + key + ".")
        return out

    return walk(model_shape(model, by_alias), "")
