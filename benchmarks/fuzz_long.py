"""Mutation fuzzing of the token path: generated and mutated tokens through a real ``jwt`` chain.

Every token goes through ``VerifierChain.evaluate`` with a ``jwt`` stage trusting a static key set.
Three invariants, checked for every token:

1. no exception escapes (``evaluate`` returns a ``Decision``);
2. nothing invalid is accepted: an allowed token is exactly one of the validly signed tokens minted here;
3. garbage is a rejection (401/403), never a 503 — with static keys a 503 could only come from an exception
   inside the stage, i.e. a parsing bug.

``python -m benchmarks.fuzz_long --count 1000000`` is the long run (its result is recorded in
docs/security.md); ``tests/test_fuzz_tokens.py`` runs a short one in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization

from benchmarks.signing import AUDIENCE, ISSUER, Keys, b64, claims, compact, jwt_options, keys
from fastapps_auth.chain import VerifierChain
from fastapps_auth.clock import ManualClock
from fastapps_auth.stages.jwt import JWTVerifier

NOW = 1_800_000_000.0
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
NASTY = ["", ".", "..", "=", "+", "/", " ", "\x00", "é", "\u202e", "\ud800", "%2e", "\n", "\t", "null", "{}", "[]"]


def build_chain(clock: ManualClock) -> VerifierChain:
    """The chain under test: the ``jwt`` stage on inline keys, checking issuer and audience."""
    return VerifierChain(JWTVerifier(clock=clock, **jwt_options()), clock=clock)


def valid_tokens(k: Keys) -> list[str]:
    """Tokens that must be accepted at ``NOW``: both algorithms, string and list audience."""
    return [
        k.sign(claims("alice", NOW), alg="RS256"),
        k.sign(claims("bob", NOW), alg="ES256"),
        k.sign(claims("carol", NOW, aud=[AUDIENCE, "other"]), alg="ES256"),
        k.sign(claims("dave", NOW, nbf=int(NOW) - 10, client_id="app-1"), alg="RS256"),
    ]


def _hs256(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    head = f"{b64(compact(header))}.{b64(compact(payload))}"
    return f"{head}.{b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())}"


def forged_tokens(k: Keys) -> dict[str, str]:
    """Tokens that are well formed but must be refused, by the attack or mistake each one models.

    (A validly signed payload with a duplicate claim is not here: RFC 7519 §4 lets a parser keep the
    lexically last member, which the ``jwt`` stage does; ``tests/test_fuzz_tokens.py`` checks that.)
    """
    good = claims("mallory", NOW)
    attacker = Keys(rsa_kid="rsa-1", ec_kid="ec-1")  # same kids, other keys
    pem = k.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk = attacker.jwks()["keys"][1]
    unsigned = f"{b64(compact({'alg': 'none', 'typ': 'JWT'}))}.{b64(compact(good))}"
    return {
        "alg_none": unsigned + ".",
        "alg_none_upper": f"{b64(compact({'alg': 'NONE'}))}.{b64(compact(good))}.",
        "hs256_with_public_key": _hs256(pem, {"alg": "HS256", "kid": "rsa-1"}, good),
        "attacker_key_same_kid": attacker.sign(good, alg="ES256"),
        "embedded_jwk": attacker.sign(good, alg="ES256", header={"alg": "ES256", "jwk": jwk}),
        "jku_header": attacker.sign(good, alg="ES256", header={"alg": "ES256", "jku": "https://evil.test/jwks"}),
        "x5u_header": attacker.sign(good, alg="ES256", header={"alg": "ES256", "x5u": "https://evil.test/x5"}),
        "unknown_kid": k.sign(good, alg="ES256", header={"alg": "ES256", "kid": "nope"}),
        "alg_swapped_rs_to_es": k.sign(good, alg="RS256", header={"alg": "ES256", "kid": "rsa-1"}),
        "crit_header": k.sign(good, alg="ES256", header={"alg": "ES256", "kid": "ec-1", "crit": ["exp"], "exp": 1}),
        "expired": k.sign(claims("mallory", NOW - 7200, lifetime=3600), alg="ES256"),
        "not_yet_valid": k.sign({**good, "nbf": int(NOW) + 3600}, alg="ES256"),
        "issued_in_future": k.sign({**good, "iat": int(NOW) + 3600}, alg="ES256"),
        "wrong_issuer": k.sign({**good, "iss": ISSUER + "/"}, alg="ES256"),
        "wrong_audience": k.sign({**good, "aud": "https://other.test"}, alg="ES256"),
        "no_exp": k.sign({key: v for key, v in good.items() if key != "exp"}, alg="ES256"),
        "exp_string": k.sign({**good, "exp": str(int(NOW) + 3600)}, alg="ES256"),
        "exp_bool": k.sign({**good, "exp": True}, alg="ES256"),
        "no_sub": k.sign({key: v for key, v in good.items() if key != "sub"}, alg="ES256"),
        "sub_not_string": k.sign({**good, "sub": 42}, alg="ES256"),
        "sub_empty": k.sign({**good, "sub": ""}, alg="ES256"),
        "aud_mixed_types": k.sign({**good, "aud": [AUDIENCE, 1]}, alg="ES256"),
        "nan_exp": k.sign_raw(
            compact({"alg": "ES256", "kid": "ec-1"}),
            compact({**good, "exp": 0}).replace(b'"exp":0', b'"exp":NaN'),
            alg="ES256",
        ),
        "payload_array": k.sign_raw(compact({"alg": "ES256", "kid": "ec-1"}), b"[1,2,3]", alg="ES256"),
        "jwe_five_parts": "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d",
        "signature_of_other_token": ".".join(
            [*k.sign(claims("alice", NOW), alg="ES256").split(".")[:2], k.sign(good, alg="ES256").split(".")[2]]
        ),
    }


# -- mutations ----------------------------------------------------------------------------------------


def _rand_text(rng: random.Random, n: int) -> str:
    pick = rng.random()
    if pick < 0.6:
        return "".join(rng.choice(ALPHABET) for _ in range(n))
    if pick < 0.8:
        return "".join(chr(rng.randrange(32, 127)) for _ in range(n))
    return "".join(rng.choice(NASTY) or chr(rng.randrange(0x10FFFF)) for _ in range(max(1, n // 4)))


def _resign_b64(rng: random.Random, part: str) -> str:
    """A segment replaced by base64url of JSON (or bytes) that is close to what was there."""
    try:
        obj = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except Exception:
        return b64(rng.randbytes(rng.randrange(0, 64)))
    if isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        choice = rng.randrange(6)
        if choice == 0:
            obj[key] = None
        elif choice == 1:
            obj[key] = rng.choice([0, -1, 2**63, 1e308, True, "", [], {}, "none", "admin"])
        elif choice == 2:
            del obj[key]
        elif choice == 3:
            obj[key] = {"nested": [obj.get(key)] * 3}
        elif choice == 4:
            obj["alg"] = rng.choice(["none", "HS256", "RS256", "ES256", "EdDSA", "PS256", "RS512", None, 1])
        else:
            obj["sub"] = "admin"
    return b64(compact(obj))


def mutate(rng: random.Random, token: str) -> str:
    """One to three random edits of ``token`` (character, segment and re-encoding level)."""
    t = token
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(12)
        n = len(t)
        i = rng.randrange(n + 1) if n else 0
        if op == 0 and n:  # flip one character
            t = t[:i] + rng.choice(ALPHABET) + t[i + 1 :]
        elif op == 1 and n:  # delete a span
            t = t[:i] + t[i + rng.randrange(1, 8) :]
        elif op == 2:  # insert text
            t = t[:i] + _rand_text(rng, rng.randrange(1, 8)) + t[i:]
        elif op == 3:  # truncate
            t = t[:i]
        elif op == 4:  # append
            t = t + _rand_text(rng, rng.randrange(1, 40))
        elif op == 5:  # swap two segments
            parts = t.split(".")
            if len(parts) >= 2:
                a, b = rng.sample(range(len(parts)), 2)
                parts[a], parts[b] = parts[b], parts[a]
                t = ".".join(parts)
        elif op == 6:  # duplicate or drop a segment
            parts = t.split(".")
            j = rng.randrange(len(parts))
            if rng.random() < 0.5:
                parts.insert(j, parts[j])
            else:
                parts.pop(j)
            t = ".".join(parts)
        elif op == 7:  # re-encode header or payload with a changed member
            parts = t.split(".")
            if len(parts) == 3:
                j = rng.choice((0, 1))
                parts[j] = _resign_b64(rng, parts[j])
                t = ".".join(parts)
        elif op == 8:  # empty the signature, or make it padded / standard base64
            parts = t.split(".")
            if len(parts) == 3:
                parts[2] = rng.choice(["", parts[2] + "=", parts[2].replace("-", "+").replace("_", "/"), "AA"])
                t = ".".join(parts)
        elif op == 9:  # case or whitespace games
            t = rng.choice([t.upper(), t.lower(), " " + t, t + "\n", t.replace(".", ". ")])
        elif op == 10:  # splice with another token
            other = rng.choice(_POOL) if _POOL else t
            t = t[:i] + other[i:]
        else:  # huge or tiny
            t = rng.choice([t * rng.randrange(2, 6), t[: rng.randrange(0, 12)], "." * rng.randrange(0, 6)])
    return t


def generate(rng: random.Random, valid: list[str], forged: list[str]) -> str:
    """One fuzz token: mostly mutations of valid and forged tokens, some pure noise."""
    r = rng.random()
    if r < 0.55:
        return mutate(rng, rng.choice(valid))
    if r < 0.85:
        return mutate(rng, rng.choice(forged))
    if r < 0.95:
        return ".".join(_rand_text(rng, rng.randrange(0, 60)) for _ in range(rng.choice((1, 2, 3, 3, 3, 4, 5))))
    return _rand_text(rng, rng.randrange(0, 400))


_POOL: list[str] = []


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Counts of one fuzz run; ``failures`` holds a few examples of each broken invariant (fingerprints)."""

    tokens: int = 0
    allowed: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


