"""VerifierChain and AnyOf: stages composed into one MCP ``TokenVerifier``.

A chain runs its stages in order and stops at the first ``Rejected``. It is a
stage itself, so chains nest; ``AnyOf`` tries alternatives (several issuers).
``verify_token`` never raises: every failure becomes a ``Decision``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from time import perf_counter
from types import TracebackType
from typing import Any, ClassVar

from mcp.server.auth.provider import AccessToken

from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.component import Component, ComponentOptions
from fastapps_auth.decision import Decision, decide
from fastapps_auth.errors import ConfigError, Rejected
from fastapps_auth.observer import Observer
from fastapps_auth.request import RequestInfo, current_request
from fastapps_auth.runner import closed_refusal, run_stage, run_stages, transient_refusal
from fastapps_auth.stage import Stage, StageOptions, Verification

__all__ = ["MAX_TOKEN_CHARS", "AnyOf", "VerifierChain", "authenticates", "leaves", "run_stage", "run_stages"]

logger = logging.getLogger("fastapps_auth")

#: Tokens longer than this are rejected before any stage sees them (stages may set lower limits).
MAX_TOKEN_CHARS = 64 * 1024


async def _close(component: Component[Any]) -> None:
    try:
        await component.aclose()  # inside a coroutine: an ``aclose`` that is not one fails alone
    finally:
        component.closed = True  # asked to close, even by an ``aclose`` that forgot to say so: never used again


async def _close_all(components: Sequence[Component[Any]]) -> None:
    """Close every component concurrently; a failure is logged and the rest still close."""
    results = await asyncio.gather(*(_close(c) for c in components), return_exceptions=True)
    for component, result in zip(components, results, strict=True):
        if isinstance(result, BaseException):
            logger.warning("closing %r failed (%s)", component.name, type(result).__name__)


async def _start(component: Component[Any]) -> None:
    await component.start()  # inside a coroutine: a ``start`` that is not one fails alone


async def _start_all(components: Sequence[Component[Any]]) -> None:
    """Start every component concurrently; a service that cannot be reached is one warning, not an error.

    The component opens it on first use, and ``fastapps-auth check --connect`` is where it fails.
    A ``ConfigError`` still raises.
    """
    results = await asyncio.gather(*(_start(c) for c in components), return_exceptions=True)
    for component, result in zip(components, results, strict=True):
        if isinstance(result, ConfigError):
            raise result
        if isinstance(result, KeyboardInterrupt | SystemExit):
            raise result
        if isinstance(result, BaseException):
            logger.warning(
                "starting %r failed (%s: %s); it will try again on first use",
                component.name,
                type(result).__name__,
                str(result)[:300],
            )


def leaves(component: Component[Any]) -> Iterator[Component[Any]]:
    """Every component inside ``component``, depth first: the stages of chains and AnyOfs, then observers.

    The composites themselves are not included; a component that is not a composite is its only leaf.
    """
    if isinstance(component, VerifierChain):
        for child in (*component.stages, *component.observers):
            yield from leaves(child)
    elif isinstance(component, AnyOf):
        for alt in component.alternatives:
            yield from leaves(alt)
    else:
        yield component


def authenticates(stage: Stage[Any]) -> bool:
    """True if ``stage`` passing means the token was authenticated.

    A chain does when one of its stages does (all of them passed); an AnyOf only when every
    alternative does, since any one of them passing is enough for it to pass.
    """
    if isinstance(stage, VerifierChain):
        return any(authenticates(s) for s in stage.stages)
    if isinstance(stage, AnyOf):
        return all(authenticates(a) for a in stage.alternatives)
    return stage.authenticates


def _refuse_nested_observers(stage: Stage[Any]) -> None:
    """Observers run once per decision, in the outermost chain: a nested chain's would never run."""
    if isinstance(stage, VerifierChain) and stage.observers:
        names = ", ".join(o.name for o in stage.observers)
        raise TypeError(
            f"the nested chain {stage.name!r} has observers ({names}) that would never run: "
            "give them to the outermost chain"
        )


