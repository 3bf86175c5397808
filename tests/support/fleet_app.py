"""A small Starlette app behind ``ChainAuthMiddleware`` for ``uvicorn --workers N`` tests.

Each worker builds its own chain (``user:<id>`` tokens, then user-status on PostgreSQL with
NOTIFY and a long cache) from ``FA_FLEET_DSN``, ``FA_FLEET_QUERY`` and ``FA_FLEET_CHANNEL``.
Every response carries the answering worker's pid in ``x-worker-pid``, a refusal too;
``/ready`` (not authenticated) says whether that worker's listener is connected.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapps_auth import VerifierChain
from fastapps_auth.integrations.starlette import ChainAuthMiddleware
from fastapps_auth.stages.user_status import UserStatusStage
from tests.support.stages import TokenIsSubject

PID = str(os.getpid()).encode()

stage = UserStatusStage(
    dsn=os.environ["FA_FLEET_DSN"],
    query=os.environ["FA_FLEET_QUERY"],
    notify_channel=os.environ["FA_FLEET_CHANNEL"],
    cache_ttl=3600,
    negative_ttl=3600,
    timeout=5,
)
chain = VerifierChain(TokenIsSubject(), stage)


async def who(_: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


async def ready(_: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid(), "listening": bool(stage.stats().get("listener_connected"))})


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    await chain.start()
    yield
    await chain.aclose()


def with_pid(inner: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-worker-pid", PID)]}
            await send(message)

        await inner(scope, receive, send_with_pid)

    return app


app = with_pid(
    ChainAuthMiddleware(
        Starlette(routes=[Route("/who", who), Route("/ready", ready)], lifespan=lifespan), chain, exempt=("/ready",)
    )
)
