"""Strict JSON for what an attacker writes: JWT and DPoP proof headers and payloads, fetched documents.

One parser for every place that reads security-relevant JSON, so they all refuse the same things:
invalid UTF-8, non-JSON literals (``NaN``, ``Infinity``), duplicate member names (when asked; at
any depth), nesting too deep to parse, lone UTF-16 surrogates (I-JSON, RFC 7493 §2.1), and a
document that is not an object. Every refusal is a ``Malformed``. The decoders are built once:
``json.loads`` with these arguments would build one per call.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["Malformed", "json_object", "reject_constant"]


class Malformed(ValueError):
    """The input is not what a strict parser accepts (strict JSON here; a compact JWS in ``_jwt_compact``)."""


def reject_constant(name: str) -> Any:
    """``parse_constant`` for ``json``: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259 §6)."""
    raise Malformed(f"non-JSON literal {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Malformed("duplicate member name")
    return obj


_STRICT = json.JSONDecoder(parse_constant=reject_constant, object_pairs_hook=_no_duplicates)
_PLAIN = json.JSONDecoder(parse_constant=reject_constant)
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_object(raw: bytes, *, no_duplicates: bool = True) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes; anything else (arrays, numbers, deep nesting) is ``Malformed``.

    ``no_duplicates`` rejects repeated member names (a JWT payload with duplicates may keep the
    last value, which RFC 7519 §4 allows; a JOSE header or a DPoP proof may not).
    """
    try:
        text = raw.decode("utf-8")
        decoder = _STRICT if no_duplicates else _PLAIN
        try:  # compact JSON, as every issuer writes it: no whitespace to skip around the object
            obj, end = decoder.raw_decode(text)
        except json.JSONDecodeError:
            end = -1
        if end != len(text):  # whitespace around the object, or garbage: the full decode decides
            obj = decoder.decode(text)
    except Malformed:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Malformed("invalid JSON") from None
    if type(obj) is not dict:
        raise Malformed("not a JSON object")
    if ("\\ud" in text or "\\uD" in text) and _lone_surrogate(obj):
        raise Malformed("a lone UTF-16 surrogate")
    return obj


def _lone_surrogate(obj: dict[str, Any]) -> bool:
    """Whether a name or string in ``obj`` holds a UTF-16 surrogate that is not half of a pair.

    JSON lets ``"\\ud800"`` stand alone; I-JSON (RFC 7493) does not, and no encoding can write it:
    every consumer of such a claim (a database driver, a log, a terminal) fails or reads it its own way.
    Escaped pairs were already joined into one character by the parser, so whatever surrogate is
    left is a lone one. Only called when the text has a surrogate escape at all; iterative, so any
    depth the parser accepted is walked.
    """
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if _SURROGATE.search(item):
                return True
        elif type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False
