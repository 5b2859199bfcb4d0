"""A strict YAML reader for policy and catalog files, keeping the position of every node.

PyYAML's safe loader still accepts things that hurt in a policy: anchors and aliases (an alias
bomb of a few hundred bytes expands to half a million nodes), duplicate keys (the last one wins
silently), several documents in one file, tags, and YAML 1.1's ``no`` → ``False``. This reader
builds values from the parser's *events*, so nothing is ever expanded, and resolves plain
scalars with the YAML 1.2 core schema: only ``true``/``false`` are booleans, ``1:30`` and
``2024-01-01`` stay strings, and an unquoted ``yes``/``no``/``on``/``off`` is reported (FG107)
instead of guessed. Every problem is collected, with its 1-based line and column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from monitor.policy.diagnostics import Diagnostic

MAX_BYTES = 1 << 20  # 1 MiB: a policy is text a person writes and reviews
MAX_DEPTH = 64

Path_ = tuple[Any, ...]
Pos = tuple[int, int]

_INT = re.compile(r"[-+]?[0-9]+\Z")
_OCT = re.compile(r"0o[0-7]+\Z")
_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)\Z")
_NAN = re.compile(r"\.(nan|NaN|NAN)\Z")
_NULL = {"", "~", "null", "Null", "NULL"}
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_KIND = {int: "a number", float: "a number", bool: "true/false", type(None): "null (empty)"}
AMBIGUOUS = {"yes": True, "no": False, "on": True, "off": False}


def resolve_plain(text: str) -> Any:
    """The YAML 1.2 core-schema value of an unquoted scalar (``yes``/``no`` stay strings here)."""
    if text in _NULL:
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text)
    if _OCT.match(text):
        return int(text[2:], 8)
    if _HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.match(text):
        return math.nan
    return text


@dataclass
class Source:
    """A parsed file: its values, and the position of every value and mapping key by path.

    A path is the tuple of keys and list indices from the root, e.g. ``("rules", 0, "id")``.
    """

    file: str
    data: Any = None
    values: dict[Path_, Pos] = field(default_factory=dict)
    keys: dict[Path_, Pos] = field(default_factory=dict)
    text: str = ""

    def pos(self, path: Path_, *, key: bool = False) -> Pos:
        """Position of ``path`` (its key when ``key``), else of its nearest recorded ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        p = tuple(path)
        while p and p not in self.values:
            p = p[:-1]
        return self.values.get(p, (1, 1))

    def diag(self, code: str, message: str, path: Path_, *, key: bool = False) -> Diagnostic:
        line, col = self.pos(path, key=key)
        return Diagnostic(code, message, self.file, line, col)


