"""The ``jwt`` stage: verify a JWT access token and build the ``AccessToken``.

A hardened drop-in for ``fastapps.JWTVerifier`` (``issuer_url``, ``audience``,
``required_scopes``). Keys come from OIDC/RFC 8414 discovery, a ``jwks_uri``,
inline ``jwks``, PEM keys or an HMAC secret. Algorithms come from configuration
and the key, never from the token alone. A verified token is cached under its
SHA-256 until its ``exp`` (capped by ``cache_ttl``); ``exp`` and the required
scopes are rechecked on every hit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from mcp.server.auth.provider import AccessToken
from pydantic import Field, SecretStr

from fastapps_auth.backends.jwks import KeySet, KeySource, RemoteKeySource, parse_jwks, static_source
from fastapps_auth.backends.jwks_keys import (
    HMAC_ALGS,
    SUPPORTED_ALGS,
    KeyImportError,
    VerifyKey,
    build_key,
    hmac_key,
    public_key_from_pem,
)
from fastapps_auth.backends.token_cache import VerifiedTokenCache
from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.endpoints import check_url
from fastapps_auth.errors import ConfigError, Rejected, TransientError, insufficient_scope
from fastapps_auth.stage import Stage, StageOptions, Verification
from fastapps_auth.stages._jwt_compact import Malformed, decode, json_object, split

logger = logging.getLogger("fastapps_auth.jwt")
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
_MISSING: Any = object()
#: Distinct protected headers remembered (they repeat: one per key); the memo is cleared when full.
_MAX_HEADERS = 64
#: Time claims beyond this (either way) are not times: an integer would lose precision as a float,
#: and a float such as 1e300 would make ``expires_at`` a 301-digit integer.
_MAX_INT = 2**53
#: What a cache hit answers: the access token and the required scopes it lacks.
_Verified = tuple[AccessToken, tuple[str, ...]]


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


class JWTVerifier(Stage[JWTOptions]):
    """Verifies a JWT (signature, algorithm, claims) and builds the ``AccessToken``."""

    plugin_name: ClassVar[str] = "jwt"
    options_model: ClassVar[type[ComponentOptions]] = JWTOptions
    authenticates: ClassVar[bool] = True

    def __init__(
        self, options: JWTOptions | str | None = None, /, *, clock: Clock | None = None, **kwargs: Any
    ) -> None:
        if isinstance(options, str):  # fastapps.JWTVerifier(issuer_url, ...) takes it positionally
            kwargs["issuer_url"] = options
            options = None
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        self._algorithms = self._check_algorithms(o)
        self._issuer = o.issuer_url
        audiences = [o.audience] if isinstance(o.audience, str) else list(o.audience or [])
        if o.audience is not None and (not audiences or not all(audiences)):
            raise ConfigError("audience must be a non-empty string or list of strings", stage=self.name, key="audience")
        self._audiences: frozenset[str] | None = frozenset(audiences) if o.audience is not None else None
        if self._audiences is None:
            logger.warning(
                "jwt stage %r checks no audience: a token its issuer minted for any other API is accepted here "
                "(set audience, e.g. this server's resource URL)",
                self.name,
            )
        self._required = tuple(dict.fromkeys(o.required_scopes))
        self._required_set = frozenset(self._required)
        self._leeway = float(o.leeway)
        self._max_len = o.max_token_bytes
        self._typ = _norm_typ(o.require_typ) if o.require_typ else None
        self._cache: VerifiedTokenCache[_Verified] | None = (
            VerifiedTokenCache(o.max_cached_tokens, o.cache_ttl)
            if o.cache_ttl > 0 and o.max_cached_tokens > 0
            else None
        )
        self._source = self._build_source(o)
        self._headers: dict[bytes, tuple[str, str | None]] = {}

    # -- construction -----------------------------------------------------------------------------

    def _check_algorithms(self, o: JWTOptions) -> frozenset[str]:
        algs = frozenset(o.algorithms)
        if not algs:
            raise ConfigError("at least one algorithm is required", stage=self.name, key="algorithms")
        unknown = sorted(algs - SUPPORTED_ALGS)
        if unknown:
            raise ConfigError(
                f"unsupported algorithm(s) {', '.join(unknown)} (supported: {', '.join(sorted(SUPPORTED_ALGS))})",
                stage=self.name,
                key="algorithms",
            )
        hs = algs & set(HMAC_ALGS)
        if hs and o.hs_secret is None:
            raise ConfigError("HS* algorithms need hs_secret", stage=self.name, key="algorithms")
        if o.hs_secret is not None:
            if not hs:
                raise ConfigError(
                    "hs_secret needs HS256/HS384/HS512 listed explicitly in algorithms",
                    stage=self.name,
                    key="hs_secret",
                )
            if hs != algs:
                raise ConfigError(
                    "HS* algorithms cannot be mixed with public-key algorithms in one stage (use any-of)",
                    stage=self.name,
                    key="algorithms",
                )
            size = len(o.hs_secret.get_secret_value().encode())
            need = max(HMAC_ALGS[a]().digest_size for a in hs)
            if size < need:
                raise ConfigError(f"hs_secret must be at least {need} bytes", stage=self.name, key="hs_secret")
        return algs

    def _check_url(self, url: str, key: str) -> None:
        try:
            check_url(url, allow_insecure_http=self.options.allow_insecure_http)
        except ValueError as exc:
            raise ConfigError(str(exc), stage=self.name, key=key) from None

    def _build_source(self, o: JWTOptions) -> KeySource:
        static: list[VerifyKey] = []
        given = [k for k in ("jwks", "public_keys", "hs_secret") if getattr(o, k)]
        if o.jwks_uri and given:
            raise ConfigError(f"jwks_uri cannot be combined with {given[0]}", stage=self.name, key="jwks_uri")
        if o.jwks is not None:
            try:
                keyset = parse_jwks(o.jwks, self._algorithms, strict=True)
            except KeyImportError as exc:
                raise ConfigError(str(exc), stage=self.name, key="jwks") from None
            if not keyset.keys:
                raise ConfigError("no key in jwks can verify the configured algorithms", stage=self.name, key="jwks")
            static.extend(keyset.keys)
        for i, item in enumerate(o.public_keys):
            static.append(self._pem_key(item, i))
        if o.hs_secret is not None:
            static.append(hmac_key(o.hs_secret.get_secret_value().encode(), self._algorithms))
        if static:
            return static_source(static)
        if o.jwks_uri is None and o.issuer_url is None:
            raise ConfigError(
                "no keys: set issuer_url (discovery), jwks_uri, jwks, public_keys or hs_secret",
                stage=self.name,
                key="issuer_url",
            )
        if o.jwks_uri is not None:
            self._check_url(o.jwks_uri, "jwks_uri")
        else:
            assert o.issuer_url is not None
            self._check_url(o.issuer_url, "issuer_url")  # it will be fetched: discovery
        if o.jwks_cache_min_ttl > o.jwks_cache_max_ttl:
            raise ConfigError(
                "jwks_cache_min_ttl exceeds jwks_cache_max_ttl", stage=self.name, key="jwks_cache_min_ttl"
            )
        return RemoteKeySource(
            allowed=self._algorithms,
            clock=self.clock,
            issuer=o.issuer_url,
            jwks_uri=o.jwks_uri,
            http_timeout=o.http_timeout,
            wait_timeout=o.timeout,
            max_bytes=o.max_jwks_bytes,
            default_ttl=o.jwks_cache_ttl,
            min_ttl=o.jwks_cache_min_ttl,
            max_ttl=o.jwks_cache_max_ttl,
            min_refresh_interval=o.min_refresh_interval,
            max_backoff=o.max_refresh_backoff,
            allow_insecure_http=o.allow_insecure_http,
        )

    def _pem_key(self, item: str, index: int) -> VerifyKey:
        key = f"public_keys[{index}]"
        if "-----BEGIN" in item:
            pem = item.encode()
        else:
            try:
                pem = Path(item).expanduser().read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read PEM file: {exc.strerror}", stage=self.name, key=key) from None
        try:
            vk = build_key(public_key_from_pem(pem), None, self._algorithms)
        except KeyImportError as exc:
            raise ConfigError(str(exc), stage=self.name, key=key) from None
        if not vk.verifiers:
            raise ConfigError(f"a {vk.kind} key cannot verify any configured algorithm", stage=self.name, key=key)
        return vk

    # -- the hot path ---------------------------------------------------------------------------------

    async def __call__(self, v: Verification) -> None:
        cache = self._cache
        if cache is not None:
            digest = v.digest
            hit = cache.get(digest, v.now)  # None once past exp (+ leeway) or the cache TTL
            if hit is not None:
                v.cache_hit = True
                if hit[1]:
                    raise insufficient_scope(hit[1])
                v.access_token = hit[0]
                return
        v.cache_hit = False
        token = v.token
        alg, kid, sig, payload, signing_input = self._parse(token)
        source = self._source
        keys = source.current()
        if keys is None:
            keys = await source.wait_keys()
        for key in keys.candidates(kid, alg):
            verify = key.verifiers.get(alg)
            if verify is not None and verify(sig, signing_input):
                break
        else:
            await self._verify_after_miss(keys, kid, alg, sig, signing_input)
        at, exp_limit, missing = self._claims(token, payload, v.now)
        if cache is not None:
            cache.put(digest, (at, missing), now=v.now, expires=exp_limit)
        if missing:
            raise insufficient_scope(missing)
        v.access_token = at

    async def _verify_after_miss(
        self, keys: KeySet, kid: str | None, alg: str, sig: bytes, signing_input: bytes
    ) -> None:
        """No known key verified the token: return if a refreshed key set does, else raise the rejection.

        A kid the set does not know may be a rotation, also when keys without a kid were there to
        try: the key set is refreshed (at most once per ``min_refresh_interval``) and tried again.
        """
        candidates = keys.candidates(kid, alg)
        if not candidates or (kid is not None and kid not in keys.by_kid):
            fresh = await self._source.refresh_unknown()
            if fresh is not None:
                candidates = fresh.candidates(kid, alg)
                for key in candidates:
                    verify = key.verifiers.get(alg)
                    if verify is not None and verify(sig, signing_input):
                        return
            if not candidates:
                raise Rejected("unknown_key", "the token was signed by an unknown key")
        if not any(alg in key.verifiers for key in candidates):
            raise Rejected("unsupported_algorithm", "the token's key does not allow its algorithm")
        raise Rejected("bad_signature", "the token's signature is invalid")

    def _parse(self, token: str) -> tuple[str, str | None, bytes, dict[str, Any], bytes]:
        """``(alg, kid, signature, payload, signing input)`` of a well-formed token with an acceptable header."""
        if len(token) > self._max_len:
            raise Rejected("token_too_large", "the token is too large")
        try:
            h64, p64, s64, signing_input = split(token)
        except Malformed:
            raise Rejected("malformed", "the token is not a well-formed JWT") from None
        checked = self._headers.get(h64)
        if checked is None:
            checked = self._check_header(h64)
            if len(self._headers) >= _MAX_HEADERS:
                self._headers.clear()
            self._headers[h64] = checked
        try:
            sig = decode(s64)
            payload = json_object(decode(p64), no_duplicates=False)
        except Malformed:
            raise Rejected("malformed", "the token is not a well-formed JWT") from None
        return checked[0], checked[1], sig, payload, signing_input

    def _check_header(self, h64: bytes) -> tuple[str, str | None]:
        """``(alg, kid)`` of an acceptable protected header; headers repeat, so results are memoized."""
        try:
            header = json_object(decode(h64))
        except Malformed:
            raise Rejected("malformed", "the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if type(alg) is not str or alg not in self._algorithms:  # also 'none' and HS* without a secret
            raise Rejected("unsupported_algorithm", "the token's algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and type(kid) is not str:
            raise Rejected("malformed", "the token's kid is not a string")
        if "crit" in header:  # no extension is understood (RFC 7515 §4.1.11)
            raise Rejected("unknown_critical_header", "the token has a critical header this server does not support")
        if self._typ is not None:
            typ = header.get("typ")
            if type(typ) is not str or _norm_typ(typ) != self._typ:
                raise Rejected("wrong_type", "the token has the wrong type")
        # jku, x5u, jwk and x5c are ignored: a token never chooses its own key.
        return alg, kid

    def _claims(self, token: str, p: dict[str, Any], now: float) -> tuple[AccessToken, float, tuple[str, ...]]:
        get = p.get
        leeway = self._leeway
        exp = get("exp", _MISSING)
        te = type(exp)
        if not ((te is int or te is float) and -_MAX_INT <= exp <= _MAX_INT):  # NaN fails it too
            if exp is _MISSING:
                raise Rejected("missing_claim", "the token has no exp claim")
            raise Rejected("bad_claim", "the token's exp claim is not a valid time (a number of seconds)")
        if now >= exp + leeway:
            raise Rejected("expired", "the token has expired")
        if "nbf" in p and now + leeway < _number(p, "nbf"):
            raise Rejected("not_yet_valid", "the token is not valid yet")
        iat = get("iat", _MISSING)
        if iat is not _MISSING:
            if type(iat) is not int or not -_MAX_INT <= iat <= _MAX_INT:  # the common case inline
                iat = _number(p, "iat")
            if iat > now + leeway:
                raise Rejected("issued_in_future", "the token was issued in the future")
        if self._issuer is not None:
            iss = get("iss", _MISSING)
            if iss != self._issuer:
                if iss is _MISSING:
                    raise Rejected("missing_claim", "the token has no iss claim")
                raise Rejected("wrong_issuer", "the token was issued by another issuer")
        audiences = self._audiences
        if audiences is None:
            resource = None
        else:
            resource = get("aud")
            if type(resource) is not str or resource not in audiences:  # the common case inline
                resource = self._audience(p)
        sub = get("sub", _MISSING)
        if type(sub) is not str or not sub:
            if sub is _MISSING:
                raise Rejected("missing_claim", "the token has no sub claim")
            raise Rejected("bad_claim", "the token's sub claim is not a non-empty string")
        scope = get("scope")
        if type(scope) is str and "scp" not in p and "permissions" not in p:
            scopes = scope.split()  # the common case
            if len(scopes) > 1 and len(set(scopes)) < len(scopes):
                scopes = list(dict.fromkeys(scopes))
        else:
            scopes = _scopes(p)
        client_id = get("client_id")
        if type(client_id) is not str:
            client_id = get("azp")
            if type(client_id) is not str:
                client_id = get("cid")
                if type(client_id) is not str:
                    client_id = sub
        missing: tuple[str, ...] = ()
        if self._required and not self._required_set.issubset(scopes):
            missing = tuple(s for s in self._required if s not in scopes)
        at = _access_token(token, client_id, scopes, int(exp), resource, sub, p)
        return at, exp + leeway, missing

    def _audience(self, p: dict[str, Any]) -> str:
        aud = p.get("aud", _MISSING)
        assert self._audiences is not None
        if aud is _MISSING:
            raise Rejected("missing_claim", "the token has no aud claim")
        if type(aud) is str:
            if aud in self._audiences:
                return str(aud)
        elif type(aud) is list:
            for a in aud:
                if type(a) is not str:
                    raise Rejected("bad_claim", "the token's aud claim is not a string or list of strings")
            for a in aud:
                if a in self._audiences:
                    return str(a)
        else:
            raise Rejected("bad_claim", "the token's aud claim is not a string or list of strings")
        raise Rejected("wrong_audience", "the token is not meant for this audience")

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the key set now (discovery and JWKS) instead of at the first token.

        A key server that is down at startup does not stop the application: the failure is
        logged, tokens get 503 meanwhile, and the fetch is retried with backoff.
        """
        try:
            await self._source.start()
        except TransientError as exc:
            logger.warning("jwt stage %r could not load its keys at start (%s); will retry", self.name, exc)

    async def aclose(self) -> None:
        await self._source.aclose()

    def stats(self) -> dict[str, float]:
        out = self._source.stats()
        out["cached_tokens"] = float(len(self._cache or ()))
        return out

    def clear_cache(self) -> None:
        """Forget every verified token (e.g. after revoking a key out of band)."""
        if self._cache is not None:
            self._cache.clear()


