"""Error wording for a key the configuration does not know: where it is, with list items
named by their ``id`` (``lines[kei-ev].tact_s``), and the closest key the model does know
(``takt_s``)."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

from pydantic import BaseModel

__all__ = ["closest_key", "named_key"]


def named_key(doc: Any, loc: Sequence[str | int]) -> str | None:
    """The dotted key of ``loc`` in the file, a list item with an ``id`` (or a shift's
    ``name``) named by it (``lines[kei-ev].tact_s``, ``shifts[day].start``); None when the
    document does not hold the path."""
    node = doc
    out = ""
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            item = node[part]
            ident = (item.get("id") or item.get("name")) if isinstance(item, Mapping) else None
            out += f"[{ident}]" if isinstance(ident, str) and ident else f"[{part}]"
            node = item
        elif isinstance(node, Mapping) and isinstance(part, str):
            if (part not in node and part[:1].isupper()) or part in ("modbus", "opcua"):
                continue  # a union tag pydantic inserts, not a key of the file
            out += f".{part}" if out else part
            node = node.get(part)
        else:
            return None
    return out or None


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation may hold (through Optional, unions, lists, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin in (Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _item(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _item(typing.get_args(annotation)[0])
    if origin in (list, tuple, Sequence):
        return typing.get_args(annotation)[0]
    if origin is dict:
        return typing.get_args(annotation)[1]
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                return _item(arg)
    return annotation


def _keys(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def closest_key(model: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """The key of the model at ``loc``'s mapping closest to its last part, if any is close."""
    *path, unknown = loc
    current: list[type[BaseModel]] = [model]
    annotation: Any = None
    for part in path:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            current = _models(_item(annotation))
            annotation = None
            continue
        owners = [m for m in current if part in m.model_fields]
        if owners:
            annotation = owners[0].model_fields[part].annotation
            current = _models(annotation)
            continue
        tagged = [m for m in current if m.__name__ == part]  # a union tag of pydantic
        if tagged:
            current = tagged
        elif annotation is not None and typing.get_origin(_strip(annotation)) is dict:
            current = _models(_item(annotation))  # a dict key (a tag's name)
            annotation = None
    keys = sorted(k for m in current for k in _keys(m))
    found = difflib.get_close_matches(str(unknown), keys, n=1, cutoff=0.6)
    return found[0] if found else None


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation
