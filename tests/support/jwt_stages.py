"""A ``jwt`` stage against a local JWKS server, and one decision through a chain: the JWT tests' shared steps."""

from __future__ import annotations

from typing import Any

from fastapps_auth import Decision, ManualClock, VerifierChain
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwks_server import JWKSServer


def remote(clock: ManualClock, srv: JWKSServer, **options: Any) -> JWTVerifier:
    """A ``jwt`` stage fetching ``srv``'s /jwks.json, with short timeouts (override any option)."""
    options.setdefault("jwks_uri", srv.url + "/jwks.json")
    options.setdefault("timeout", 3.0)
    options.setdefault("http_timeout", 2.0)
    return JWTVerifier(clock=clock, **options)


async def evaluate(st: JWTVerifier, token: str) -> Decision:
    """``token``'s decision by a chain of ``st`` alone, on ``st``'s clock."""
    return await VerifierChain(st, clock=st.clock).evaluate(token)
