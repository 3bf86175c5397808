"""The OAuth flow against the dev issuer by hand (httpx), step by step, for tests that bend one step."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from fastapps_auth.dev_issuer import RunningIssuer

REDIRECT = "http://127.0.0.1/callback"


def pkce() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge, made independently of the issuer's code."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register(issuer: RunningIssuer, **metadata: Any) -> dict[str, Any]:
    """A dynamically registered client (defaults: the code flow to ``REDIRECT``, a secret)."""
    metadata.setdefault("redirect_uris", [REDIRECT])
    metadata.setdefault("grant_types", ["authorization_code", "refresh_token"])
    response = httpx.post(issuer.registration_endpoint, json=metadata)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def redirect_params(response: httpx.Response) -> dict[str, str]:
    """The query of the redirect an authorization response sends the browser to."""
    assert response.status_code in (302, 303), (response.status_code, response.text)
    return dict(parse_qsl(urlsplit(response.headers["location"]).query))


@dataclass
class Flow:
    """One client going through authorize -> token by hand."""

    issuer: RunningIssuer
    client: dict[str, Any]
    verifier: str = ""
    challenge: str = ""

    def __post_init__(self) -> None:
        self.verifier, self.challenge = pkce()

    @property
    def auth(self) -> tuple[str, str] | None:
        secret = self.client.get("client_secret")
        return (self.client["client_id"], secret) if secret else None

    def authorize(self, **params: Any) -> httpx.Response:
        query: dict[str, Any] = {
            "response_type": "code",
            "client_id": self.client["client_id"],
            "redirect_uri": REDIRECT,
            "state": "s-1",
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
            "login_hint": "alice",
        }
        query.update(params)
        return httpx.get(self.issuer.authorization_endpoint, params={k: v for k, v in query.items() if v is not None})

    def code(self, **params: Any) -> str:
        found = redirect_params(self.authorize(**params))
        assert "code" in found, found
        return found["code"]

    def token(self, code: str, **params: Any) -> httpx.Response:
        data: dict[str, Any] = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": self.verifier,
        }
        if self.auth is None:
            data["client_id"] = self.client["client_id"]
        data.update(params)
        return httpx.post(
            self.issuer.token_endpoint, data={k: v for k, v in data.items() if v is not None}, auth=self.auth
        )

    def tokens(self, **authorize: Any) -> dict[str, Any]:
        response = self.token(self.code(**authorize))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def refresh(self, refresh_token: str, **params: Any) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **params}
        if self.auth is None:
            data["client_id"] = self.client["client_id"]
        return httpx.post(self.issuer.token_endpoint, data=data, auth=self.auth)
