"""DPoP over real HTTP: uvicorn on 127.0.0.1, httpx, proofs from ``fastapps_auth.testing.dpop``.

The ASGI middleware does not pass the DPoP fields yet, so a shim stands in for it here: it does what
the middleware must do (the lead's checklist), in as few lines as it takes. It fills ``RequestInfo``
(``url`` = the public URL without query, ``auth_scheme``, every ``DPoP`` header value) through
``request_context``, and answers a refusal with ``WWW-Authenticate: Bearer ..., DPoP algs="..."``,
the error on the challenge of the scheme the client used (RFC 9449 §7.2), and ``DPoP-Nonce``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from fastapps_auth import Decision, RequestInfo, VerifierChain, request_context
from fastapps_auth.dev_issuer.server import BackgroundServer
from fastapps_auth.stages.dpop import DPOP_ERRORS, DPoPStage
from fastapps_auth.stages.jwt import JWTVerifier
from fastapps_auth.testing.dpop import DPoPKey, bind
from tests.support.jwt_mint import claims, signing_key

ISSUER = signing_key("RS256")


def challenge(d: Decision, info: RequestInfo, dpop: DPoPStage) -> str:
    """Both challenges; the error goes on the DPoP one for a DPoP error or a request made with the DPoP scheme."""
    error = f'error="{d.error}", error_description="{d.description}"'
    on_dpop = d.error in DPOP_ERRORS or info.auth_scheme == "dpop"
    bearer = "Bearer" if on_dpop else f"Bearer {error}"
    return f'{bearer}, DPoP algs="{" ".join(dpop.algorithms)}"' + (f", {error}" if on_dpop else "")


def shim(chain: VerifierChain, dpop: DPoPStage) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        auth = [v for k, v in headers if k == "authorization"]
        scheme, _, token = auth[0].partition(" ") if len(auth) == 1 else ("", "", "")
        host = next(v for k, v in headers if k == "host")
        info = RequestInfo(
            method=scope["method"],
            path=scope["path"],
            url=f"{scope['scheme']}://{host}{scope.get('root_path', '')}{scope['path']}",
            auth_scheme=scheme.lower() or None,
            dpop_proofs=tuple(v for k, v in headers if k == "dpop"),
        )
        with request_context(info):
            d = await chain.evaluate(token.strip())
        out = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        nonce = dpop.nonce()
        if d.allowed:
            status, body = 200, {"sub": d.access_token.subject if d.access_token else None}
            if nonce and info.auth_scheme == "dpop":
                out.append((b"dpop-nonce", nonce.encode()))
        else:
            status, body = d.status, {"error": d.error, "reason": d.reason}
            out.append((b"www-authenticate", challenge(d, info, dpop).encode()))
            if nonce and d.error == "use_dpop_nonce":
                out.append((b"dpop-nonce", nonce.encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return app


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, DPoPStage]]:
    options = getattr(request, "param", {})
    dpop = DPoPStage(**options)
    chain = VerifierChain(
        JWTVerifier(jwks={"keys": [ISSUER.jwk()]}, issuer_url="https://issuer.example/", audience="api://mcp"), dpop
    )
    with BackgroundServer(shim(chain, dpop), lifespan="off", on_stop=[chain.aclose]) as srv:
        yield srv.url + "/mcp", dpop


def bound_token(key: DPoPKey) -> str:
    return ISSUER.token(bind(claims(time.time()), key))


def test_a_dpop_request_passes_and_its_replay_does_not(server: tuple[str, DPoPStage]) -> None:
    url, _ = server
    key = DPoPKey.generate()
    token = bound_token(key)
    headers = key.headers("POST", url, token)
    with httpx.Client(timeout=10) as http:
        ok = http.post(url + "?session=1", headers=headers)
        again = http.post(url, headers=headers)
    assert ok.status_code == 200 and ok.json() == {"sub": "user-1"}
    assert again.status_code == 401 and again.json()["reason"] == "dpop_proof_replayed"
    www = again.headers["www-authenticate"]
    assert www.startswith('Bearer, DPoP algs="ES256 ES384 RS256 PS256 EdDSA", error="invalid_dpop_proof"')


def test_a_stolen_bound_token_is_useless_as_bearer_and_with_the_thiefs_key(server: tuple[str, DPoPStage]) -> None:
    url, _ = server
    token = bound_token(DPoPKey.generate())
    thief = DPoPKey.generate()
    with httpx.Client(timeout=10) as http:
        as_bearer = http.post(url, headers={"Authorization": f"Bearer {token}"})
        with_own_key = http.post(url, headers=thief.headers("POST", url, token))
    assert (as_bearer.status_code, as_bearer.json()["reason"]) == (401, "dpop_bound_as_bearer")
    assert as_bearer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert (with_own_key.status_code, with_own_key.json()["reason"]) == (401, "dpop_key_mismatch")
    www = with_own_key.headers["www-authenticate"]
    assert 'DPoP algs="ES256 ES384 RS256 PS256 EdDSA", error="invalid_token"' in www


def test_two_dpop_headers_and_a_proof_for_another_url(server: tuple[str, DPoPStage]) -> None:
    url, _ = server
    key = DPoPKey.generate()
    token = bound_token(key)
    with httpx.Client(timeout=10) as http:
        two = http.post(
            url,
            headers=[
                ("Authorization", f"DPoP {token}"),
                ("DPoP", key.proof("POST", url, token)),
                ("DPoP", key.proof("POST", url, token)),
            ],
        )
        elsewhere = http.post(url, headers=key.headers("POST", url.replace("/mcp", "/other"), token))
    assert two.json()["reason"] == "dpop_proof_multiple"
    assert elsewhere.json()["reason"] == "dpop_proof_wrong_url"


@pytest.mark.parametrize("server", [{"nonce": True}], indirect=True)
def test_the_nonce_dance(server: tuple[str, DPoPStage]) -> None:
    url, _ = server
    key = DPoPKey.generate()
    token = bound_token(key)
    with httpx.Client(timeout=10) as http:
        first = http.post(url, headers=key.headers("POST", url, token))
        nonce = first.headers["dpop-nonce"]
        second = http.post(url, headers=key.headers("POST", url, token, nonce=nonce))
    assert first.status_code == 401 and 'error="use_dpop_nonce"' in first.headers["www-authenticate"]
    assert second.status_code == 200 and second.headers["dpop-nonce"] == nonce
