"""Load a configuration file: YAML 1.2 (ruamel.yaml), then the pydantic models.

Every failure becomes one :class:`~agent.contract.errors.ConfigError` sentence naming the file,
the line and the key: ``config/x.yaml:42: lines.0.counter.source: ...``.

Loading is bounded (:mod:`agent.config.bounds`): a hostile or broken file is refused in
milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from agent.config import Config
from agent.config.bounds import (
    MAX_CONFIG_ALIASES,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_NODES,
    check_expansion,
    nesting_depth,
    read_bounded,
)
from agent.config.suggest import closest_key, named_key
from agent.contract.errors import ConfigError

__all__ = [
    "MAX_CONFIG_ALIASES",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_NODES",
    "LoadedConfig",
    "load_config",
    "load_model",
    "parse_yaml",
    "with_broker",
]

M = TypeVar("M", bound=BaseModel)
_PATH_PREFIX = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[A-Za-z0-9_-]+)*): (.*)$", re.S)


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: Path
    sha256: str


def _yaml(typ: str) -> YAML:
    yaml = YAML(typ=typ, pure=typ == "rt")
    yaml.version = (1, 2)
    yaml.allow_duplicate_keys = False
    return yaml


def parse_yaml(path: Path) -> tuple[Any, bytes]:
    """The YAML document (round-trip nodes that remember line numbers) and the raw bytes."""
    raw = read_bounded(path)
    return _parse_rt(raw, path), raw


def _parse_rt(raw: bytes, path: Path) -> Any:
    """The round-trip document, every YAML error as one sentence with its line; the
    expansion bounds checked first with the same (pure) parser."""
    check_expansion(_yaml("rt"), raw, str(path))
    try:
        doc = _yaml("rt").load(raw)
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        key = _duplicate_key(exc)
        raise ConfigError("duplicate key (each key may appear once)", file=str(path), line=line,
                          key=key) from exc
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = (exc.problem or exc.context or "invalid YAML").strip()
        raise ConfigError(f"invalid YAML: {reason}", file=str(path), line=line) from exc
    except YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=str(path)) from exc
    if not isinstance(doc, Mapping):
        raise ConfigError("the file must hold a mapping of keys at the top level", file=str(path), line=1)
    return doc


def _duplicate_key(exc: DuplicateKeyError) -> str | None:
    m = re.search(r'found duplicate key "([^"]+)"', str(exc))
    return m.group(1) if m else None


class _SameKey(Exception):
    """Two keys of one mapping that differ in the file but are equal once read."""

    def __init__(self, loc: tuple[str | int, ...], first: Any, second: Any) -> None:
        super().__init__(loc, first, second)
        self.loc, self.first, self.second = loc, first, second


def _read_as(key: Any) -> Any:
    """What a key becomes once validated: ``1``, ``"1"``, ``" +1"`` and ``true`` vs ``1``
    are one key to an integer-keyed map (a state map), and to Python's dict already."""
    if isinstance(key, bool | int):
        return int(key)
    if isinstance(key, str):
        try:
            return int(key.strip())
        except ValueError:
            return key
    return key


def _plain(node: Any, loc: tuple[str | int, ...] = ()) -> Any:
    """Round-trip nodes to plain Python values for validation; keys equal once read are
    refused (:class:`_SameKey`), never silently merged with the last one winning."""
    if isinstance(node, Mapping):
        out: dict[Any, Any] = {}
        seen: dict[Any, Any] = {}
        for k, v in node.items():
            same = seen.setdefault(_read_as(k), k)
            if same is not k:
                raise _SameKey(loc, same, k)
            out[str(k) if not isinstance(k, int) else k] = _plain(v, (*loc, str(k)))
        return out
    if isinstance(node, list | tuple):
        return [_plain(v, (*loc, i)) for i, v in enumerate(node)]
    if isinstance(node, bool | None):
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _locate(doc: Any, loc: Sequence[str | int]) -> tuple[int | None, str]:
    """Follow a pydantic error location through the YAML nodes: (1-based line, dotted key).

    Union tags that pydantic inserts (``modbus``, ``ModbusTag``) are not keys of the file
    and are skipped.
    """
    node = doc
    line: int | None = None
    parts: list[str] = []
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            pos = node.lc.key(part)
            line = pos[0] + 1 if pos else line
            parts.append(str(part))
            node = node[part]
        elif isinstance(node, CommentedMap) and isinstance(part, str) and part.isdigit() and int(part) in node:
            pos = node.lc.key(int(part))
            line = pos[0] + 1 if pos else line
            parts.append(part)
            node = node[int(part)]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            pos = node.lc.item(part)
            line = pos[0] + 1 if pos else line
            parts.append(str(part))
            node = node[part]
        elif isinstance(node, CommentedMap) and isinstance(part, str) and not _is_tag(part):
            # a missing or unknown key: name it, point at its mapping
            parts.append(part)
            if line is None and node.lc.line is not None:
                line = node.lc.line + 1
            node = None
        # else: a union tag inserted by pydantic, not a key in the file
    return line, ".".join(parts)


def _is_tag(part: str) -> bool:
    return part in {"modbus", "opcua"} or part[:1].isupper() or part.startswith("function-")


