"""The ``dpop`` stage: a DPoP-bound token is accepted only with a valid proof of possession (RFC 9449).

It runs after the authenticating stage and reads the token's binding, ``cnf.jkt``, from the
``AccessToken``'s claims: a JWT's own claims (``jwt``) or an introspection response's
(``introspection``). A bound token needs the ``DPoP`` scheme and exactly one ``DPoP`` proof that
verifies (``fastapps_auth.backends.dpop.proof``), signed by the bound key, for this request's
method and URL, recent, carrying this token's hash, with a ``jti`` never seen before (the replay
cache) and, when server nonces are on, a nonce this server issued. ``mode = "required"`` refuses
unbound tokens too. The stage reads only ``RequestInfo`` (``method``, ``url``, ``auth_scheme``,
``dpop_proofs``): it knows no HTTP framework.

What the HTTP layer reads from it, to answer as RFC 9449 §7.1 and §9 say:

- ``DPoPStage.algorithms``: the proof algorithms accepted, for ``WWW-Authenticate: DPoP algs="..."``,
  a challenge sent beside the Bearer one on every 401 of a chain that has this stage.
- ``Decision.error``: ``invalid_dpop_proof`` and ``use_dpop_nonce`` (``DPOP_ERRORS``) belong on the
  DPoP challenge; so does ``invalid_token`` when the request used the DPoP scheme. Otherwise the
  error goes on the Bearer challenge.
- ``DPoPStage.nonce()``: the ``DPoP-Nonce`` to send with a 401 ``use_dpop_nonce`` and with any
  response to a request made with the DPoP scheme (``None`` when server nonces are off).
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from fastapps_auth.backends.dpop.nonce import NonceIssuer
from fastapps_auth.backends.dpop.proof import DEFAULT_ALGORITHMS, SUPPORTED_ALGORITHMS, ProofError, ProofVerifier
from fastapps_auth.backends.dpop.replay import ReplayStore, open_replay_store, replay_key
from fastapps_auth.backends.redis_client import RedisUnusable
from fastapps_auth.clock import Clock
from fastapps_auth.component import ComponentOptions
from fastapps_auth.errors import ConfigError, Rejected
from fastapps_auth.stage import Stage, StageOptions, Verification

logger = logging.getLogger("fastapps_auth.dpop")
#: The ``error`` codes of this stage that belong on the ``WWW-Authenticate: DPoP`` challenge.
DPOP_ERRORS = frozenset({"invalid_dpop_proof", "use_dpop_nonce"})
#: Longest ``cnf.jkt`` accepted (a SHA-256 thumbprint is 43 characters).
MAX_JKT_CHARS = 128


class DPoPOptions(StageOptions):
    """Options of the ``dpop`` stage."""

    mode: Literal["optional", "required"] = Field(
        default="optional",
        description="optional: bound tokens need a proof, unbound ones pass; required: every token must be bound.",
    )
    algorithms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        description=f"Proof algorithms accepted (asymmetric only: {', '.join(sorted(SUPPORTED_ALGORITHMS))}).",
    )
    max_age: float = Field(default=300.0, gt=0, le=3600, description="Oldest proof accepted (by its iat), seconds.")
    leeway: float = Field(default=30.0, ge=0, le=300, description="Clock skew tolerated on a proof's iat, seconds.")
    replay_cache: str = Field(
        default="memory://",
        description=(
            "Where seen jti live: memory:// (this process), or redis://, rediss://, redis+cluster://, "
            "redis+sentinel:// or unix:// (every worker; the same URLs as rate-limit's backend)."
        ),
    )
    replay_max_entries: int = Field(
        default=100_000, ge=1, description="memory://: most proofs remembered; beyond it proofs get on_error."
    )
    replay_prefix: str = Field(default="fastapps-auth:dpop", description="Redis: key prefix (the stage name follows).")
    replay_timeout: float = Field(default=0.2, gt=0, description="Redis: seconds a replay check may take.")
    replay_max_connections: int = Field(default=16, ge=1, le=1024, description="Redis: connections per process.")
    insecure_backend: bool = Field(default=False, description="Allow redis:// (no TLS) to a host other than loopback.")
    nonce: bool = Field(default=False, description="Require a server-provided nonce in every proof (DPoP-Nonce).")
    nonce_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key of the nonces, >= 32 bytes; set it in a fleet (default: random per process).",
    )
    nonce_lifetime: float = Field(
        default=300.0, gt=0, le=86400, description="A nonce is accepted for between this and twice this, seconds."
    )
    max_proof_bytes: int = Field(default=8192, gt=0, le=65536, description="Longer proofs are refused unparsed.")


def _invalid_proof(reason: str, description: str) -> Rejected:
    return Rejected(reason, description, error="invalid_dpop_proof", status=401)


def _bound_key(claims: dict[str, Any] | None) -> str | None:
    """The token's ``cnf.jkt``, ``None`` when it is not DPoP-bound; a malformed one is refused."""
    cnf = (claims or {}).get("cnf")
    if cnf is None:
        return None
    if type(cnf) is not dict:
        raise Rejected("dpop_bad_binding", "the token's cnf claim is malformed")
    jkt = cnf.get("jkt")
    if jkt is None:
        return None  # bound some other way (mTLS: x5t#S256), not by DPoP
    if type(jkt) is not str or not jkt or len(jkt) > MAX_JKT_CHARS:
        raise Rejected("dpop_bad_binding", "the token's cnf.jkt claim is malformed")
    return jkt


