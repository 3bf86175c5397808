"""Strict parsing of a compact JWS (``header.payload.signature``) before any key is touched.

Every deviation is a ``Malformed``: non-ASCII, a part count other than three,
non-canonical or non-alphabet base64url; the JSON of header and payload is
``fastapps_auth.strict_json``'s (re-exported here with its ``Malformed``), which the
DPoP proof parser shares.
"""

from __future__ import annotations

import binascii

from fastapps_auth.strict_json import Malformed, json_object

__all__ = ["Malformed", "decode", "json_object", "split"]

_a2b = binascii.a2b_base64
#: base64url to standard base64 in one pass; '+', '/' and '=' (not base64url-unpadded) become '!',
#: which strict decoding rejects like every other foreign byte.
_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_PAD = (b"", b"===", b"==", b"=")
_STD_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = [_STD_ALPHABET.find(bytes([i])) & 63 for i in range(256)]
#: Mask of the bits of the last character that carry no data, by length mod 4.
_UNUSED_BITS = (0, 0, 0b1111, 0b11)


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
