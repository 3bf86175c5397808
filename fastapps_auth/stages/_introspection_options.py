"""Options of the ``introspection`` stage (``fastapps_auth.stages.introspection.IntrospectionOptions``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from fastapps_auth.component import OnError
from fastapps_auth.stage import StageOptions

AuthMethod = Literal["client_secret_basic", "client_secret_post"]
Mode = Literal["authenticate", "check"]


class IntrospectionOptions(StageOptions):
    """Options of the ``introspection`` stage."""

    on_error: OnError = Field(
        default="deny",
        description="Only deny (503): failing open would let revoked or unknown tokens through while the "
        "endpoint is down.",
    )

    issuer_url: str | None = Field(
        default=None,
        description="The authorization server; the response's `iss`, when present, must equal it exactly. "
        "Without introspection_url, the endpoint is discovered from its metadata (OIDC, then RFC 8414).",
    )
    introspection_url: str | None = Field(
        default=None, description="The RFC 7662 introspection endpoint (skips discovery)."
    )
    client_id: str = Field(description="This resource server's client ID at the authorization server.")
    client_secret: SecretStr = Field(description='Its client secret (write "${VAR}" to read it from the environment).')
    auth_method: AuthMethod = Field(
        default="client_secret_basic",
        description="How the client authenticates: client_secret_basic (HTTP Basic) or client_secret_post (form).",
    )
    mode: Mode = Field(
        default="authenticate",
        description="authenticate: build the AccessToken from the response (opaque tokens). check: after a jwt "
        "stage, only learn whether the token was revoked; the jwt stage's AccessToken is kept.",
    )
    audience: str | list[str] | None = Field(
        default=None,
        description="Accepted audience(s): the response's `aud` must contain one. None: the resource URL "
        "the host binds, else not checked.",
    )
    required_scopes: list[str] = Field(
        default_factory=list, description="Scopes the token must all carry (403 insufficient_scope otherwise)."
    )
    cache_ttl: float = Field(
        default=60.0,
        ge=0,
        description="Longest reuse of an active answer, seconds (also capped by exp); a revoked token is "
        "accepted for at most this long. 0: off.",
    )
    negative_ttl: float = Field(default=5.0, ge=0, description="Reuse of an inactive answer, seconds. 0: off.")
    max_entries: int = Field(
        default=10000, ge=0, description="Bound of the in-process cache (least recently used evicted first). 0: off."
    )
    cache: str | None = Field(
        default=None,
        description="Share answers between workers: redis://, rediss://, redis+cluster://, redis+sentinel:// "
        "or unix:// (replaces the in-process cache). None: in-process only.",
    )
    cache_prefix: str = Field(default="fastapps-auth:introspection", description="Key prefix in the shared cache.")
    cache_timeout: float = Field(
        default=0.2, gt=0, description="Longest wait for the shared cache per call, seconds; then it is skipped."
    )
    insecure_backend: bool = Field(default=False, description="Allow redis:// (no TLS) to a host other than loopback.")
    introspect_on_jwt_failure: bool = Field(
        default=False,
        description="Inside any-of, also introspect a token an earlier jwt alternative refused: for its "
        "signature (bad_signature, unknown_key, unsupported_algorithm) or its header or claims "
        "(wrong_audience, expired, wrong_type, ...).",
    )
    timeout: float = Field(default=5.0, gt=0, description="Total time limit of one introspection request, seconds.")
    max_connections: int = Field(
        default=50,
        ge=1,
        description="Most introspection requests in flight at once per process; more wait for one (within timeout).",
    )
    max_response_bytes: int = Field(default=65536, gt=0, description="Largest introspection response accepted, bytes.")
    max_token_bytes: int = Field(
        default=16384, gt=0, le=65536, description="Longer tokens are rejected without a request."
    )
    allow_insecure_http: bool = Field(
        default=False, description="Allow http:// for non-loopback hosts (loopback http is always allowed)."
    )
