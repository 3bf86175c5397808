"""Options of the ``jwt`` stage (``fastapps_auth.stages.jwt.JWTOptions``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from fastapps_auth.stage import StageOptions

DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")


class JWTOptions(StageOptions):
    """Options of the ``jwt`` stage."""

    issuer_url: str | None = Field(
        default=None,
        description="Expected `iss`, compared exactly; without other key options, keys are discovered from it.",
    )
    audience: str | list[str] | None = Field(
        default=None, description="Accepted audience(s): the token's `aud` must contain one. None: not checked."
    )
    jwks_uri: str | None = Field(default=None, description="JWKS URL (skips discovery).")
    jwks: dict[str, Any] | None = Field(default=None, description='Inline JWKS ({"keys": [...]}); no network.')
    public_keys: list[str] = Field(
        default_factory=list, description="PEM public keys or certificates, inline or as file paths; no network."
    )
    hs_secret: SecretStr | None = Field(
        default=None, description="Shared secret for HS256/384/512 (needs those in `algorithms`; >= hash size)."
    )
    algorithms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        description="Accepted algorithms (RS*, PS*, ES*, EdDSA, HS*); a key narrows them further. Never `none`.",
    )
    required_scopes: list[str] = Field(
        default_factory=list, description="Scopes the token must all carry (403 insufficient_scope otherwise)."
    )
    leeway: float = Field(default=30.0, ge=0, le=600, description="Clock skew tolerated on exp/nbf/iat, seconds.")
    max_token_bytes: int = Field(
        default=16384, gt=0, le=65536, description="Longer tokens are rejected before parsing."
    )
    require_typ: str | None = Field(
        default=None, description='Required `typ` header, e.g. "at+jwt" (RFC 9068); None: not checked.'
    )
    cache_ttl: float = Field(
        default=300.0, ge=0, description="Longest reuse of a verified token, seconds (also capped by exp). 0: off."
    )
    max_cached_tokens: int = Field(
        default=10000, ge=0, description="Bound of the verified-token cache (oldest evicted first). 0: off."
    )
    jwks_cache_ttl: float = Field(
        default=600.0, gt=0, description="Key set lifetime without Cache-Control max-age, seconds."
    )
    jwks_cache_min_ttl: float = Field(default=60.0, ge=0, description="Lower clamp of the key set max-age, seconds.")
    jwks_cache_max_ttl: float = Field(default=86400.0, gt=0, description="Upper clamp of the key set max-age, seconds.")
    min_refresh_interval: float = Field(
        default=1.0, ge=0, description="At most one key set refresh per this many seconds (unknown kid, expiry)."
    )
    jwks_refresh_jitter: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="A key set is refreshed up to this fraction of its lifetime early, at random: "
        "workers started together do not refresh together.",
    )
    max_refresh_backoff: float = Field(
        default=60.0, gt=0, description="Longest wait between refresh retries while the JWKS endpoint fails, seconds."
    )
    http_timeout: float = Field(default=5.0, gt=0, description="Total time limit of one HTTP fetch, seconds.")
    max_jwks_bytes: int = Field(default=262144, gt=0, description="Largest discovery/JWKS response accepted, bytes.")
    allow_insecure_http: bool = Field(
        default=False, description="Allow http:// for non-loopback hosts (loopback http is always allowed)."
    )
    timeout: float = Field(
        default=5.0, gt=0, description="Longest a verification waits for a key fetch before failing with 503, seconds."
    )
