"""The ``introspection`` stage: ask the authorization server about a token (RFC 7662).

``mode = "authenticate"`` (the default) builds the ``AccessToken`` from the answer, for opaque
tokens; its claims are the answer's, so ``dpop`` finds ``cnf.jkt`` there. ``mode = "check"`` runs
after a ``jwt`` stage and only learns whether a token that verified has been revoked; the jwt
stage's ``AccessToken`` is kept. Answers are cached by the token's SHA-256: active ones until
``min(exp, cache_ttl)``, inactive ones for ``negative_ttl``, in a bounded in-process cache and
optionally in Redis shared by every worker; concurrent lookups of one token share one request.
A cached answer means a token revoked meanwhile is still accepted until the entry's deadline.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import replace
from typing import Any, ClassVar

from fastapps_auth.backends.discovery import has_userinfo
from fastapps_auth.backends.http_json import FetchError
from fastapps_auth.backends.introspection import IntrospectionClient, SharedAnswers
from fastapps_auth.backends.redis_client import parse_redis_url
from fastapps_auth.backends.ttl_cache import TTLCache
from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.endpoints import check_url
from fastapps_auth.errors import ConfigError, Rejected, TransientError, insufficient_scope
from fastapps_auth.fingerprint import fingerprint
from fastapps_auth.stage import Stage, Verification
from fastapps_auth.stages._audience import AudienceRule, configured_audiences
from fastapps_auth.stages._introspection_answer import Answer, AnswerRules, MalformedAnswer
from fastapps_auth.stages._introspection_options import IntrospectionOptions

__all__ = ["JWT_CLAIM_FAILURES", "JWT_SIGNATURE_FAILURES", "IntrospectionOptions", "IntrospectionStage"]

logger = logging.getLogger("fastapps_auth.introspection")

#: A jwt stage's reasons for a well-formed JWT whose signature it could not verify. Inside an any-of,
#: a token an earlier alternative refused for one of these is not sent to introspection (unless
#: ``introspect_on_jwt_failure``): a forged JWT would cost the authorization server a request each.
JWT_SIGNATURE_FAILURES = frozenset({"bad_signature", "unknown_key", "unsupported_algorithm"})

#: A jwt stage's reasons for a JWT whose header or claims it refused (its signature verified, or was
#: never reached). Not sent to introspection either (unless ``introspect_on_jwt_failure``): the
#: issuer would say "active" about its own JWT, and an introspection stage with a looser rule (another
#: audience, none) would accept what the jwt stage refused: a token for another API, an ID token.
JWT_CLAIM_FAILURES = frozenset(
    {
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "missing_claim",
        "bad_claim",
        "wrong_issuer",
        "wrong_audience",
        "wrong_type",
        "unknown_critical_header",
    }
)

#: RFC 6750 §2.1 ``b64token``: what a bearer token is made of. Anything else is refused without a request.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class IntrospectionStage(Stage[IntrospectionOptions]):
    """Asks the introspection endpoint about the token; authenticates it, or checks a verified JWT's revocation."""

    plugin_name: ClassVar[str] = "introspection"
    options_model: ClassVar[type[ComponentOptions]] = IntrospectionOptions
    authenticates: ClassVar[bool] = True

    def __init__(
        self,
        options: IntrospectionOptions | None = None,
        /,
        *,
        clock: Clock | None = None,
        **kwargs: Any,
    ) -> None:
        mode = options.mode if isinstance(options, IntrospectionOptions) else kwargs.get("mode", "authenticate")
        self.check_only = mode == "check"
        if self.check_only:
            # A revocation check builds no AccessToken: it may run in shadow mode, and a chain needs
            # another stage that authenticates. (Shadows the class attribute for this instance only.)
            vars(self)["authenticates"] = False
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        if o.on_error != "deny":
            raise ConfigError(
                "the introspection stage cannot fail open: an unreachable endpoint would let revoked "
                "or unknown tokens through",
                stage=self.name,
                key="on_error",
            )
        endpoint = self._endpoint(o)
        self._audience = AudienceRule(configured_audiences(o.audience, stage=self.name))
        self._rules = AnswerRules(
            issuer=o.issuer_url,
            audience=self._audience,
            required_scopes=tuple(dict.fromkeys(o.required_scopes)),
            ttl=o.cache_ttl,
            negative_ttl=o.negative_ttl,
            check_only=self.check_only,
        )
        secret = o.client_secret.get_secret_value()
        if not o.client_id or not secret:
            raise ConfigError("client_id and client_secret must be non-empty", stage=self.name, key="client_secret")
        self._client = IntrospectionClient(
            client_id=o.client_id,
            client_secret=secret,
            clock=self.clock,
            endpoint=endpoint,
            issuer=o.issuer_url,
            auth_method=o.auth_method,
            timeout=o.timeout,
            max_bytes=o.max_response_bytes,
            allow_insecure_http=o.allow_insecure_http,
            max_connections=o.max_connections,
        )
        # With max_entries = 0 nothing is kept, but concurrent lookups of one token still share a request.
        self._cache: TTLCache[bytes, Answer] = TTLCache(max(1, o.max_entries), clock=self.clock)
        self._keep = o.max_entries > 0
        self._shared = self._open_shared(o, secret)
        self._shared_failing = False

    # -- construction -----------------------------------------------------------------------------

    def _endpoint(self, o: IntrospectionOptions) -> str | None:
        """The configured endpoint (checked), or ``None`` to discover it from ``issuer_url``."""
        url, key = (o.introspection_url, "introspection_url") if o.introspection_url else (o.issuer_url, "issuer_url")
        if url is None:
            raise ConfigError("set introspection_url, or issuer_url to discover it", stage=self.name, key=key)
        if has_userinfo(url):
            raise ConfigError(
                "the URL must not hold user information (user:password@): set client_id and client_secret",
                stage=self.name,
                key=key,
            )
        try:
            check_url(url, allow_insecure_http=o.allow_insecure_http)
        except ValueError as exc:
            raise ConfigError(str(exc), stage=self.name, key=key) from None
        return o.introspection_url

    def _open_shared(self, o: IntrospectionOptions, secret: str) -> SharedAnswers | None:
        if o.cache is None:
            return None
        # Answers of one authorization server to one client only: another server's answer about the same
        # string is not this one's, and a server may answer each client differently (RFC 7662 §2.2).
        server = fingerprint(o.introspection_url or o.issuer_url or "")
        client = fingerprint(o.client_id)
        # Entries are authenticated with a key only holders of the client secret can derive: whoever else
        # writes to the Redis can delete an entry (the token is asked again), never forge or alter one.
        key = hmac.new(secret.encode(), b"fastapps-auth introspection cache v1", hashlib.sha256).digest()
        try:
            url = parse_redis_url(o.cache, allow_plaintext=o.insecure_backend)
            return SharedAnswers(url, prefix=f"{o.cache_prefix}:{server}:{client}", key=key, timeout=o.cache_timeout)
        except ValueError as exc:
            raise ConfigError(str(exc), stage=self.name, key="cache") from None

    # -- the hot path ---------------------------------------------------------------------------------

    async def __call__(self, v: Verification) -> None:
        if self.closed:
            raise TransientError("the introspection stage is closed")
        if self.check_only:
            if v.access_token is None:
                raise Rejected("unauthenticated", "no stage authenticated the token")
        elif not self.options.introspect_on_jwt_failure:
            refused = _jwt_refused(v)
            if refused in JWT_SIGNATURE_FAILURES:
                raise Rejected("jwt_signature_failed", "the token is a JWT whose signature failed")
            if refused is not None:
                raise Rejected("jwt_refused", "the token is a JWT that an earlier alternative refused")
        if len(v.token) > self.options.max_token_bytes:
            raise Rejected("token_too_large", "the token is too large")
        if _B64TOKEN.fullmatch(v.token) is None:
            raise Rejected("malformed", "the token is not an RFC 6750 bearer token")
        found, answer = self._cache.get(v.digest)
        if found:
            v.cache_hit = True
        else:
            v.cache_hit = False
            if not self._audience.warned and not self.check_only:
                self._audience.warn_if_unchecked(logger, "introspection", self.name)
            token, now = v.token, v.now
            answer, _ = await self._cache.get_or_load(v.digest, lambda d: self._answer(token, d, now), self._ttl)
        assert answer is not None
        if answer.reason is not None:
            raise Rejected(answer.reason, answer.description)
        if answer.missing:
            raise insufficient_scope(answer.missing)
        if answer.access_token is not None:
            v.access_token = answer.access_token

    def _ttl(self, answer: Answer) -> float:
        """Seconds the in-process cache keeps ``answer``: until its deadline (none when the cache is off)."""
        return answer.until - self.clock.time() if self._keep else 0.0

    async def _answer(self, token: str, digest: bytes, now: float) -> Answer:
        """From the shared cache, else from the endpoint (then kept in both until the answer's deadline)."""
        shared = self._shared
        if shared is not None:
            stored = await self._shared_get(shared, digest)
            if stored is not None and stored[1] > now:  # past its deadline on this clock: not reused
                data, until = stored
                answer = self._judge(token, data, now)
                return replace(answer, until=min(answer.until, until))
        try:
            data = await self._client.introspect(token)
        except FetchError as exc:
            raise TransientError(f"introspection failed: {exc}") from None
        answer = self._judge(token, data, now)
        if shared is not None and answer.until > now:
            await self._shared_put(shared, digest, data, answer.until, now)
        return answer

    def _judge(self, token: str, data: dict[str, Any], now: float) -> Answer:
        try:
            return self._rules.judge(token, data, now)
        except MalformedAnswer as exc:
            raise TransientError(f"the introspection answer is malformed: {exc}") from None

    async def _shared_get(self, shared: SharedAnswers, digest: bytes) -> tuple[dict[str, Any], float] | None:
        try:
            found = await shared.get(digest)
        except Exception as exc:
            self._shared_failed(exc)
            return None
        self._shared_recovered()
        return found

    async def _shared_put(
        self, shared: SharedAnswers, digest: bytes, data: dict[str, Any], until: float, now: float
    ) -> None:
        try:
            await shared.put(digest, data, until=until, ttl=until - now)
        except Exception as exc:
            self._shared_failed(exc)

    def _shared_failed(self, exc: Exception) -> None:
        """Once per outage: the shared cache is skipped (every token is asked at the endpoint) until it answers."""
        if not self._shared_failing:
            self._shared_failing = True
            logger.warning(
                "introspection stage %r: the shared cache failed (%s); asking the endpoint until it is back",
                self.name,
                type(exc).__name__,
            )

    def _shared_recovered(self) -> None:
        if self._shared_failing:
            self._shared_failing = False
            logger.warning("introspection stage %r: the shared cache answers again", self.name)

    # -- the audience -----------------------------------------------------------------------------

    def bind_resource(self, resource_url: str) -> None:
        """Accept only tokens whose ``aud`` is ``resource_url`` (RFC 8707), unless ``audience`` is configured.

        Compared canonically, as the jwt stage does. Answers cached before the binding are forgotten.
        """
        if self.check_only:
            return  # the jwt stage before it checks the audience
        if self._audience.bind(resource_url, stage=self.name):
            self.clear_cache()

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Discover the endpoint now. An unreachable issuer is logged once; tokens get 503 meanwhile."""
        if self.closed:
            return
        if not self.check_only:
            self._audience.warn_if_unchecked(logger, "introspection", self.name)
        try:
            await self._client.discover()
        except FetchError as exc:
            logger.warning("introspection stage %r: discovery failed at start (%s); retrying on use", self.name, exc)

    async def probe(self) -> None:
        """Discover the endpoint and ask it about a made-up token (client authentication included); reach Redis."""
        if self.closed:
            raise FetchError("the introspection stage is closed")
        answer = await self._client.introspect(f"fastapps-auth-probe-{secrets.token_urlsafe(16)}")
        if answer.get("active") is not False:
            raise FetchError("the introspection endpoint says a made-up token is active")
        if self._shared is not None:
            await self._shared.probe()

    async def aclose(self) -> None:
        """Forget every answer, close the HTTP and Redis clients; the stage then refuses every token."""
        self.closed = True
        self._cache.clear()  # lookups in flight are detached; closing the client ends their requests
        await self._client.aclose()
        if self._shared is not None:
            await self._shared.aclose()

    def stats(self) -> dict[str, float]:
        out = {
            "cached_answers": float(len(self._cache) if self._keep else 0),
            "introspection_requests": float(self._client.http.requests),
            "introspections_in_flight": float(self._cache.stats()["inflight"]),
        }
        if self._shared is not None:
            out["shared_cache_hits"] = float(self._shared.hits)
            out["shared_cache_errors"] = float(self._shared.errors)
        return out

    def clear_cache(self) -> None:
        """Forget every cached answer in this process (the shared cache keeps its entries until they expire)."""
        self._cache.clear()


def _jwt_refused(v: Verification) -> str | None:
    """The reason an earlier alternative (in an any-of) refused this token as a JWT, if one did."""
    for t in v.trace:
        if t.outcome == "rejected" and (t.reason in JWT_SIGNATURE_FAILURES or t.reason in JWT_CLAIM_FAILURES):
            return t.reason
    return None