def _sentence(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        return "unknown key (not part of the configuration; check the spelling)"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return "kind must be 'modbus' or 'opcua'"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, "):]
    inp = err.get("input")
    typed = kind.endswith(("_type", "_parsing")) or kind == "literal_error"
    if typed and not isinstance(inp, Mapping | list):
        return f"{msg[0].lower()}{msg[1:]} (got {inp!r})"
    return msg[0].lower() + msg[1:] if msg else msg


def validation_error(exc: ValidationError, doc: Any, file: str,
                     model: type[BaseModel] | None = None) -> ConfigError:
    """The first error of a ValidationError as one sentence naming file, line and key; an
    unknown key is named with its list items' ids and the closest known key suggested."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc: list[str | int] = list(err.get("loc", ()))
    msg = str(err.get("msg", ""))
    m = _PATH_PREFIX.match(msg)
    if m and err.get("type") == "value_error":
        # a cross-field check names its own key path
        path = [int(p) if p.isdigit() else p for p in m.group(1).split(".")]
        loc = loc + path
        sentence = m.group(2)
    else:
        sentence = _sentence(err)
    line, key = _locate(doc, loc)
    key = named_key(doc, loc) or key
    if err.get("type") == "extra_forbidden":
        close = closest_key(model, loc) if model is not None and loc else None
        if close is not None:
            sentence = f"unknown key (not part of the configuration): did you mean {close}?"
    more = len(errors) - 1
    if more:
        sentence += f" (and {more} more error{'s' if more > 1 else ''})"
    return ConfigError(sentence, file=file, line=line, key=key or None)


def load_model(path: Path, model: type[M]) -> tuple[M, bytes]:
    """Load any configuration model from a YAML file with file/line/key errors.

    A valid file is read once with the safe loader (libyaml's parser when ruamel.yaml.clib
    is there: a 500-PLC file in about a second and a third of the memory of the round-trip
    loader, which keeps every node's position); only a file that fails is read again with
    the round-trip loader, whose positions name the line of the error (and a file the two
    loaders could read differently, :data:`_SLOW_PATH`, is read with it alone).
    """
    raw = read_bounded(path)
    doc = _json_document(raw)
    if doc is not None and nesting_depth(doc) > MAX_CONFIG_DEPTH:
        doc = None  # the YAML path refuses it, with its line
    if doc is None and not _SLOW_PATH.search(raw):
        # libyaml's parser stops at what it cannot read: the count is then incomplete, the
        # safe load fails as well, and the round-trip path checks the bounds again
        check_expansion(_yaml("safe"), raw, str(path))
        try:
            doc = _yaml("safe").load(raw)
        except YAMLError:
            doc = None  # the round-trip loader reports it, with its line
    if isinstance(doc, Mapping):
        try:
            return model.model_validate(_plain(doc)), raw
        except (ValidationError, _SameKey):
            pass  # located below, on the round-trip document
    del doc
    rt = _parse_rt(raw, path)
    try:
        plain = _plain(rt)
    except _SameKey as exc:
        line, key = _locate(rt, [*exc.loc, exc.second])
        raise ConfigError(f"duplicate key: {exc.first!r} and {exc.second!r} are the same key once "
                          "read (each key may appear once)", file=str(path), line=line,
                          key=key or None) from None
    try:
        return model.model_validate(plain), raw
    except ValidationError as exc:
        raise validation_error(exc, rt, str(path), model) from None


#: what the safe loader reads otherwise than the round-trip loader, so such a file takes the
#: round-trip path only: merge keys (the safe constructor does not refuse a duplicate key in
#: a mapping with a merge key), a %YAML directive (libyaml reads every file as 1.2), tabs
#: (libyaml accepts a tab after a colon)
_SLOW_PATH = re.compile(rb"<<|%YAML|\t")


def _json_document(raw: bytes) -> Any:
    """A file holding one JSON object, read with the JSON parser; None for anything else.

    JSON is YAML 1.2 (a generated configuration often is JSON): the JSON parser reads it in
    a fraction of the YAML loader's time and memory (a 500-PLC, 30-tag file: 0.1 s and a
    few MB instead of about 1 s and 65 MB). A JSON file with a duplicate key, or with a
    NaN or Infinity (which YAML reads differently), is left to the YAML loader, which
    decides and reports it as for any other file.
    """
    if raw.lstrip()[:1] != b"{":
        return None

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        # UTF-8 only (json.loads would take UTF-16 and UTF-32 as well; YAML needs their BOM)
        return json.loads(raw.decode("utf-8"), object_pairs_hook=unique, parse_constant=refuse)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        return None


def load_config(path: Path | str) -> LoadedConfig:
    """Load and validate the agent's configuration file."""
    p = Path(path)
    cfg, raw = load_model(p, Config)
    return LoadedConfig(config=anchor_storage(cfg, p.parent), path=p,
                        sha256=hashlib.sha256(raw).hexdigest())


def anchor_storage(cfg: Config, folder: Path) -> Config:
    """A relative ``storage.path`` read against the config file's folder (not the current
    one), so the agent, ``state`` and ``report`` find the same file from anywhere."""
    path = cfg.storage.path
    if path.is_absolute():
        return cfg
    storage = cfg.storage.model_copy(update={"path": (folder / path).absolute()})
    return cfg.model_copy(update={"storage": storage})


def with_broker(cfg: Config, url: str) -> Config:
    """The configuration with ``mqtt.url`` replaced (``--broker``), validated like the file."""
    try:
        mqtt = type(cfg.mqtt).model_validate({**cfg.mqtt.model_dump(exclude_unset=True), "url": url})
    except ValidationError as exc:
        raise ConfigError(_sentence(exc.errors(include_url=False)[0]), key="--broker") from None
    return cfg.model_copy(update={"mqtt": mqtt})
