"""Whatever JSON object an introspection endpoint answers, it is judged without a crash, and accepted only
when it is a well-formed active answer for this server (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth.stages._audience import AudienceRule
from fastapps_auth.stages._introspection_answer import AnswerRules, MalformedAnswer

NOW = 1_800_000_000.0
ISSUER = "https://auth.example.com"
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner))
names = st.sampled_from(["active", "exp", "iss", "aud", "sub", "client_id", "scope", "token_type", "cnf", "x"])
answers = st.dictionaries(names, values | st.sampled_from([True, ISSUER, "api", NOW + 60, "read write"]))


def rules(*, check_only: bool = False) -> AnswerRules:
    return AnswerRules(
        issuer=ISSUER,
        audience=AudienceRule(frozenset({"api"})),
        required_scopes=(),
        ttl=60.0,
        negative_ttl=5.0,
        check_only=check_only,
    )


@given(answers)
def test_an_answer_is_accepted_only_when_well_formed_active_and_for_this_server(data: dict[str, Any]) -> None:
    try:
        answer = rules().judge("tok", data, NOW)
    except MalformedAnswer:
        return
    if answer.reason is not None:
        return
    at = answer.access_token
    assert at is not None
    assert data["active"] is True
    exp = data.get("exp")
    assert exp is None or (type(exp) in (int, float) and exp > NOW)
    assert data.get("iss") in (None, ISSUER)
    aud = data["aud"]
    assert aud == "api" or (type(aud) is list and "api" in aud)
    assert data.get("token_type") is None or data["token_type"].lower() != "refresh_token"
    assert at.client_id and at.claims is data
    assert NOW < answer.until <= NOW + 60


@given(answers)
def test_an_inactive_answer_is_never_accepted_in_either_mode(data: dict[str, Any]) -> None:
    if data.get("active") is True:
        data = {**data, "active": False}
    for check_only in (False, True):
        assert rules(check_only=check_only).judge("tok", data, NOW).reason == "inactive"
