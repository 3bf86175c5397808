"""Helpers behind the pytest fixtures, usable without pytest: a running dev issuer, minting, chains."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from fastapps_auth.chain import VerifierChain
from fastapps_auth.clock import Clock
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.dev_issuer.keystore import DEFAULT_ALGORITHMS, SigningKey, generate_key
from fastapps_auth.observer import Observer
from fastapps_auth.stage import Stage

TEST_AUDIENCE = "fastapps-auth-tests"


@functools.cache
def _seed_keys() -> tuple[SigningKey, ...]:
    # Key generation (RSA especially) is the slow part of starting an issuer: do it once per process.
    return tuple(generate_key(alg) for alg in DEFAULT_ALGORITHMS)


def start_issuer(
    *, audience: str | list[str] = TEST_AUDIENCE, clock: Clock | None = None, **kwargs: Any
) -> RunningIssuer:
    """A dev issuer on 127.0.0.1 (random port, keys in memory), already serving."""
    kwargs.setdefault("seed", _seed_keys())
    return RunningIssuer(audience=audience, clock=clock, **kwargs).start()


def tamper(token: str) -> str:
    """``token`` with one signature character changed: well formed, but the signature fails."""
    head, _, sig = token.rpartition(".")
    if not sig:
        raise ValueError("not a JWS compact token")
    i = len(sig) // 2
    return f"{head}.{sig[:i]}{'B' if sig[i] == 'A' else 'A'}{sig[i + 1 :]}"


class Minter:
    """The ``mint`` fixture: ``mint("alice", scopes=["read"])``, ``mint.expired()``, ``mint.not_yet_valid()``."""

    def __init__(self, issuer: RunningIssuer) -> None:
        self.issuer = issuer

    def __call__(self, subject: str = "user-1", **kwargs: Any) -> str:
        """A valid token; any ``DevIssuer.mint`` keyword (scopes, audience, claims, lifetime, alg, ...)."""
        return self.issuer.mint(subject, **kwargs)

    def expired(self, subject: str = "user-1", **kwargs: Any) -> str:
        """A token that expired ``ago`` (default 300) seconds ago."""
        return self.issuer.expired(subject, **kwargs)

    def not_yet_valid(self, subject: str = "user-1", **kwargs: Any) -> str:
        """A token whose ``nbf`` is ``starts_in`` (default 300) seconds from now."""
        return self.issuer.not_yet_valid(subject, **kwargs)

    def tampered(self, subject: str = "user-1", **kwargs: Any) -> str:
        """A valid token with a broken signature."""
        return tamper(self.issuer.mint(subject, **kwargs))


def jwt_stage(issuer: RunningIssuer, **options: Any) -> Stage[Any]:
    """The ``jwt`` stage pointed at ``issuer`` (discovery over HTTP); ``options`` override.

    Defaults for tests: ``require_typ="at+jwt"`` and ``min_refresh_interval=0`` (an unknown
    ``kid`` after ``rotate_keys`` refetches the JWKS at once).
    """
    from fastapps_auth.stages.jwt import JWTVerifier

    options.setdefault("issuer_url", issuer.url)
    options.setdefault("audience", issuer.audience)
    options.setdefault("algorithms", list(issuer.keys.algorithms))
    options.setdefault("require_typ", "at+jwt")
    # A rotation in a test must be seen at the next token, not a second later.
    options.setdefault("min_refresh_interval", 0.0)
    stage: Stage[Any] = JWTVerifier(**options)
    return stage


def issuer_chain(
    issuer: RunningIssuer,
    *stages: Stage[Any],
    observers: Sequence[Observer[Any]] = (),
    clock: Clock | None = None,
    **jwt_options: Any,
) -> VerifierChain:
    """A chain ``jwt → stages...`` trusting ``issuer``; nothing is fetched until the first token."""
    if clock is not None:
        jwt_options.setdefault("clock", clock)
    return VerifierChain(jwt_stage(issuer, **jwt_options), *stages, observers=observers, clock=clock)
