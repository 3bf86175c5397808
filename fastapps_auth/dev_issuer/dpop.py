"""DPoP at the dev issuer's token endpoint (RFC 9449 §5): which key, if any, the tokens it issues are bound to.

A token request that carries a ``DPoP`` header gets its proof checked by the same code as the
``dpop`` stage's (``fastapps_auth.backends.dpop``): one proof, ``typ``, an accepted asymmetric
``alg``, a public ``jwk``, the signature, ``htm = POST``, ``htu`` = the token endpoint, ``iat``
within ``max_age`` and ``leeway``, and a ``jti`` not seen before (a bounded in-memory replay
cache: the dev issuer is one process). The proof's RFC 7638 thumbprint becomes the issued
tokens' ``cnf.jkt``. With ``nonce=True`` every proof must also carry a nonce this issuer gave out
(RFC 9449 §8, the stage's ``NonceIssuer``): a proof without one is refused ``use_dpop_nonce``, and
every answer carries the current nonce in ``DPoP-Nonce``.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapps_auth.backends.dpop.nonce import NonceIssuer
from fastapps_auth.backends.dpop.proof import DEFAULT_ALGORITHMS, ProofError, ProofVerifier
from fastapps_auth.backends.dpop.replay import MemoryReplayStore, replay_key
from fastapps_auth.clock import Clock


class NonceRequired(ProofError):
    """A proof without the issuer's current nonce: answered ``use_dpop_nonce`` with a ``DPoP-Nonce``."""


class TokenRequestProofs:
    """Checks the ``DPoP`` proofs of token requests; ``ProofError`` says why one is refused."""

    def __init__(
        self,
        clock: Clock,
        *,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        max_age: float = 300.0,
        leeway: float = 30.0,
        max_entries: int = 10_000,
        nonce: bool = False,
        nonce_lifetime: float = 300.0,
    ) -> None:
        self.clock = clock
        self._verifier = ProofVerifier(algorithms)
        self.algorithms: tuple[str, ...] = self._verifier.algorithms
        self._window = max_age + leeway
        self._leeway = leeway
        self._seen = MemoryReplayStore(max_entries=max_entries, clock=clock)
        self._nonces = NonceIssuer(lifetime=nonce_lifetime) if nonce else None

    def nonce(self) -> str | None:
        """The ``DPoP-Nonce`` to send now, ``None`` when nonces are off."""
        return self._nonces.current(self.clock.time()) if self._nonces is not None else None

    async def key(self, proofs: Sequence[str], token_endpoint: str) -> str | None:
        """The thumbprint of the key the request's one proof is signed with; ``None`` without a proof.

        A full replay cache raises ``TransientError`` (a proof is never accepted unremembered).
        """
        if not proofs:
            return None
        if len(proofs) > 1:
            raise ProofError("dpop_proof_multiple", "the request carries more than one DPoP proof")
        proof = self._verifier.verify(proofs[0])
        now = self.clock.time()
        ttl = proof.check_request("POST", token_endpoint, now, window=self._window, leeway=self._leeway)
        if self._nonces is not None:  # before the jti is remembered: the retry with the nonce is a new proof anyway
            if proof.nonce is None:
                raise NonceRequired("dpop_nonce_required", "the DPoP proof needs the server's nonce (DPoP-Nonce)")
            if not self._nonces.accepts(proof.nonce, now):
                raise NonceRequired("dpop_nonce_invalid", "the DPoP proof's nonce is not current (DPoP-Nonce)")
        if not await self._seen.first_use(replay_key(proof.jkt, proof.jti), ttl):
            raise ProofError("dpop_proof_replayed", "the DPoP proof was already used")
        return proof.jkt
