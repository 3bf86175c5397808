"""``integrations.fastapi``: the ``require`` dependency in a live FastAPI app served by uvicorn on 127.0.0.1.

Its refusals are the middleware's, header for header and byte for byte (each case is asked of both, each
with a chain of its own); it shows in the OpenAPI document; and behind ``ChainAuthMiddleware`` it reuses
the middleware's decision, so the chain runs once and its observers see one decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from mcp.server.auth.provider import AccessToken
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fastapps_auth import VerifierChain
from fastapps_auth.dev_issuer import RunningIssuer
from fastapps_auth.integrations.asgi import ChainAuthMiddleware
from fastapps_auth.integrations.fastapi import install, require
from fastapps_auth.stages.rate_limit import RateLimitStage
from fastapps_auth.stages.scopes import ScopesStage
from fastapps_auth.testing import BackgroundServer, Minter, issuer_chain
from tests.support.observers import Recorder
from tests.support.stages import Counts, Fails

META = "http://127.0.0.1:9/.well-known/oauth-protected-resource"
#: route → the chain behind it (a fresh one per app: the two apps compared never share a counter)
ROUTES: dict[str, Callable[[RunningIssuer], VerifierChain]] = {
    "/me": lambda issuer: issuer_chain(issuer),
    "/admin": lambda issuer: issuer_chain(issuer, ScopesStage(required=["admin"])),
    "/limited": lambda issuer: issuer_chain(issuer, RateLimitStage(limit=1, window=60)),
    "/down": lambda issuer: issuer_chain(issuer, Fails(retry_after=7)),
}


def fastapi_app(issuer: RunningIssuer, *, handler: bool = True) -> tuple[FastAPI, list[VerifierChain]]:
    """One route per entry of ROUTES, each behind ``require`` with its chain."""
    app = FastAPI()
    if handler:
        install(app)
    chains = []
    for path, make in ROUTES.items():
        chain = make(issuer)
        chains.append(chain)
        auth = require(chain, resource_metadata_url=META)

        async def endpoint(token: AccessToken = Depends(auth)) -> dict[str, Any]:  # a local: no Annotated
            return {"subject": token.subject}

        app.add_api_route(path, endpoint, methods=["GET"])
    return app, chains


def middleware_app(issuer: RunningIssuer) -> tuple[Starlette, list[VerifierChain]]:
    """The same routes, each behind ``ChainAuthMiddleware`` with its chain."""

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"subject": request.user.access_token.subject})

    routes, chains = [], []
    for path, make in ROUTES.items():
        chain = make(issuer)
        chains.append(chain)
        guard = Middleware(ChainAuthMiddleware, chain=chain, resource_metadata_url=META)
        routes.append(Route(path, endpoint, middleware=[guard]))
    return Starlette(routes=routes), chains


def serve(app: Any, chains: list[VerifierChain]) -> BackgroundServer:
    return BackgroundServer(app, on_stop=[c.aclose for c in chains])


@pytest.fixture
def both(dev_issuer: RunningIssuer) -> Iterator[tuple[str, str]]:
    """The base URLs of the FastAPI app and of the middleware app."""
    with serve(*fastapi_app(dev_issuer)) as dependency, serve(*middleware_app(dev_issuer)) as middleware:
        yield dependency.url, middleware.url


def answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """What the client sees of a refusal: status, the headers the library sets, body."""
    fixed = ("www-authenticate", "retry-after", "cache-control", "content-type")
    headers = sorted((k, v) for k, v in response.headers.multi_items() if k in fixed or k.startswith("ratelimit"))
    return response.status_code, headers, response.content


async def test_refusals_are_the_middlewares(both: tuple[str, str], mint: Minter) -> None:
    dependency, middleware = both
    alice = mint("alice", scopes=["read"])
    cases = [
        ("/me", None),  # 401, no credentials
        ("/me", mint.expired()),  # 401 invalid_token
        ("/me", mint.tampered()),
        ("/admin", alice),  # 403 insufficient_scope
        ("/admin", mint.expired()),  # 401 invalid_token naming the scope the route needs
        ("/limited", alice),  # 200 with RateLimit-* ...
        ("/limited", alice),  # ... then 429
        ("/down", alice),  # 503
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        for path, token in cases:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            ours = await http.get(dependency + path, headers=headers)
            theirs = await http.get(middleware + path, headers=headers)
            assert answer(ours) == answer(theirs), (path, ours.status_code, theirs.status_code)
            if ours.status_code == 200:
                assert ours.json() == {"subject": "alice"} and ours.headers["ratelimit-remaining"] == "0"
    statuses = []
    async with httpx.AsyncClient(timeout=10) as http:
        for path, token in cases:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            statuses.append((await http.get(dependency + path, headers=headers)).status_code)
    assert statuses == [401, 401, 401, 403, 401, 429, 429, 503]  # the limit of 1 was used by the first round


async def test_each_refusal_says_why(both: tuple[str, str], mint: Minter) -> None:
    dependency, _ = both
    alice = {"Authorization": f"Bearer {mint('alice', scopes=['read'])}"}
    async with httpx.AsyncClient(timeout=10) as http:
        missing = await http.get(f"{dependency}/me")
        scope = await http.get(f"{dependency}/admin", headers=alice)
        ok = await http.get(f"{dependency}/limited", headers=alice)
        limited = await http.get(f"{dependency}/limited", headers=alice)
        down = await http.get(f"{dependency}/down", headers=alice)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == f'Bearer resource_metadata="{META}"'
    assert missing.json() == {"error_description": "authentication required"}
    assert scope.status_code == 403 and 'error="insufficient_scope"' in scope.headers["www-authenticate"]
    assert scope.json()["error"] == "insufficient_scope" and scope.json()["scope"] == "admin"
    assert ok.status_code == 200 and ok.headers["ratelimit-limit"] == "1"
    assert limited.status_code == 429 and float(limited.headers["retry-after"]) > 0
    assert limited.json()["error"] == "rate_limited"
    assert down.status_code == 503 and down.headers["retry-after"] == "7"
    assert down.json()["error"] == "temporarily_unavailable"


async def test_without_the_handler_fastapi_answers_with_the_same_status_and_headers(
    dev_issuer: RunningIssuer, mint: Minter
) -> None:
    app, chains = fastapi_app(dev_issuer, handler=False)
    with serve(app, chains) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            missing = await http.get(f"{server.url}/me")
            scope = await http.get(f"{server.url}/admin", headers={"Authorization": f"Bearer {mint('alice')}"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == f'Bearer resource_metadata="{META}"'
    assert missing.json() == {"detail": {"error_description": "authentication required"}}
    assert scope.status_code == 403 and scope.json()["detail"]["scope"] == "admin"


async def test_the_dependency_is_an_openapi_security_scheme(dev_issuer: RunningIssuer) -> None:
    app, chains = fastapi_app(dev_issuer)
    with serve(app, chains) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            spec = (await http.get(f"{server.url}/openapi.json")).json()
    assert spec["components"]["securitySchemes"] == {"ChainAuth": {"type": "http", "scheme": "bearer"}}
    for path in ROUTES:
        assert spec["paths"][path]["get"]["security"] == [{"ChainAuth": []}]
        assert "token" not in str(spec["paths"][path]["get"].get("parameters", []))  # no query or body parameter


async def test_behind_the_middleware_the_chain_decides_once(dev_issuer: RunningIssuer, mint: Minter) -> None:
    recorder, counts = Recorder(), Counts()
    chain = issuer_chain(dev_issuer, counts, observers=[recorder])
    app = FastAPI()
    install(app)
    app.add_middleware(ChainAuthMiddleware, chain=chain, anonymous="allow", resource_metadata_url=META)

    @app.get("/me")
    async def me(token: AccessToken = Depends(require(chain))) -> dict[str, Any]:
        return {"subject": token.subject}

    @app.get("/admin")
    async def admin(token: AccessToken = Depends(require(chain, scopes=["admin"]))) -> dict[str, Any]:
        return {"subject": token.subject}

    with serve(app, [chain]) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            auth = {"Authorization": f"Bearer {mint('alice', scopes=['read'])}"}
            me_response = await http.get(f"{server.url}/me", headers=auth)
            one = (len(recorder.decisions), counts.calls)
            admin_response = await http.get(f"{server.url}/admin", headers=auth)
            anonymous = await http.get(f"{server.url}/me")
    assert me_response.status_code == 200 and me_response.json() == {"subject": "alice"}
    assert one == (1, 1)  # one decision, one audit event, one run of the chain
    # The route's own scope, missing from the token the middleware allowed: a second decision, the route's.
    assert admin_response.status_code == 403 and admin_response.json()["scope"] == "admin"
    refused = recorder.decisions[2]
    assert (refused.allowed, refused.stage, refused.reason) == (False, "required-scopes", "insufficient_scope")
    assert refused.fingerprint == recorder.decisions[1].fingerprint and counts.calls == 2
    # anonymous="allow" lets a request without a token past the middleware; the dependency refuses it.
    assert anonymous.status_code == 401 and recorder.decisions[-1].reason == "missing_token"
    assert len(recorder.decisions) == 4
