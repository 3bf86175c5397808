"""The OAuth flows against a running dev issuer by hand (httpx, synchronous), one step at a time.

For tests that need a token the way a client gets one, or that bend one step of the flow:

```python
from fastapps_auth.testing.dpop import DPoPKey
from fastapps_auth.testing.flow import Flow, register

flow = Flow(dev_issuer, register(dev_issuer))            # a dynamically registered client
tokens = flow.tokens()                                   # authorize (login_hint=alice) -> code -> token
key = DPoPKey.generate()
bound = Flow(dev_issuer, register(dev_issuer), dpop=key).tokens()   # token_type "DPoP", cnf.jkt = key.jkt
service = Flow.configured(dev_issuer)                    # the issuer's dev-client (client credentials, exchange)
token = service.client_credentials(scope="read").json()["access_token"]
```

With ``dpop`` every token request carries a fresh proof by that key for ``POST`` the token endpoint,
timed by the issuer's clock; ``headers={"DPoP": ...}`` on a call replaces it (a test's own proof).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import httpx

if TYPE_CHECKING:
    from fastapps_auth.dev_issuer import RunningIssuer
    from fastapps_auth.testing.dpop import DPoPKey

REDIRECT = "http://127.0.0.1/callback"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


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
    if response.status_code != 201:
        raise AssertionError(f"registration refused: HTTP {response.status_code} {response.text}")
    body: dict[str, Any] = response.json()
    return body


def redirect_params(response: httpx.Response) -> dict[str, str]:
    """The query of the redirect an authorization response sends the browser to."""
    if response.status_code not in (302, 303):
        raise AssertionError(f"not a redirect: HTTP {response.status_code} {response.text}")
    return dict(parse_qsl(urlsplit(response.headers["location"]).query))


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise AssertionError(f"token request refused: HTTP {response.status_code} {response.text}")
    body: dict[str, Any] = response.json()
    return body


def _error(response: httpx.Response) -> str | None:
    if response.status_code != 400:
        return None
    error = response.json().get("error")
    return error if isinstance(error, str) else None


@dataclass
class Flow:
    """One client (``client``: ``client_id`` and, for a confidential one, ``client_secret``) at ``issuer``."""

    issuer: RunningIssuer
    client: dict[str, Any]
    dpop: DPoPKey | None = None
    nonce: str | None = None  # the last DPoP-Nonce the issuer sent
    verifier: str = field(default="", repr=False)
    challenge: str = ""

    def __post_init__(self) -> None:
        self.verifier, self.challenge = pkce()

    @classmethod
    def configured(cls, issuer: RunningIssuer, *, dpop: DPoPKey | None = None) -> Flow:
        """The issuer's configured confidential client (``dev-client``): client credentials, token exchange."""
        client = {"client_id": issuer.client.client_id, "client_secret": issuer.client.secret}
        return cls(issuer, client, dpop=dpop)

    @property
    def auth(self) -> tuple[str, str] | None:
        secret = self.client.get("client_secret")
        return (self.client["client_id"], secret) if secret else None

    def proof(self) -> str | None:
        """A fresh DPoP proof for the token endpoint, by ``dpop`` at the issuer's time (``None`` without a key).

        It carries the last ``DPoP-Nonce`` the issuer sent, if any (``RunningIssuer(dpop_nonce=True)``).
        """
        if self.dpop is None:
            return None
        return self.dpop.proof("POST", self.issuer.token_endpoint, iat=self.issuer.clock.time(), nonce=self.nonce)

    def post(self, data: dict[str, Any], *, headers: dict[str, str] | None = None) -> httpx.Response:
        """A token request: client authentication (Basic, or ``client_id`` for a public client) and a proof.

        Refused ``use_dpop_nonce``, a request with this flow's own proof is sent once more with the
        nonce the answer gave (RFC 9449 §8), as a DPoP client does.
        """
        if self.auth is None:
            data.setdefault("client_id", self.client["client_id"])
        form = {k: v for k, v in data.items() if v is not None}
        own = self.dpop is not None and not any(k.lower() == "dpop" for k in headers or {})
        response = self._send(form, headers, own)
        if own and "dpop-nonce" in response.headers and _error(response) == "use_dpop_nonce":
            response = self._send(form, headers, own)  # once: the answer carried the nonce to use
        return response

    def _send(self, form: dict[str, Any], headers: dict[str, str] | None, own_proof: bool) -> httpx.Response:
        sent = dict(headers or {})
        proof = self.proof() if own_proof else None
        if proof is not None:
            sent["DPoP"] = proof
        response = httpx.post(self.issuer.token_endpoint, data=form, auth=self.auth, headers=sent)
        self.nonce = response.headers.get("dpop-nonce", self.nonce)
        return response

    # -- authorization code ---------------------------------------------------------------------

    def authorize(self, **params: Any) -> httpx.Response:
        """The authorization request (PKCE S256, ``login_hint=alice``); ``params`` add or (``None``) remove."""
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
        if "code" not in found:
            raise AssertionError(f"no code in the redirect: {found}")
        return found["code"]

    def token(self, code: str, *, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        data: dict[str, Any] = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": self.verifier,
            **params,
        }
        return self.post(data, headers=headers)

    def tokens(self, **authorize: Any) -> dict[str, Any]:
        """Authorize, then redeem the code: the token response's JSON (``AssertionError`` if refused)."""
        return _ok(self.token(self.code(**authorize)))

    def refresh(self, refresh_token: str, *, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        return self.post({"grant_type": "refresh_token", "refresh_token": refresh_token, **params}, headers=headers)

    # -- a client on its own behalf, or on a user's -----------------------------------------------

    def client_credentials(self, *, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        return self.post({"grant_type": "client_credentials", **params}, headers=headers)

    def exchange(self, subject_token: str, *, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        """RFC 8693 token exchange of ``subject_token`` (an access token); ``audience``, ``scope``... in ``params``."""
        data = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            **params,
        }
        return self.post(data, headers=headers)
