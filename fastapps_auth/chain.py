"""VerifierChain and AnyOf: stages composed into one MCP ``TokenVerifier``.

A chain runs its stages in order and stops at the first ``Rejected``. It is a
stage itself, so chains nest; ``AnyOf`` tries alternatives (several issuers).
``verify_token`` never raises: every failure becomes a ``Decision``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from time import perf_counter
from types import TracebackType
from typing import Any, ClassVar

from mcp.server.auth.provider import AccessToken

from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.component import Component, ComponentOptions
from fastapps_auth.decision import Decision, Outcome, StageTrace
from fastapps_auth.errors import Rejected, TransientError
from fastapps_auth.observer import Observer
from fastapps_auth.request import RequestInfo, current_request
from fastapps_auth.stage import Stage, StageOptions, Verification

logger = logging.getLogger("fastapps_auth")

#: Tokens longer than this are rejected before any stage sees them (stages may set lower limits).
MAX_TOKEN_CHARS = 64 * 1024


def _unavailable(stage: Stage[Any], exc: BaseException) -> Rejected:
    retry = exc.retry_after if isinstance(exc, TransientError) and exc.retry_after else stage.retry_after
    r = Rejected(
        "unavailable",
        "the authorization service is temporarily unavailable",
        error="temporarily_unavailable",
        status=503,
        retry_after=retry,
        transient=True,
    )
    r.stage = stage.name
    return r


def _quotes_token(message: str, token: str) -> bool:
    """True if ``message`` contains any 16-character run of ``token`` (windows of 12 at stride 4)."""
    if len(token) < 12:
        return bool(token) and token in message
    return any(token[i : i + 12] in message for i in range(0, len(token) - 11, 4))


def _log_failure(stage: Stage[Any], exc: BaseException, v: Verification, *, allowed: bool) -> None:
    message = str(exc)[:300]
    if _quotes_token(message, v.token):
        message = "<message withheld: it quoted the token>"
    logger.warning(
        "stage %r failed transiently (%s: %s); %s",
        stage.name,
        type(exc).__name__,
        message,
        "failing open" if allowed else "denying with 503",
    )


def _cancelling() -> bool:
    """True unless the running task is known not to be cancelled.

    A ``CancelledError`` raised into a task nobody cancelled (a shared future a backend awaited
    was cancelled under it) is the stage failing, not the request being cancelled.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return True
    return task is None or task.cancelling() > 0


async def run_stages(stages: tuple[Stage[Any], ...], v: Verification) -> None:
    """Run ``stages`` in order, each with its trace entry and its ``on_error`` policy.

    One coroutine for the whole sequence (not one per stage): this loop is the hot path.
    """
    trace = v.trace
    for stage in stages:
        if stage.composite:
            await stage(v)
            continue
        v.cache_hit = None
        before = v.access_token
        t0 = perf_counter()
        try:
            await stage(v)
        except Rejected as r:
            if r.stage is None:
                r.stage = stage.name
            outcome: Outcome = "error-denied" if r.transient else "rejected"
            trace.append(StageTrace(stage.name, outcome, perf_counter() - t0, v.cache_hit, r.reason))
            raise
        except (Exception, asyncio.CancelledError) as exc:  # a transient failure, never a crash
            if isinstance(exc, asyncio.CancelledError) and _cancelling():
                raise
            v.access_token = before  # whatever the stage did half-way is undone
            allowed = stage.on_error == "allow" and not stage.authenticates
            _log_failure(stage, exc, v, allowed=allowed)
            outcome = "error-allowed" if allowed else "error-denied"
            duration = perf_counter() - t0
            trace.append(StageTrace(stage.name, outcome, duration, v.cache_hit, "unavailable", type(exc).__name__))
            if not allowed:
                raise _unavailable(stage, exc) from None
            v.failed_open.append(stage.name)
            continue
        trace.append(StageTrace(stage.name, "passed", perf_counter() - t0, v.cache_hit))


async def run_stage(stage: Stage[Any], v: Verification) -> None:
    """Run one stage with its trace entry and its ``on_error`` policy."""
    await run_stages((stage,), v)


async def _close(component: Component[Any]) -> None:
    await component.aclose()  # inside a coroutine: an ``aclose`` that is not one fails alone


async def _close_all(components: Sequence[Component[Any]]) -> None:
    """Close every component concurrently; a failure is logged and the rest still close."""
    results = await asyncio.gather(*(_close(c) for c in components), return_exceptions=True)
    for component, result in zip(components, results, strict=True):
        if isinstance(result, BaseException):
            logger.warning("closing %r failed (%s)", component.name, type(result).__name__)


