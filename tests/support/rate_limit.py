"""Rate-limit stage helpers shared by its tests: a token with claims, a verification of it, admissions counted."""

from __future__ import annotations

from typing import Any

from fastapps_auth import AccessToken, Rejected, RequestInfo
from fastapps_auth.clock import ManualClock
from fastapps_auth.stage import Verification
from fastapps_auth.stages.rate_limit import RateLimitStage


def token(
    subject: str = "alice", *, client_id: str = "app", scopes: list[str] | None = None, **claims: Any
) -> AccessToken:
    return AccessToken(
        token="t",
        client_id=client_id,
        scopes=scopes or [],
        subject=subject,
        claims={"sub": subject, **claims},
        expires_at=None,
    )


def verification(clock: ManualClock, at: AccessToken | None = None, request: RequestInfo | None = None) -> Verification:
    v = Verification("t", now=clock.time(), clock=clock, request=request)
    v.access_token = at if at is not None else token()
    return v


async def admitted(stage: RateLimitStage, clock: ManualClock, n: int, at: AccessToken | None = None) -> int:
    """How many of ``n`` back-to-back requests pass."""
    ok = 0
    for _ in range(n):
        try:
            await stage(verification(clock, at))
            ok += 1
        except Rejected:
            pass
    return ok