async def run(count: int, *, seed: int = 0, progress: Callable[[Report], None] | None = None) -> Report:
    """Evaluate ``count`` generated tokens (plus every valid and forged one) and check the invariants."""
    clock = ManualClock(NOW)
    chain = build_chain(clock)
    k = keys()
    valid = valid_tokens(k)
    forged = forged_tokens(k)
    _POOL[:] = valid + list(forged.values())
    accepted = set(valid)
    rep = Report()
    rng = random.Random(seed)
    t0 = time.perf_counter()

    def tokens() -> Iterator[str]:
        yield from valid
        yield from forged.values()
        for _ in range(count):
            yield generate(rng, valid, list(forged.values()))

    try:
        for token in tokens():
            rep.tokens += 1
            try:
                d = await chain.evaluate(token)
            except BaseException as exc:  # invariant 1
                rep.failures.append(f"{type(exc).__name__} escaped for a token of {len(token)} chars")
                continue
            rep.statuses[d.status] += 1
            if d.allowed:
                rep.allowed += 1
                if token not in accepted:  # invariant 2
                    rep.failures.append(f"accepted an invalid token (sub={d.subject!r}, len={len(token)})")
            else:
                rep.reasons[d.reason or "?"] += 1
                if d.status not in (401, 403):  # invariant 3
                    rep.failures.append(f"status {d.status} ({d.reason}) for garbage of {len(token)} chars")
            if progress is not None and rep.tokens % 100_000 == 0:
                rep.seconds = time.perf_counter() - t0
                progress(rep)
    finally:
        await chain.aclose()
    rep.seconds = time.perf_counter() - t0
    return rep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1_000_000, help="generated tokens (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def show(r: Report) -> None:
        print(f"  {r.tokens:>9,} tokens  {r.tokens / r.seconds:>9,.0f}/s  allowed {r.allowed:,}", flush=True)

    rep = asyncio.run(run(args.count, seed=args.seed, progress=show))
    print(f"\n{rep.tokens:,} tokens in {rep.seconds:.1f}s ({rep.tokens / rep.seconds:,.0f}/s), seed {args.seed}")
    print(f"allowed: {rep.allowed:,} (every one a validly minted token)" if rep.ok else "INVARIANTS BROKEN")
    print("statuses:", dict(sorted(rep.statuses.items())))
    print("top reasons:", ", ".join(f"{r} {n:,}" for r, n in rep.reasons.most_common(10)))
    for failure in rep.failures[:20]:
        print("FAIL:", failure)
    return 0 if rep.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
