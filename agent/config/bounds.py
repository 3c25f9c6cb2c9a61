"""The bounds on a configuration file, checked before anything is constructed.

Loading is bounded so that a hostile or broken file is refused in milliseconds rather
than keeping ``plantfloor check`` or the agent busy (a "billion laughs" file, nine nested
aliases of nine, used to take over a minute and ~1 GB):

* a file larger than :data:`MAX_CONFIG_BYTES` (8 MiB) is refused before it is parsed;
* anchors and aliases are allowed (``<<: *defaults`` merge keys, a shared shift), but a
  document that, with every alias expanded, would hold more than :data:`MAX_CONFIG_NODES`
  (2,000,000) nodes, or that uses more than :data:`MAX_CONFIG_ALIASES` (10,000) aliases, or an
  alias inside the node it names (a recursive structure), is refused at the offending alias;
* collections nested deeper than :data:`MAX_CONFIG_DEPTH` (64) levels, counting what an
  alias brings along, are refused at the first node past the bound (50,000 nested ``[``
  would otherwise exhaust the loaders' recursion: a crash, not an error).

The bounds are checked on the YAML event stream before anything is constructed: each
anchor's expanded size is remembered once and an alias adds it, so nothing is expanded
and the cost is linear in the size of the file. The seed config (``config/kyushu.yaml``)
has about 230 nodes, a 500-line file about 3,000, and a plant with 500 production lines
about 20,000.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
)

from agent.contract.errors import ConfigError

__all__ = ["MAX_CONFIG_ALIASES", "MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH", "MAX_CONFIG_NODES",
           "check_expansion", "nesting_depth", "read_bounded"]

#: A configuration file larger than this (8 MiB) is refused before it is parsed; a gateway
#: polling 500 PLCs with 30 tags each has a config of about 1.5 MB.
MAX_CONFIG_BYTES = 8 << 20
#: A document that, with every YAML alias expanded, holds more nodes than this is refused
#: (500 PLCs with 30 tags each: about 200,000 nodes).
MAX_CONFIG_NODES = 2_000_000
#: A document with more YAML aliases (``*name``, including ``<<: *name``) than this is refused.
MAX_CONFIG_ALIASES = 10_000
#: Collections nested deeper than this are refused (a real configuration nests about 6 deep).
MAX_CONFIG_DEPTH = 64


def read_bounded(path: Path) -> bytes:
    """The file's bytes; a file larger than MAX_CONFIG_BYTES is refused without reading it all."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            # a pipe or a file still growing: read one byte past the bound to notice
            raw = b"" if size is not None and size > MAX_CONFIG_BYTES else f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the file ({exc.strerror})", file=str(path)) from exc
    if size is not None and size > MAX_CONFIG_BYTES:
        raise ConfigError(f"the file is {size:,} bytes, larger than the bound of {_BYTES_BOUND} "
                          "on a configuration file", file=str(path))
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the file is larger than the bound of {_BYTES_BOUND} on a configuration "
                          "file", file=str(path))
    return raw


_BYTES_BOUND = f"{MAX_CONFIG_BYTES:,} bytes ({MAX_CONFIG_BYTES / (1 << 20):g} MiB)"


class _Open:
    """A collection open on the event stream: where its expansion began, its anchor, and
    the key or index its next child sits at (to name the key in an error)."""

    __slots__ = ("anchor", "height", "index", "is_map", "key", "start", "want_key")

    def __init__(self, start: int, anchor: str | None, is_map: bool) -> None:
        self.start = start
        #: levels of collections from this one down (1: it holds no collection)
        self.height = 1
        self.anchor = anchor
        self.is_map = is_map
        self.want_key = True
        self.key: str | None = None
        self.index = 0

    def child_done(self, scalar: str | None) -> None:
        """A child node ended; ``scalar`` is its value when it was a scalar."""
        if not self.is_map:
            self.index += 1
        elif self.want_key:
            self.key = scalar
            self.want_key = False
        else:
            self.want_key = True

    def where(self) -> str | None:
        """The key or index of the child being read; None inside a key or under a complex key."""
        if not self.is_map:
            return str(self.index)
        return None if self.want_key else self.key