def _refuse_shadowed_authentication(composite: Stage[Any]) -> None:
    """A composite in shadow mode may not hold an authenticating stage (its refusal would be shadowed too)."""
    if composite.enforce:
        return
    found = next((c for c in leaves(composite) if isinstance(c, Stage) and c.authenticates), None)
    if found is not None:
        raise ConfigError(
            f"cannot run in shadow mode: it holds {found.name!r}, which authenticates",
            stage=composite.name,
            key="enforce",
        )


class ChainOptions(StageOptions):
    """A chain's own options (its name, and ``enforce`` when nested; its stages are given directly)."""


class VerifierChain(Stage[ChainOptions]):
    """Stages in order; the first ``Rejected`` stops the chain. Satisfies MCP's ``TokenVerifier``."""

    plugin_name: ClassVar[str] = "chain"
    options_model: ClassVar[type[ComponentOptions]] = ChainOptions
    composite: ClassVar[bool] = True

    def __init__(
        self,
        *stages: Stage[Any],
        observers: Sequence[Observer[Any]] = (),
        clock: Clock | None = None,
        name: str | None = None,
        enforce: bool = True,
    ) -> None:
        super().__init__(clock=clock, name=name or "chain", enforce=enforce)
        for s in stages:
            if not isinstance(s, Stage):
                raise TypeError(f"VerifierChain takes stages; got {type(s).__name__} (observers go in observers=)")
            _refuse_nested_observers(s)
        for o in observers:
            if not isinstance(o, Observer):
                raise TypeError(f"observers must be Observer instances; got {type(o).__name__}")
        self.stages: tuple[Stage[Any], ...] = stages
        self.observers: tuple[Observer[Any], ...] = tuple(observers)
        self.clock = clock or SYSTEM_CLOCK
        _refuse_shadowed_authentication(self)

    # -- the stage protocol (when nested) ------------------------------------------------

    async def __call__(self, v: Verification) -> None:
        await run_stages(self.stages, v)

    # -- the public API ---------------------------------------------------------------------

    async def evaluate(self, token: str, *, request: RequestInfo | None = None) -> Decision:
        """Verify ``token`` and return the full ``Decision`` (with trace). Never raises.

        A closed chain refuses (503 ``closed``) without calling any stage or observer.
        """
        started = self.clock.time()
        t0 = perf_counter()
        raw = token if isinstance(token, str) else ""
        v = Verification(raw, now=started, clock=self.clock, request=request or current_request.get())
        rejection: Rejected | None = None
        try:
            if self.closed:
                raise closed_refusal(self)
            if not raw:
                raise Rejected("missing_token", "no bearer token was presented")
            if len(raw) > MAX_TOKEN_CHARS:
                raise Rejected("token_too_large", "the token is too large")
            await run_stages(self.stages, v)
            if v.access_token is None:
                raise Rejected("unauthenticated", "no stage authenticated the token")
        except Rejected as r:
            rejection = r
        except Exception as exc:  # a bug in a composite; still a decision, never a crash
            logger.error("verification failed unexpectedly (%s)", type(exc).__name__, exc_info=True)
            rejection = transient_refusal("internal_error", "the authorization service failed", self, self.retry_after)
        decision = decide(
            rejection,
            access_token=v.access_token,
            trace=tuple(v.trace),
            failed_open=tuple(v.failed_open),
            shadowed=tuple(v.shadowed),
            rate_limit=v.rate_limit,
            fingerprint=v.digest[:6].hex() if raw else "",
            request=v.request,
            started_at=started,
            duration=perf_counter() - t0,
        )
        self.notify(decision)
        return decision

    def notify(self, decision: Decision) -> None:
        """Give ``decision`` to every open observer; one that raises is logged and the decision stands.

        ``evaluate`` calls it for every decision; a host calls it for a decision of its own about a
        request (a refusal after the chain allowed it), so the observers see that one too.
        """
        for observer in self.observers:
            if observer.closed:
                continue
            try:
                observer(decision)
            except Exception:
                logger.exception("observer %r failed; the decision stands", observer.name)

    async def verify_token(self, token: str) -> AccessToken | None:
        """MCP ``TokenVerifier``: the ``AccessToken`` if allowed, else ``None``. Never raises."""
        decision = await self.evaluate(token)
        return decision.access_token if decision.allowed else None

    # -- lifecycle ----------------------------------------------------------------------------

    def _components(self) -> list[Component[Any]]:
        return [*self.stages, *self.observers]

    def bind_resource(self, resource_url: str) -> None:
        """Tell every stage (nested ones too) the resource URL this chain protects (RFC 8707)."""
        for stage in self.stages:
            stage.bind_resource(resource_url)

    async def start(self) -> None:
        """Open every stage's resources now (pools, key sets) instead of on first use.

        Never raises because a service is unreachable (each such component is one warning and
        tries again on first use); a ``ConfigError`` still raises.
        """
        await _start_all(self._components())

    async def aclose(self) -> None:
        """Close every stage and observer; failures are logged, the rest still close. Then refuse (503)."""
        if self.closed:
            return
        self.closed = True
        await _close_all(self._components())

    async def __aenter__(self) -> VerifierChain:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in self._components():
            for key, value in c.stats().items():
                out[f"{c.name}.{key}"] = value
        return out


