"""An ASGI app behind ``ChainAuthMiddleware`` with a Redis rate limit, for ``uvicorn --workers N --factory``.

Configured from the environment (uvicorn's workers are new interpreters): ``FASTAPPS_RL_URL``,
``FASTAPPS_RL_PREFIX``, ``FASTAPPS_RL_LIMIT``. Tokens are ``user:<subject>``; every other option of
the rate-limit stage keeps its default. The chain starts and closes with the app's lifespan.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from fastapps_auth import VerifierChain
from fastapps_auth.integrations.starlette import ChainAuthMiddleware
from fastapps_auth.stages.rate_limit import RateLimitStage
from tests.support.stages import TokenIsSubject


def create_app() -> ChainAuthMiddleware:
    stage = RateLimitStage(
        limit=int(os.environ["FASTAPPS_RL_LIMIT"]),
        window=3600,
        backend=os.environ["FASTAPPS_RL_URL"],
        prefix=os.environ["FASTAPPS_RL_PREFIX"],
    )
    chain = VerifierChain(TokenIsSubject(), stage)

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello from {os.getpid()}")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await chain.start()
        yield
        await chain.aclose()

    return ChainAuthMiddleware(Starlette(routes=[Route("/", hello)], lifespan=lifespan), chain)