class _Builder:
    """Turns the parser's event stream into plain values, recording positions and problems."""

    def __init__(self, events: Iterator[yaml.Event], src: Source, diags: list[Diagnostic]):
        self.events = events
        self.src = src
        self.diags = diags

    def _err(self, code: str, msg: str, mark: Any) -> None:
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        self.diags.append(Diagnostic(code, msg, self.src.file, line, col))

    def document(self) -> Any:
        ev = next(self.events)  # StreamStartEvent
        ev = next(self.events)
        if isinstance(ev, yaml.StreamEndEvent):
            return None
        value = self.node(next(self.events), (), 0)
        next(self.events)  # DocumentEndEvent
        ev = next(self.events)
        if isinstance(ev, yaml.DocumentStartEvent):
            self._err(
                "FG103",
                "this file holds more than one YAML document ('---'); keep one policy per file",
                ev.start_mark,
            )
        return value

    def node(self, ev: Any, path: Path_, depth: int) -> Any:
        mark = ev.start_mark
        self.src.values[path] = (mark.line + 1, mark.column + 1)
        if depth > MAX_DEPTH:
            self._err("FG111", f"values are nested more than {MAX_DEPTH} levels deep", mark)
            raise _Abort
        if isinstance(ev, yaml.AliasEvent):
            self._err(
                "FG102",
                f"alias '*{ev.anchor}' is not allowed: write the value out "
                "in full (anchors and aliases can hide or multiply content)",
                mark,
            )
            return None
        if getattr(ev, "anchor", None) is not None:
            self._err(
                "FG102",
                f"anchor '&{ev.anchor}' is not allowed: write values out in "
                "full (anchors and aliases can hide or multiply content)",
                mark,
            )
        tag = getattr(ev, "tag", None)
        if tag is not None and tag != "!":
            tag = tag.replace("tag:yaml.org,2002:", "!!")
            self._err(
                "FG106",
                f"YAML tag '{tag}' is not allowed: policies hold plain "
                "text, numbers, lists and mappings only",
                mark,
            )
        if isinstance(ev, yaml.ScalarEvent):
            return self.scalar(ev)
        if isinstance(ev, yaml.SequenceStartEvent):
            items: list[Any] = []
            for ev2 in self.events:
                if isinstance(ev2, yaml.SequenceEndEvent):
                    return items
                items.append(self.node(ev2, (*path, len(items)), depth + 1))
        if isinstance(ev, yaml.MappingStartEvent):
            return self.mapping(path, depth)
        raise _Abort  # pragma: no cover - the parser guarantees one of the above

    def scalar(self, ev: yaml.ScalarEvent) -> Any:
        if ev.style is not None:  # quoted or block scalar: always a string
            return ev.value
        if ev.value.lower() in AMBIGUOUS:
            self._err(
                "FG107",
                f"'{ev.value}' is read as true/false by some YAML readers and "
                "as text by others: write true or false, or put it in quotes",
                ev.start_mark,
            )
            return AMBIGUOUS[ev.value.lower()]
        return resolve_plain(ev.value)

    def mapping(self, path: Path_, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kev in self.events:
            if isinstance(kev, yaml.MappingEndEvent):
                return out
            kmark = kev.start_mark
            if isinstance(kev, yaml.ScalarEvent):
                ambiguous = kev.style is None and kev.value.lower() in AMBIGUOUS
                key = kev.value if ambiguous else self.scalar(kev)
                if ambiguous:
                    self._err(
                        "FG107",
                        f"key '{kev.value}' is read as true/false by some YAML "
                        "readers: put it in quotes",
                        kmark,
                    )
                if kev.tag is not None and kev.tag != "!":
                    self._err("FG106", f"YAML tag '{kev.tag}' is not allowed", kmark)
            else:  # a list or mapping used as a key
                self.node(kev, (*path, "<key>"), depth + 1)
                self._err("FG105", "a key must be a plain name, not a list or mapping", kmark)
                key = None
            if not isinstance(key, str):
                if key is not None or isinstance(kev, yaml.ScalarEvent):
                    kind = _KIND.get(type(key), type(key).__name__)
                    self._err(
                        "FG105",
                        f"key {kev.value!r} is read as {kind}, not text: put it in quotes",
                        kmark,
                    )
                key = str(getattr(kev, "value", key))
            vev = next(self.events)
            if key in out:
                self._err(
                    "FG104",
                    f"key '{key}' appears twice in the same mapping; "
                    "the second one would silently win",
                    kmark,
                )
                self.node(vev, (*path, "<dup>"), depth + 1)
                continue
            self.src.keys[(*path, key)] = (kmark.line + 1, kmark.column + 1)
            out[key] = self.node(vev, (*path, key), depth + 1)
        raise _Abort  # pragma: no cover


class _Abort(Exception):
    pass


def parse_text(text: str, file: str) -> tuple[Source, list[Diagnostic]]:
    """Parse YAML ``text``; returns the :class:`Source` and every YAML-level problem found."""
    src = Source(file=file, text=text)
    diags: list[Diagnostic] = []
    try:
        src.data = _Builder(yaml.parse(text, Loader=yaml.SafeLoader), src, diags).document()
    except yaml.MarkedYAMLError as exc:
        mark, problem = exc.problem_mark or exc.context_mark, exc.problem or "not well formed"
        if exc.context_mark is not None and mark is not None and mark.index >= len(text) - 1:
            # the file ended inside something: point at where that something starts
            what = str(exc.context).removeprefix("while parsing ")
            problem = f"the {what} that starts here is never closed ({problem})"
            mark = exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        diags.append(Diagnostic("FG101", f"YAML syntax error: {problem}", file, line, col))
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        diags.append(
            Diagnostic(
                "FG110",
                f"control character U+{char:04X} is not allowed in YAML text",
                file,
                line,
                col,
            )
        )
    except (_Abort, StopIteration):
        pass
    return src, diags


def parse_bytes(
    raw: bytes, file: str, *, max_bytes: int = MAX_BYTES
) -> tuple[Source, list[Diagnostic]]:
    """Check size and encoding of ``raw``, then :func:`parse_text` it."""
    if len(raw) > max_bytes:
        return Source(file), [
            Diagnostic(
                "FG108", f"file is {len(raw)} bytes; the limit is {max_bytes} bytes", file, 1, 1
            )
        ]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = raw[: exc.start]
        line = head.count(b"\n") + 1
        col = exc.start - (head.rfind(b"\n") + 1) + 1
        return Source(file), [Diagnostic("FG110", "the file is not UTF-8 text", file, line, col)]
    if text.startswith("\ufeff"):
        text = text[1:]
    return parse_text(text, file)