class AnyOf(Stage[ChainOptions]):
    """Alternatives: the first that accepts wins; if all reject, the rejection says why each did.

    If none accepts and one failed transiently, the result is transient (503): the
    alternative that could not be asked might have accepted. An alternative cannot run in shadow
    mode itself (it would always accept); an AnyOf can, as a whole.
    """

    plugin_name: ClassVar[str] = "any-of"
    options_model: ClassVar[type[ComponentOptions]] = ChainOptions
    composite: ClassVar[bool] = True

    def __init__(
        self, *alternatives: Stage[Any], name: str | None = None, clock: Clock | None = None, enforce: bool = True
    ) -> None:
        super().__init__(clock=clock, name=name or "any-of", enforce=enforce)
        if not alternatives:
            raise ValueError("AnyOf needs at least one alternative")
        for alt in alternatives:
            _refuse_nested_observers(alt)
            if not alt.enforce:
                raise ConfigError(
                    f"alternative {alt.name!r} has enforce = false, so it would always accept: "
                    "set enforce = false on the any-of instead, or on a stage inside a chain alternative",
                    stage=self.name,
                    key="enforce",
                )
        self.alternatives: tuple[Stage[Any], ...] = alternatives
        _refuse_shadowed_authentication(self)

    async def __call__(self, v: Verification) -> None:
        failures: list[Rejected] = []
        for alt in self.alternatives:
            saved = v.snapshot()
            try:
                await run_stage(alt, v)
                return
            except Rejected as r:
                failures.append(r)
                v.restore(saved)  # an alternative not taken leaves nothing behind but its trace
        why = "; ".join(f"{r.stage}: {r.reason}" for r in failures)
        transient = next((r for r in failures if r.transient), None)
        if transient is not None:
            out = Rejected(
                "unavailable",
                f"the authorization service is temporarily unavailable ({why})",
                error="temporarily_unavailable",
                status=503,
                retry_after=transient.retry_after,
                transient=True,
            )
        else:
            first = failures[0]
            same = all(r.reason == first.reason for r in failures)
            out = Rejected(
                first.reason if same else "no_alternative_accepted",
                f"no alternative accepted the token ({why})",
                error=first.error,
                status=first.status,
                scope=first.scope,
                acr_values=first.acr_values,
                max_age=first.max_age,
            )
        out.stage = self.name
        raise out

    def bind_resource(self, resource_url: str) -> None:
        for alt in self.alternatives:
            alt.bind_resource(resource_url)

    async def start(self) -> None:
        await _start_all(self.alternatives)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        await _close_all(self.alternatives)