def _norm_typ(typ: str) -> str:
    t = typ.strip().lower()
    return t[12:] if t.startswith("application/") else t


def _number(p: dict[str, Any], name: str) -> float:
    """A present claim as a number within ±2**53; ``bad_claim`` for anything else (bools, null, strings, NaN)."""
    value = p[name]
    t = type(value)
    if (t is int or t is float) and -_MAX_INT <= value <= _MAX_INT:  # not NaN, not infinite
        return float(value)
    raise Rejected("bad_claim", f"the token's {name} claim is not a valid time (a number of seconds)")


def _scopes(p: dict[str, Any]) -> list[str]:
    """Scopes from ``scope`` (space-delimited, or a list), ``scp`` (list or string), ``permissions`` (Auth0)."""
    out: list[str] = []
    for name in ("scope", "scp", "permissions"):
        value = p.get(name)
        if value is None:
            continue
        if type(value) is str:
            out.extend(value.split())
        elif type(value) is list and all(type(s) is str for s in value):
            out.extend(value)
        else:
            raise Rejected("bad_claim", f"the token's {name} claim is not a string or list of strings")
    return list(dict.fromkeys(out)) if len(out) > 1 else out


# -- the AccessToken --------------------------------------------------------------------------------

_AT_FIELDS = ("token", "client_id", "scopes", "expires_at", "resource", "subject", "claims")
_new_object = object.__new__
_set_attr = object.__setattr__


