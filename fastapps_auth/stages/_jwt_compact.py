"""Strict parsing of a compact JWS (``header.payload.signature``) before any key is touched.

Every deviation is a ``Malformed``: non-ASCII, a part count other than three,
non-canonical or non-alphabet base64url, invalid UTF-8, non-JSON literals
(``NaN``, ``Infinity``), duplicate member names, nesting too deep to parse, or a
header/payload that is not a JSON object.
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any

_a2b = binascii.a2b_base64
#: base64url to standard base64 in one pass; '+', '/' and '=' (not base64url-unpadded) become '!',
#: which strict decoding rejects like every other foreign byte.
_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_PAD = (b"", b"===", b"==", b"=")
_STD_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = [_STD_ALPHABET.find(bytes([i])) & 63 for i in range(256)]
#: Mask of the bits of the last character that carry no data, by length mod 4.
_UNUSED_BITS = (0, 0, 0b1111, 0b11)


class Malformed(ValueError):
    """The token is not a well-formed compact JWS with JSON-object header and payload."""


def split(token: str) -> tuple[bytes, bytes, bytes, bytes]:
    """``(header, payload, signature, signing input)`` of a compact JWS.

    The three parts come mapped to the standard base64 alphabet, ready for ``decode``; the
    signing input is the first two parts as sent. JWE (five parts) and anything else is
    ``Malformed``.
    """
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise Malformed("non-ASCII token") from None
    parts = raw.translate(_TO_STD).split(b".")
    if len(parts) != 3:
        raise Malformed("not a compact JWS")
    header, payload, signature = parts
    return header, payload, signature, raw[: len(header) + 1 + len(payload)]


def decode(part: bytes) -> bytes:
    """Decode a part from ``split``, accepting only canonical unpadded base64url."""
    rem = len(part) % 4
    try:
        raw = _a2b(part + _PAD[rem], strict_mode=True)
    except (binascii.Error, ValueError):
        raise Malformed("invalid base64url") from None
    # Canonical form only: unused trailing bits set would decode to the same bytes.
    if rem and _B64_VALUE[part[-1]] & _UNUSED_BITS[rem]:
        raise Malformed("non-canonical base64url")
    return raw


def _reject_constant(name: str) -> Any:
    raise Malformed(f"non-JSON literal {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Malformed("duplicate member name")
    return obj


#: The header's decoder refuses duplicate member names at any depth (``object_pairs_hook``); both refuse
#: ``NaN``/``Infinity`` (``parse_constant``). Built once: ``json.loads`` with these arguments would build
#: a decoder per call.
_STRICT = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
_PLAIN = json.JSONDecoder(parse_constant=_reject_constant)


def json_object(raw: bytes, *, no_duplicates: bool = True) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes; anything else (arrays, numbers, deep nesting) is ``Malformed``.

    ``no_duplicates`` rejects repeated member names (used for the protected header; a payload with
    duplicates keeps the last value, which RFC 7519 §4 allows).
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


_SURROGATE = re.compile("[\ud800-\udfff]")
