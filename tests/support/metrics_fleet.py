"""An app for the multiprocess metrics test, served by ``uvicorn --workers N tests.support.metrics_fleet:app``.

``/decide`` verifies the bearer token through a chain with a ``metrics`` observer (``good-*``
tokens pass, ``banned-*`` ones are refused by a later stage); ``/metrics`` serves the metrics.
Every answer names the worker that gave it (``x-worker-pid``). ``PROMETHEUS_MULTIPROC_DIR``
must be set before the workers start.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar

from fastapps_auth import AccessToken, Rejected, Stage, StageOptions, Verification, VerifierChain
from fastapps_auth.observers.metrics import MetricsObserver, metrics_app

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
PID = str(os.getpid()).encode()


class Auth(Stage[StageOptions]):
    plugin_name: ClassVar[str] = "auth"
    authenticates: ClassVar[bool] = True

    async def __call__(self, v: Verification) -> None:
        if not v.token.startswith(("good-", "banned-")):
            raise Rejected("bad_signature", "the token signature is invalid")
        v.cache_hit = True
        v.access_token = AccessToken(token=v.token, client_id="c", scopes=[], subject=v.token.split("-")[0])

    def stats(self) -> dict[str, float]:
        """One cache entry per worker; a key-set age that names the worker (its pid)."""
        return {"cache_entries": 1.0, "jwks_age_seconds": float(os.getpid()), "fetches": 2.0}


class Ban(Stage[StageOptions]):
    plugin_name: ClassVar[str] = "ban"

    async def __call__(self, v: Verification) -> None:
        if v.access_token is not None and v.access_token.subject == "banned":
            raise Rejected("user_banned", "the user is banned", status=403)


chain = VerifierChain(Auth(), Ban(), observers=[MetricsObserver(stats_interval=3600)])
metrics = metrics_app(chain)


async def app(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    if scope["type"] != "http":
        await metrics(scope, receive, send)  # lifespan
        return

    async def send_named(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-worker-pid", PID)]
        await send(message)

    if scope["path"] == "/metrics":
        await metrics(scope, receive, send_named)
        return
    token = dict(scope["headers"]).get(b"authorization", b"").decode().removeprefix("Bearer ")
    decision = await chain.evaluate(token)
    await send_named({"type": "http.response.start", "status": decision.status, "headers": []})
    await send_named({"type": "http.response.body", "body": str(decision.reason or "ok").encode()})
