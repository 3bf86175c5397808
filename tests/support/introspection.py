"""The introspection stage against the real dev issuer (opaque tokens, RFC 7662 with client authentication)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapps_auth import Decision, VerifierChain
from fastapps_auth.clock import ManualClock
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.stages.introspection import IntrospectionStage
from fastapps_auth.testing.issuer import start_issuer


@contextmanager
def opaque_issuer(**options: Any) -> Iterator[RunningIssuer]:
    """A dev issuer on 127.0.0.1 issuing opaque tokens, serving for the block."""
    issuer = start_issuer(opaque=True, **options)
    try:
        yield issuer
    finally:
        issuer.stop()


#: The client secret of ``stage_at``'s stages: a test may look for it where it must not be.
SECRET = "s3cr3t-never-shown"

#: A well-formed active answer for ``stage_at``'s stages (audience ``api``).
GOOD: dict[str, Any] = {"active": True, "sub": "alice", "client_id": "app", "aud": "api", "scope": "read"}


def stage_at(url: str, **options: Any) -> IntrospectionStage:
    """The introspection stage for the endpoint ``url`` (client ``rs``, ``SECRET``, audience ``api``)."""
    options.setdefault("audience", "api")
    options.setdefault("client_id", "rs")
    return IntrospectionStage(introspection_url=url, client_secret=SECRET, **options)


def now_clock() -> ManualClock:
    """A manual clock at the real time: the dev issuer's tokens are valid on it until it is advanced."""
    return ManualClock(time.time())


def stage(issuer: RunningIssuer, *, clock: ManualClock | None = None, **options: Any) -> IntrospectionStage:
    """The introspection stage for ``issuer`` (discovery, its client, its audience); ``options`` override."""
    options.setdefault("issuer_url", issuer.url)
    options.setdefault("client_id", issuer.client.client_id)
    options.setdefault("client_secret", issuer.client.secret)
    options.setdefault("audience", issuer.audience)
    return IntrospectionStage(clock=clock, **options)


def requests(st: IntrospectionStage) -> int:
    """Introspection requests the stage has sent."""
    return int(st.stats()["introspection_requests"])


async def evaluate(st: IntrospectionStage, token: str, clock: ManualClock | None = None) -> Decision:
    return await VerifierChain(st, clock=clock).evaluate(token)