def token_hash(digest: bytes) -> str:
    """``ath``: base64url of the access token's SHA-256 (``digest``), without padding."""
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class DPoPStage(Stage[DPoPOptions]):
    """Checks a bound token's DPoP proof; refuses bound tokens sent as Bearer, and unbound ones when required.

    ``store`` injects a replay store instead of opening ``replay_cache`` (tests, shared stores).
    ``algorithms`` (the accepted proof algorithms) and ``nonce()`` are for the HTTP layer's
    challenge and ``DPoP-Nonce`` header.
    """

    plugin_name: ClassVar[str] = "dpop"
    options_model: ClassVar[type[ComponentOptions]] = DPoPOptions

    def __init__(
        self,
        options: DPoPOptions | None = None,
        /,
        *,
        clock: Clock | None = None,
        store: ReplayStore | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(options, clock=clock, **kwargs)
        o = self.options
        try:
            self._verifier = ProofVerifier(o.algorithms, max_bytes=o.max_proof_bytes)
        except ValueError as exc:
            raise ConfigError(str(exc), stage=self.name, key="algorithms") from None
        #: The proof algorithms accepted, in configured order (the challenge's ``algs``).
        self.algorithms: tuple[str, ...] = self._verifier.algorithms
        self.required = o.mode == "required"
        self._window = float(o.max_age) + float(o.leeway)
        self._leeway = float(o.leeway)
        self._nonces = self._nonce_issuer(o)
        self._store: ReplayStore = store if store is not None else self._open(o)
        self._warned = False

    def _nonce_issuer(self, o: DPoPOptions) -> NonceIssuer | None:
        if not o.nonce:
            if o.nonce_secret is not None:
                raise ConfigError("nonce_secret needs nonce = true", stage=self.name, key="nonce_secret")
            return None
        secret = o.nonce_secret.get_secret_value().encode() if o.nonce_secret is not None else None
        try:
            return NonceIssuer(secret, lifetime=o.nonce_lifetime)
        except ValueError as exc:
            raise ConfigError(str(exc), stage=self.name, key="nonce_secret") from None

    def _open(self, o: DPoPOptions) -> ReplayStore:
        safe_name = re.sub(r"[{}\s]", "_", self.name)
        try:
            return open_replay_store(
                o.replay_cache,
                clock=self.clock,
                max_entries=o.replay_max_entries,
                prefix=f"{o.replay_prefix}:{safe_name}",
                timeout=o.replay_timeout,
                max_connections=o.replay_max_connections,
                allow_plaintext=o.insecure_backend,
            )
        except ImportError as exc:
            raise ConfigError(
                f"replay_cache needs an optional dependency ({exc.name}): pip install 'fastapps-auth[redis]'",
                stage=self.name,
                key="replay_cache",
            ) from None
        except ValueError as exc:
            raise ConfigError(str(exc), stage=self.name, key="replay_cache") from None

    @property
    def store(self) -> ReplayStore:
        return self._store

    def nonce(self, now: float | None = None) -> str | None:
        """The ``DPoP-Nonce`` value to send now, or ``None`` when server nonces are off."""
        if self._nonces is None:
            return None
        return self._nonces.current(self.clock.time() if now is None else now)

    # -- the hot path ---------------------------------------------------------------------------------

    async def __call__(self, v: Verification) -> None:
        at = v.access_token
        if at is None:
            raise Rejected("unauthenticated", "no stage authenticated the token")
        req = v.request
        scheme = req.auth_scheme if req is not None else None
        proofs = req.dpop_proofs if req is not None else ()
        jkt = _bound_key(at.claims)
        if jkt is None:
            if self.required:
                raise Rejected("dpop_required", "this server accepts only DPoP-bound tokens")
            if scheme == "dpop":
                raise Rejected("dpop_not_bound", "the token is not DPoP-bound; send it with the Bearer scheme")
            if proofs and scheme == "bearer":
                raise Rejected("dpop_proof_with_bearer", "a DPoP proof was sent with the Bearer scheme", status=400)
            return
        if scheme == "bearer":
            raise Rejected("dpop_bound_as_bearer", "a DPoP-bound token must be sent with the DPoP scheme")
        if not proofs:
            raise _invalid_proof("dpop_proof_missing", "the request carries no DPoP proof")
        if len(proofs) > 1:
            raise _invalid_proof("dpop_proof_multiple", "the request carries more than one DPoP proof")
        if req is None or not req.method or not req.url:
            raise self._unverifiable()
        now = v.now
        try:
            proof = self._verifier.verify(proofs[0])
            # Remembered for as long as this proof could still be accepted: until iat + max_age + leeway.
            ttl = proof.check_request(req.method, req.url, now, window=self._window, leeway=self._leeway)
        except ProofError as exc:
            raise _invalid_proof(exc.reason, exc.description) from None
        if proof.ath is None:
            raise _invalid_proof("dpop_proof_missing_claim", "the DPoP proof has no ath claim")
        if proof.ath != token_hash(v.digest):
            raise _invalid_proof("dpop_proof_wrong_token", "the DPoP proof is for another access token")
        if proof.jkt != jkt:
            raise Rejected("dpop_key_mismatch", "the DPoP proof is not signed by the key the token is bound to")
        if self._nonces is not None:
            if proof.nonce is None:
                raise Rejected("dpop_nonce_required", "the DPoP proof needs the server's nonce", error="use_dpop_nonce")
            if not self._nonces.accepts(proof.nonce, now):
                raise Rejected("dpop_nonce_invalid", "the DPoP proof's nonce is not current", error="use_dpop_nonce")
        if not await self._store.first_use(replay_key(jkt, proof.jti), ttl):
            raise _invalid_proof("dpop_proof_replayed", "the DPoP proof was already used")

    def _unverifiable(self) -> Rejected:
        """A bound token without the request's method and URL: never accepted, never failed open (503)."""
        if not self._warned:
            self._warned = True
            logger.warning(
                "dpop stage %r got a DPoP-bound token without the request's method and URL: the HTTP layer must "
                "pass RequestInfo(method=, url=, auth_scheme=, dpop_proofs=) (fastapps_auth.integrations)",
                self.name,
            )
        return Rejected(
            "dpop_no_request",
            "the server cannot check the token's DPoP proof",
            error="temporarily_unavailable",
            status=503,
            retry_after=self.retry_after,
            transient=True,
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Redis now (one PING) instead of at the first proof; a failure is logged, not raised."""
        try:
            await self._ping()
        except Exception as exc:
            logger.warning("dpop stage %r cannot reach its replay cache yet (%s)", self.name, type(exc).__name__)

    async def probe(self) -> None:
        try:
            await self._ping()
        except RedisUnusable as exc:  # our own one-line reason: a cluster node behind redis://, a cluster not ok
            raise RuntimeError(f"replay cache unreachable ({exc})") from None
        except Exception as exc:
            raise RuntimeError(f"replay cache unreachable ({type(exc).__name__})") from None

    async def _ping(self) -> None:
        ping = getattr(self._store, "ping", None)  # a store with a service behind it has one
        if ping is not None:
            await ping()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._store.aclose()

    def stats(self) -> dict[str, float]:
        return {**self._verifier.stats(), **self._store.stats()}
