"""How an audit event becomes text: JSON (orjson, the stdlib where orjson refuses), logfmt or console.

A renderer is a pair: the event as text (a log message) and as one UTF-8 line ending in a
newline (what a stream sink buffers). Both never lose an event: what orjson refuses (a lone
surrogate in a tool name a client sent, an integer beyond 64 bits, nesting deeper than 254
levels) is rendered by the standard library with every non-ASCII character escaped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from typing import Any, Literal, NamedTuple

import orjson
import structlog

EventDict = MutableMapping[str, Any]
RendererName = Literal["json", "logfmt", "console"]


class Renderer(NamedTuple):
    """An event as text, and as one encoded line with its newline."""

    text: Callable[[EventDict], str]
    line: Callable[[EventDict], bytes]


def _default(value: object) -> str:
    return str(value)


_stdlib_encode = json.JSONEncoder(default=_default, separators=(",", ":")).encode


def ascii_json(event: EventDict) -> str:
    """The stdlib's rendering, every non-ASCII character escaped; claims too deep even for it give way."""
    try:
        return _stdlib_encode(event)
    except (ValueError, RecursionError):
        return _stdlib_encode({**event, "claims": "<not renderable>"})


def json_text(event: EventDict) -> str:
    """The event as one JSON object (orjson; the stdlib for what orjson refuses)."""
    try:
        return orjson.dumps(event, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return ascii_json(event)


def json_line(event: EventDict) -> bytes:
    """``json_text`` as one UTF-8 line (orjson writes bytes: no decode and re-encode)."""
    try:
        return orjson.dumps(event, default=_default, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return (ascii_json(event) + "\n").encode()


def _from_processor(render: Callable[[Any, str, EventDict], str]) -> Renderer:
    """A structlog renderer (a processor returning text) as a ``Renderer``."""

    def text(event: EventDict) -> str:
        return render(None, "info", event)

    def line(event: EventDict) -> bytes:
        return (render(None, "info", event) + "\n").encode("utf-8", "backslashreplace")

    return Renderer(text, line)


def renderer(name: RendererName) -> Renderer:
    """The renderer called ``name``: ours for JSON, structlog's for logfmt and console."""
    if name == "json":
        return Renderer(json_text, json_line)
    if name == "logfmt":
        return _from_processor(
            structlog.processors.KeyValueRenderer(key_order=["event", "timestamp", "outcome"], drop_missing=True)
        )
    return _from_processor(structlog.dev.ConsoleRenderer(colors=False))