def check_expansion(yaml: YAML, raw: bytes, file: str) -> None:
    """Refuse a document that, with its aliases expanded, would exceed the node bounds.

    Counts on the event stream without constructing or expanding anything: every scalar
    and collection is one node, an anchored node's expanded size is remembered when it
    ends, and an alias adds that size. Linear in the file; a hostile file is refused at the
    alias that crosses the bound. A YAML syntax error ends the count silently: the loader
    that runs next reports it (it parses the whole document before constructing any of it).
    """
    sizes: dict[str, int] = {}
    #: levels of collections an anchored node holds (0 for a scalar)
    heights: dict[str, int] = {}
    stack: list[_Open] = []
    total = 0
    aliases = 0

    def refuse(event: NodeEvent, reason: str) -> ConfigError:
        where = [fr.where() for fr in stack]
        key = None if None in where else ".".join(w for w in where if w is not None)
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        return ConfigError(reason, file=file, line=line, key=key or None)

    try:
        for event in yaml.parse(raw):
            if isinstance(event, DocumentStartEvent):
                sizes.clear()  # anchors belong to their document
                heights.clear()
                continue
            if isinstance(event, CollectionEndEvent):
                done = stack.pop()
                if done.anchor is not None:
                    sizes[str(done.anchor)] = total - done.start
                    heights[str(done.anchor)] = done.height
                if stack:
                    stack[-1].height = max(stack[-1].height, done.height + 1)
                    stack[-1].child_done(None)
                continue
            if not isinstance(event, NodeEvent):
                continue  # stream and document markers
            if isinstance(event, AliasEvent):
                name = str(event.anchor)
                aliases += 1
                if any(fr.anchor == name for fr in stack):
                    raise refuse(event, f"alias *{name} sits inside the node it names, so it "
                                        "would expand without end")
                if aliases > MAX_CONFIG_ALIASES:
                    raise refuse(event, f"alias *{name} goes past the bound of "
                                        f"{MAX_CONFIG_ALIASES:,} YAML aliases in a configuration")
                if len(stack) + heights.get(name, 0) > MAX_CONFIG_DEPTH:
                    raise refuse(event, f"alias *{name} nests collections deeper than the bound "
                                        f"of {MAX_CONFIG_DEPTH} levels in a configuration")
                if stack:
                    stack[-1].height = max(stack[-1].height, heights.get(name, 0) + 1)
                total += sizes.get(name, 1)  # an undefined alias is left to the loader to report
                if total > MAX_CONFIG_NODES:
                    raise refuse(event, f"alias *{name} would expand the document past the bound "
                                        f"of {MAX_CONFIG_NODES:,} YAML nodes in a configuration "
                                        "(aliases nested or repeated too much)")
                if stack:
                    stack[-1].child_done(None)
                continue
            total += 1
            if total > MAX_CONFIG_NODES:
                raise refuse(event, f"the document goes past the bound of {MAX_CONFIG_NODES:,} "
                                    "YAML nodes in a configuration")
            anchor = None if event.anchor is None else str(event.anchor)
            if isinstance(event, CollectionStartEvent):
                if len(stack) >= MAX_CONFIG_DEPTH:
                    raise refuse(event, "collections nest deeper than the bound of "
                                        f"{MAX_CONFIG_DEPTH} levels in a configuration")
                stack.append(_Open(total - 1, anchor, isinstance(event, MappingStartEvent)))
                continue
            if anchor is not None:
                sizes[anchor] = 1
                heights[anchor] = 0
            if stack:
                stack[-1].child_done(str(event.value) if isinstance(event, ScalarEvent) else None)
    except YAMLError:
        return




def nesting_depth(doc: object) -> int:
    """Levels of collections in a parsed document (0 for a scalar), without recursion."""
    deepest = 0
    todo: list[tuple[object, int]] = [(doc, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict):
            children: list[object] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in children)
    return deepest