def _validated_access_token(
    token: str,
    client_id: str,
    scopes: list[str],
    expires_at: int,
    resource: str | None,
    subject: str,
    claims: dict[str, Any],
) -> AccessToken:
    return AccessToken(
        token=token,
        client_id=client_id,
        scopes=scopes,
        expires_at=expires_at,
        resource=resource,
        subject=subject,
        claims=claims,
    )


def _checked_access_token(
    token: str,
    client_id: str,
    scopes: list[str],
    expires_at: int,
    resource: str | None,
    subject: str,
    claims: dict[str, Any],
) -> AccessToken:
    """An ``AccessToken`` from values ``_claims`` has already type-checked exactly.

    What pydantic's ``model_construct`` does (no re-validation of values built here), without
    its per-field loop: ~1 µs instead of ~2 µs validated, ~3 µs through ``model_construct``.
    """
    at = _new_object(AccessToken)
    _set_attr(
        at,
        "__dict__",
        {
            "token": token,
            "client_id": client_id,
            "scopes": scopes,
            "expires_at": expires_at,
            "resource": resource,
            "subject": subject,
            "claims": claims,
        },
    )
    _set_attr(at, "__pydantic_fields_set__", set(_AT_FIELDS))
    _set_attr(at, "__pydantic_extra__", None)
    _set_attr(at, "__pydantic_private__", None)
    return at


