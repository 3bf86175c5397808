"""Running stages: the one loop every chain and AnyOf goes through.

Each stage gets its trace entry; a stage that fails transiently has its changes undone and its
``on_error`` policy applied; a stage that does not enforce (shadow mode) has its refusal recorded
instead of raised; a closed stage is refused without being called.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Any

from fastapps_auth.decision import Outcome, StageTrace
from fastapps_auth.errors import Rejected, TransientError
from fastapps_auth.stage import Stage, Verification

logger = logging.getLogger("fastapps_auth")


def transient_refusal(reason: str, description: str, stage: Stage[Any], retry_after: float | None) -> Rejected:
    """503 ``temporarily_unavailable`` from ``stage``: a failure that says nothing about the token."""
    r = Rejected(
        reason, description, error="temporarily_unavailable", status=503, retry_after=retry_after, transient=True
    )
    r.stage = stage.name
    return r


def _unavailable(stage: Stage[Any], exc: BaseException) -> Rejected:
    retry = exc.retry_after if isinstance(exc, TransientError) and exc.retry_after else stage.retry_after
    return transient_refusal("unavailable", "the authorization service is temporarily unavailable", stage, retry)


def closed_refusal(stage: Stage[Any]) -> Rejected:
    """503 ``closed``: ``stage`` (or the chain) was closed and is never called again."""
    return transient_refusal("closed", "the authorization service is shutting down", stage, stage.retry_after)


def _quotes_token(message: str, token: str) -> bool:
    """True if ``message`` contains any 16-character run of ``token`` (windows of 12 at stride 4)."""
    if len(token) < 12:
        return bool(token) and token in message
    return any(token[i : i + 12] in message for i in range(0, len(token) - 11, 4))


def _log_failure(stage: Stage[Any], exc: BaseException, v: Verification, *, policy: str) -> None:
    message = str(exc)[:300]
    if _quotes_token(message, v.token):
        message = "<message withheld: it quoted the token>"
    logger.warning("stage %r failed transiently (%s: %s); %s", stage.name, type(exc).__name__, message, policy)


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
    """Run ``stages`` in order, each with its trace entry, its ``on_error`` policy and its ``enforce`` flag.

    One coroutine for the whole sequence (not one per stage): this loop is the hot path. A stage
    that fails has its changes undone; one that does not enforce (shadow mode) has them undone
    whatever it decided, and its refusal (or failure) is recorded in ``v.shadowed`` instead of raised.
    """
    trace = v.trace
    for stage in stages:
        if stage.closed:
            _refuse_closed(stage, v)
            continue
        if stage.composite:
            await (stage(v) if stage.enforce else _run_shadowed_composite(stage, v))
            continue
        v.cache_hit = None
        saved = v.snapshot()
        t0 = perf_counter()
        try:
            await stage(v)
        except Rejected as r:
            if r.stage is None:
                r.stage = stage.name
            duration = perf_counter() - t0
            if not stage.enforce:
                v.restore(saved)
                v.shadowed.append((r.stage, r.reason))
                trace.append(StageTrace(stage.name, "shadow-rejected", duration, v.cache_hit, r.reason))
                continue
            outcome: Outcome = "error-denied" if r.transient else "rejected"
            trace.append(StageTrace(stage.name, outcome, duration, v.cache_hit, r.reason))
            raise
        except (Exception, asyncio.CancelledError) as exc:  # a transient failure, never a crash
            # A cancellation of this task is not the stage's failure: it propagates untouched.
            if isinstance(exc, asyncio.CancelledError) and _cancelling():
                raise
            v.restore(saved)  # whatever the stage did half-way is undone
            duration = perf_counter() - t0
            error = type(exc).__name__
            if not stage.enforce:  # a stage that does not enforce never refuses, not even with a 503
                _log_failure(stage, exc, v, policy="not enforced (shadow mode)")
                v.shadowed.append((stage.name, "unavailable"))
                trace.append(StageTrace(stage.name, "shadow-rejected", duration, v.cache_hit, "unavailable", error))
                continue
            allowed = stage.on_error == "allow" and not stage.authenticates
            _log_failure(stage, exc, v, policy="failing open" if allowed else "denying with 503")
            outcome = "error-allowed" if allowed else "error-denied"
            trace.append(StageTrace(stage.name, outcome, duration, v.cache_hit, "unavailable", error))
            if not allowed:
                raise _unavailable(stage, exc) from None
            v.failed_open.append(stage.name)
            continue
        if not stage.enforce:
            v.restore(saved)  # a dry run: a stage that does not enforce changes nothing
        trace.append(StageTrace(stage.name, "passed", perf_counter() - t0, v.cache_hit))


def _refuse_closed(stage: Stage[Any], v: Verification) -> None:
    """A closed stage is never called: 503 ``closed`` (recorded as shadowed if it does not enforce)."""
    if not stage.enforce:
        v.shadowed.append((stage.name, "closed"))
        v.trace.append(StageTrace(stage.name, "shadow-rejected", 0.0, None, "closed"))
        return
    v.trace.append(StageTrace(stage.name, "error-denied", 0.0, None, "closed"))
    raise closed_refusal(stage)


async def _run_shadowed_composite(stage: Stage[Any], v: Verification) -> None:
    """A chain or AnyOf with ``enforce = false``: run it, record its refusal, undo everything it changed.

    The trace keeps its inner stages' entries; those that refused are marked ``shadow-rejected``.
    """
    saved = v.snapshot()
    mark = len(v.trace)
    try:
        await stage(v)
    except Rejected as r:
        for entry in v.trace[mark:]:
            if entry.outcome in ("rejected", "error-denied"):
                entry.outcome = "shadow-rejected"
        v.restore(saved)
        v.shadowed.append((r.stage or stage.name, r.reason))
        return
    v.restore(saved)


async def run_stage(stage: Stage[Any], v: Verification) -> None:
    """Run one stage with its trace entry and its ``on_error`` policy."""
    await run_stages((stage,), v)