def _refuse_nested_observers(stage: Stage[Any]) -> None:
    """Observers run once per decision, in the outermost chain: a nested chain's would never run."""
    if isinstance(stage, VerifierChain) and stage.observers:
        names = ", ".join(o.name for o in stage.observers)
        raise TypeError(
            f"the nested chain {stage.name!r} has observers ({names}) that would never run: "
            "give them to the outermost chain"
        )


class ChainOptions(StageOptions):
    """A chain's own options (only its name; its stages are given directly)."""


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
    ) -> None:
        super().__init__(clock=clock, name=name or "chain")
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
        self._closed = False

    # -- the stage protocol (when nested) ------------------------------------------------

    async def __call__(self, v: Verification) -> None:
        await run_stages(self.stages, v)

    # -- the public API ---------------------------------------------------------------------

    async def evaluate(self, token: str, *, request: RequestInfo | None = None) -> Decision:
        """Verify ``token`` and return the full ``Decision`` (with trace). Never raises."""
        started = self.clock.time()
        t0 = perf_counter()
        raw = token if isinstance(token, str) else ""
        v = Verification(raw, now=started, clock=self.clock, request=request or current_request.get())
        allowed = False
        rejection: Rejected | None = None
        try:
            if not raw:
                raise Rejected("missing_token", "no bearer token was presented")
            if len(raw) > MAX_TOKEN_CHARS:
                raise Rejected("token_too_large", "the token is too large")
            await run_stages(self.stages, v)
            if v.access_token is None:
                raise Rejected("unauthenticated", "no stage authenticated the token")
            allowed = True
        except Rejected as r:
            rejection = r
        except Exception as exc:  # a bug in a composite; still a decision, never a crash
            logger.error("verification failed unexpectedly (%s)", type(exc).__name__, exc_info=True)
            rejection = Rejected(
                "internal_error",
                "the authorization service failed",
                error="temporarily_unavailable",
                status=503,
                retry_after=self.retry_after,
                transient=True,
            )
            rejection.stage = self.name
        rj = rejection
        decision = Decision._make(
            (
                allowed,
                v.access_token if allowed else None,
                200 if rj is None else rj.status,
                None if rj is None else rj.stage,
                None if rj is None else rj.reason,
                None if rj is None else rj.error,
                None if rj is None else rj.description,
                None if rj is None else rj.retry_after,
                None if rj is None else rj.scope,
                tuple(v.trace),
                tuple(v.failed_open) if v.failed_open else (),
                v.rate_limit,
                v.digest[:6].hex() if raw else "",
                v.request,
                started,
                perf_counter() - t0,
                v.access_token,
                (),
                None if rj is None else rj.acr_values,
                None if rj is None else rj.max_age,
            )
        )
        for observer in self.observers:
            try:
                observer(decision)
            except Exception:
                logger.exception("observer %r failed; the decision stands", observer.name)
        return decision

    async def verify_token(self, token: str) -> AccessToken | None:
        """MCP ``TokenVerifier``: the ``AccessToken`` if allowed, else ``None``. Never raises."""
        decision = await self.evaluate(token)
        return decision.access_token if decision.allowed else None

    # -- lifecycle ----------------------------------------------------------------------------

    def _components(self) -> list[Component[Any]]:
        return [*self.stages, *self.observers]

    async def start(self) -> None:
        """Open every stage's resources now (pools, key sets) instead of on first use."""
        await asyncio.gather(*(c.start() for c in self._components()))

    async def aclose(self) -> None:
        """Close every stage and observer; failures are logged, the rest still close."""
        if self._closed:
            return
        self._closed = True
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
    alternative that could not be asked might have accepted.
    """

    plugin_name: ClassVar[str] = "any-of"
    options_model: ClassVar[type[ComponentOptions]] = ChainOptions
    composite: ClassVar[bool] = True

    def __init__(self, *alternatives: Stage[Any], name: str | None = None, clock: Clock | None = None) -> None:
        super().__init__(clock=clock, name=name or "any-of")
        if not alternatives:
            raise ValueError("AnyOf needs at least one alternative")
        for alt in alternatives:
            _refuse_nested_observers(alt)
        self.alternatives: tuple[Stage[Any], ...] = alternatives

    async def __call__(self, v: Verification) -> None:
        failures: list[Rejected] = []
        for alt in self.alternatives:
            saved = (v.access_token, v.rate_limit, len(v.failed_open))
            try:
                await run_stage(alt, v)
                return
            except Rejected as r:
                failures.append(r)
                v.access_token, v.rate_limit = saved[0], saved[1]
                del v.failed_open[saved[2] :]
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
            )
        out.stage = self.name
        raise out

    async def start(self) -> None:
        await asyncio.gather(*(a.start() for a in self.alternatives))

    async def aclose(self) -> None:
        await _close_all(self.alternatives)