def _pick_access_token_builder() -> Callable[[str, str, list[str], int, str | None, str, dict[str, Any]], AccessToken]:
    """The direct builder when it makes exactly what validation makes, else the validating one.

    Checked once at import against the installed ``mcp``/pydantic: same fields, no validators,
    private attributes or extras that validation would apply, and an equal result.
    """
    try:
        decorators = AccessToken.__pydantic_decorators__
        plain = (
            tuple(AccessToken.model_fields) == _AT_FIELDS
            and not AccessToken.__private_attributes__
            and AccessToken.model_config.get("extra") in (None, "ignore")
            and not decorators.field_validators
            and not decorators.model_validators
            and not decorators.computed_fields
            and AccessToken.__pydantic_post_init__ is None
        )
        args: tuple[Any, ...] = ("t", "c", ["a", "b"], 1, "r", "u", {"sub": "u", "n": [1]})
        fast, slow = _checked_access_token(*args), _validated_access_token(*args)
        same = (
            fast == slow and fast.model_fields_set == slow.model_fields_set and fast.model_dump() == slow.model_dump()
        )
    except Exception:  # pragma: no cover - a pydantic without these internals: validate
        return _validated_access_token
    return _checked_access_token if plain and same else _validated_access_token


_access_token = _pick_access_token_builder()
