"""The authorization endpoint and its login page: pick a dev user (or ``login_hint``), auto-consent."""

from __future__ import annotations

from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from fastapps_auth.dev_issuer.authorization import (
    AuthorizationError,
    AuthorizationRequest,
    acr_for,
    approve,
    check_request,
    redirect_to,
    user_for,
)
from fastapps_auth.dev_issuer.grants import OAuthError
from fastapps_auth.dev_issuer.issuer import DevIssuer
from fastapps_auth.dev_issuer.routes.common import read_form
from fastapps_auth.dev_issuer.users import ACR_VALUES, DEFAULT_ACR

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:30rem;margin:3rem auto;padding:0 1rem;color:#222}"
    ".warn{background:#fff4e5;border:1px solid #e8a64f;padding:.5rem .75rem;border-radius:6px}"
    "button{display:block;width:100%;margin:.4rem 0;padding:.6rem;font-size:1rem;text-align:left;"
    "border:1px solid #999;border-radius:6px;background:#f6f6f6;cursor:pointer}"
    "button small{color:#666}fieldset{border:1px solid #ccc;border-radius:6px}code{background:#eee;padding:0 .2rem}"
)
ACR_LABELS = {"pwd": "password (acr=pwd)", "mfa": "password and a second factor (acr=mfa)"}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status, PAGE_HEADERS)


def _login_page(issuer: DevIssuer, request: AuthorizationRequest, request_id: str) -> HTMLResponse:
    client = escape(request.client.name or request.client.client_id)
    scopes = escape(" ".join(request.scopes)) if request.scopes else "no scopes"
    target = "".join(f" for <code>{escape(r)}</code>" for r in request.resources)
    chosen = acr_for(request)
    acrs = "".join(
        f'<label><input type="radio" name="acr" value="{a}"{" checked" if a == chosen else ""}> '
        f"{escape(ACR_LABELS.get(a, a))}</label><br>"
        for a in ACR_VALUES
    )
    buttons = "".join(
        f'<button name="user" value="{escape(u.id)}">{escape(u.id)} <small>'
        f"({'any scope' if u.scopes is None else escape(' '.join(sorted(u.scopes))) or 'no scopes'})</small></button>"
        for u in issuer.users.values()
    )
    body = (
        '<p class="warn">Development server: anyone can sign in as anyone, and consent is automatic. '
        "Never use it in production.</p>"
        f"<p><b>{client}</b> asks for <code>{scopes}</code>{target}.</p>"
        f'<form method="post" action="/login"><input type="hidden" name="request_id" value="{escape(request_id)}">'
        f"<fieldset><legend>Authentication</legend>{acrs}</fieldset><p>Sign in as:</p>{buttons}</form>"
    )
    return _page("Sign in to the dev issuer", body)


def _refused(issuer: DevIssuer, exc: AuthorizationError) -> Response:
    if exc.redirect_uri is None:  # never redirect to a URI the client did not register (RFC 6749 §4.1.2.1)
        body = f"<p><code>{escape(exc.error)}</code>: {escape(exc.description)}</p>"
        return _page("Authorization refused", body, 400)
    params = {"error": exc.error, "error_description": exc.description, "state": exc.state, "iss": issuer.issuer_url}
    return RedirectResponse(redirect_to(exc.redirect_uri, params), 302, PAGE_HEADERS)


def routes(issuer: DevIssuer) -> list[Route]:
    async def authorize(request: Request) -> Response:
        try:
            checked = await check_request(issuer, list(request.query_params.multi_items()))
            user = user_for(issuer, checked)
        except AuthorizationError as exc:
            return _refused(issuer, exc)
        if user is None:
            return _login_page(issuer, checked, issuer.tokens.put_login(checked))
        return RedirectResponse(approve(issuer, checked, user, acr_for(checked)), 302, PAGE_HEADERS)

    async def login(request: Request) -> Response:
        try:
            params = await read_form(request)
        except OAuthError as exc:
            return _page("Sign-in refused", f"<p>{escape(exc.description)}</p>", 400)
        pending = issuer.tokens.take_login(params.get("request_id") or "")
        if not isinstance(pending, AuthorizationRequest):
            return _page("Sign-in expired", "<p>This page expired or was used: start again from the client.</p>", 400)
        user = issuer.users.get(params.get("user") or "")
        if user is None:
            return _page("Sign-in refused", "<p>Pick one of the listed users.</p>", 400)
        url = approve(issuer, pending, user, acr_for(pending, params.get("acr") or DEFAULT_ACR))
        return RedirectResponse(url, 303, PAGE_HEADERS)

    return [
        Route("/authorize", authorize, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
    ]
