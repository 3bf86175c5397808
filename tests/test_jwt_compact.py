"""The compact-JWS splitter and base64url decoder: exactly canonical unpadded base64url, nothing else."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth.stages._jwt_compact import Malformed, decode, split

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=300))
def test_round_trip(h: bytes, p: bytes, s: bytes) -> None:
    token = f"{b64(h)}.{b64(p)}.{b64(s)}"
    h64, p64, s64, signing_input = split(token)
    assert (decode(h64), decode(p64), decode(s64)) == (h, p, s)
    assert signing_input == f"{b64(h)}.{b64(p)}".encode()


def oracle(part: str) -> bytes | None:
    """What a strict decoder must return: the bytes of a canonical unpadded base64url string, else None."""
    if any(c not in B64URL for c in part) or len(part) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    return raw if b64(raw) == part else None


@given(st.text(alphabet=B64URL + "+/=!* \n\t\x00é", max_size=80))
def test_decode_accepts_exactly_canonical_base64url(part: str) -> None:
    try:
        parts = split(f"e30.{part}.AA")
        got: bytes | None = decode(parts[1])
    except Malformed:
        got = None
    assert got == oracle(part)


@pytest.mark.parametrize("part", ["ab+c", "ab/c", "abc=", "AB==", "A", "AB", "ABF", "a b", "ab\nc", "ab!c"])
def test_foreign_padded_or_non_canonical_parts(part: str) -> None:
    with pytest.raises(Malformed):
        decode(split(f"e30.{part}.AA")[1])


@pytest.mark.parametrize("token", ["a.b", "a.b.c.d", "é.e30.AA", "e30.e30", "\udcff.e30.AA"])
def test_split_rejects(token: str) -> None:
    with pytest.raises(Malformed):
        split(token)
