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

from fastapps_auth.backends.jwks import KeySet, KeySource, RemoteKeySource, parse_jwks, static_source
from fastapps_auth.backends.jwks.keys import (
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
from fastapps_auth.stage import Stage, Verification
from fastapps_auth.stages._audience import AudienceRule, configured_audiences
from fastapps_auth.stages._jwt_claims import ClaimRules
from fastapps_auth.stages._jwt_compact import Malformed, decode, json_object, split
from fastapps_auth.stages._jwt_options import DEFAULT_ALGORITHMS, JWTOptions

__all__ = ["DEFAULT_ALGORITHMS", "JWTOptions", "JWTVerifier"]

logger = logging.getLogger("fastapps_auth.jwt")
#: Distinct protected headers remembered (they repeat: one per key); the memo is cleared when full.
_MAX_HEADERS = 64


class JWTVerifier(Stage[JWTOptions]):
    """Verifies a JWT (signature, algorithm, claims) and builds the ``AccessToken``."""

    plugin_name: ClassVar[str] = "jwt"
    options_model: ClassVar[type[ComponentOptions]] = JWTOptions
    authenticates: ClassVar[bool] = True

    def __init__(
        self,
        options: JWTOptions | str | None = None,
        /,
        *,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
        **kwargs: Any,
    ) -> None:
        """``random``: the source of the key set refresh jitter (a float in [0, 1)); injectable for tests."""
        if isinstance(options, str):  # fastapps.JWTVerifier(issuer_url, ...) takes it positionally
            kwargs["issuer_url"] = options
            options = None
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        self._algorithms = self._check_algorithms(o)
        self._audience = AudienceRule(configured_audiences(o.audience, stage=self.name))
        self._rules = ClaimRules(
            issuer=o.issuer_url,
            audience=self._audience,
            required_scopes=tuple(dict.fromkeys(o.required_scopes)),
            leeway=float(o.leeway),
        )
        self._max_len = o.max_token_bytes
        self._typ = _norm_typ(o.require_typ) if o.require_typ else None
        self._cache = (
            VerifiedTokenCache(o.max_cached_tokens, o.cache_ttl)
            if o.cache_ttl > 0 and o.max_cached_tokens > 0
            else None
        )
        self._source = self._build_source(o, random)
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

    def _build_source(self, o: JWTOptions, random: Callable[[], float] | None) -> KeySource:
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
            jitter=o.jwks_refresh_jitter,
            random=random,
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
        if self.closed:
            raise TransientError("the jwt stage is closed")
        cache = self._cache
        if cache is not None:
            hit = cache.lookup(v.digest, v.now)  # None once past exp (+ leeway) or the cache TTL
            if hit is not None:
                v.cache_hit = True
                if hit.missing:
                    raise insufficient_scope(hit.missing)
                v.access_token = hit.access_token
                return
        v.cache_hit = False
        if not self._audience.warned:
            self._audience.warn_if_unchecked(logger, "jwt", self.name)
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
        at, expires, missing = self._rules.check(token, payload, v.now)
        if cache is not None:
            cache.store(v.digest, at, missing, now=v.now, expires=expires)
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

    # -- the audience -----------------------------------------------------------------------------

    def bind_resource(self, resource_url: str) -> None:
        """Accept only tokens whose ``aud`` is ``resource_url`` (RFC 8707), unless ``audience`` is configured.

        Compared canonically (scheme and host case-insensitive, default port and trailing slash
        ignored). Tokens cached before the binding are forgotten: they were accepted without it.
        """
        if self._audience.bind(resource_url, stage=self.name):
            self.clear_cache()

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the key set now (discovery and JWKS) instead of at the first token.

        A key server that is down at startup does not stop the application: the failure is
        logged once, tokens get 503 meanwhile, and the fetch is retried on use with backoff.
        """
        if self.closed:
            return
        self._audience.warn_if_unchecked(logger, "jwt", self.name)
        await self._source.start()

    async def probe(self) -> None:
        """Fetch the issuer's metadata and key set once (static keys: nothing to reach); raise if unusable."""
        await self._source.probe()

    async def aclose(self) -> None:
        """Cancel a key fetch in flight and close the HTTP client; the stage then refuses every token."""
        self.closed = True
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
