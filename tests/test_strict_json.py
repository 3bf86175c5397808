"""The one strict JSON parser that JWT headers and payloads, DPoP proofs and fetched documents share."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth.backends.dpop import proof as dpop_proof
from fastapps_auth.stages import _jwt_compact
from fastapps_auth.strict_json import Malformed, json_object


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":1,"a":2}',
        b'{"a":{"b":1,"b":1}}',  # at any depth
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        rb'{"a":"\ud800"}',
        rb'{"\udc00":1}',  # in a member name too
        rb'{"a":["x",{"b":"\udfff"}]}',
        b"[1]",
        b'"x"',
        b"\xff{}",
        b"{" * 100_000,
        b'{"a":1} x',
    ],
)
def test_refused(raw: bytes) -> None:
    with pytest.raises(Malformed):
        json_object(raw)


def test_duplicates_may_be_allowed_and_a_pair_is_not_lone() -> None:
    assert json_object(b'{"a":1,"a":2}', no_duplicates=False) == {"a": 2}
    assert json_object(rb' {"a":"\ud83d\ude00"} ') == {"a": "\U0001f600"}


def test_jwt_and_dpop_use_this_parser() -> None:
    assert _jwt_compact.json_object is json_object
    assert _jwt_compact.Malformed is Malformed
    with pytest.raises(dpop_proof.ProofError, match="well-formed"):  # DPoP's refusal of what strict_json refuses
        dpop_proof.strict_object(rb'{"a":"\ud800"}')


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=8))
def test_any_object_json_writes_round_trips(obj: dict[str, object]) -> None:
    lone = any(0xD800 <= ord(c) <= 0xDFFF for k, v in obj.items() for c in k + (v if isinstance(v, str) else ""))
    raw = json.dumps(obj).encode()
    if lone:
        with pytest.raises(Malformed):
            json_object(raw)
    else:
        assert json_object(raw) == obj
