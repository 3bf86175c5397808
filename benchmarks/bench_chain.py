"""Full chain on a repeated token vs verifying the token's RS256 signature alone.

The chain is the one the issue names: jwt → user-status (SQLite, cached) → rate-limit (memory) → audit.
A client presents the same bearer token on every request, so the chain answers from its caches; the
alternatives verify the signature every time: bare ``cryptography`` RS256 verify (the floor of any
verifier that re-verifies), and PyJWT's ``jwt.decode`` (what ``fastapps.JWTVerifier`` does per request).
Target: chain >= 1x the bare RS256 verify rate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import jwt as pyjwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from benchmarks.common import fmt_rate, interleaved, table, write_page, write_results
from benchmarks.signing import AUDIENCE, ISSUER, b64, claims, jwt_options, keys
from fastapps_auth.chain import VerifierChain
from fastapps_auth.stages.audit import AuditObserver
from fastapps_auth.stages.jwt import JWTVerifier
from fastapps_auth.stages.rate_limit import RateLimitStage
from fastapps_auth.stages.user_status import UserStatusStage

TARGET = 1.0


def build_chain(db: Path, *, audit: bool = True, sample_allowed: float = 1.0, sink: str = "logging") -> VerifierChain:
    log = logging.getLogger("fastapps_auth.bench.audit")
    log.handlers[:] = [logging.NullHandler()]
    log.propagate = False
    log.setLevel(logging.INFO)  # every event is rendered to JSON, then dropped by the handler
    return VerifierChain(
        JWTVerifier(**jwt_options()),
        UserStatusStage(dsn=f"sqlite:///{db}"),
        RateLimitStage(limit=1_000_000_000, window=3600),
        observers=[
            AuditObserver(logger=log.name, sample_allowed=sample_allowed)
            if sink == "logging"
            else AuditObserver(sink="file", path=os.devnull, sample_allowed=sample_allowed)
        ]
        if audit
        else [],
    )


async def measure(number: int, rounds: int) -> dict[str, float]:
    k = keys()
    token = k.sign(claims("alice", time.time()), alg="RS256")
    head, _, sig64 = token.rpartition(".")
    signing_input = head.encode()
    sig = base64.urlsafe_b64decode(sig64 + "=" * (-len(sig64) % 4))
    assert b64(sig) == sig64
    pub = k.rsa.public_key()

    def bare() -> None:
        pub.verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())

    def pyjwt_decode() -> None:
        pyjwt.decode(token, pub, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "users.db"
        con = sqlite3.connect(db)
        with con:
            con.execute("CREATE TABLE users (id TEXT PRIMARY KEY, active INTEGER, banned INTEGER)")
            con.execute("INSERT INTO users VALUES ('alice', 1, 0)")
        con.close()
        chain = build_chain(db)
        sampled = build_chain(db, sample_allowed=0.01)
        to_file = build_chain(db, sink="file")
        bare_chain = build_chain(db, audit=False)
        try:
            for c in (chain, sampled, to_file, bare_chain):
                d = await c.evaluate(token)
                assert d.allowed, d.reason
            out = await interleaved(
                {
                    "bare RS256 verify (cryptography)": bare,
                    "PyJWT decode (RS256, per request)": pyjwt_decode,
                    "chain.evaluate (repeated token)": lambda: chain.evaluate(token),
                    "chain.verify_token (repeated token)": lambda: chain.verify_token(token),
                    "chain.evaluate, audit logging 1% of allowed (all refusals)": lambda: sampled.evaluate(token),
                    "chain.evaluate, audit to a file sink (buffered lines)": lambda: to_file.evaluate(token),
                    "chain.evaluate without the audit observer": lambda: bare_chain.evaluate(token),
                },
                number=number,
                rounds=rounds,
            )
            await chain.evaluate(token)  # an entry older than its cache_ttl expired during the run: refill it
            d = await chain.evaluate(token)
            assert d.allowed
            assert [t.cache_hit for t in d.trace][:2] == [True, True], d.trace
        finally:
            for c in (chain, sampled, to_file, bare_chain):
                await c.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="a few hundred calls; no pages written")
    args = parser.parse_args(argv)
    number, rounds = (200, 1) if args.smoke else (20_000, 5)
    rates = asyncio.run(measure(number, rounds))
    base = rates["bare RS256 verify (cryptography)"]
    chain = rates["chain.evaluate (repeated token)"]
    rows = [(name, fmt_rate(r), f"{r / base:.2f}x") for name, r in rates.items()]
    body = (
        "Full chain `jwt → user-status (SQLite, cached) → rate-limit (memory) → audit` on a repeated token, "
        "against verifying that token's RS256 signature alone, in the same process and run "
        f"(median of {rounds} rounds of {number:,} calls, the alternatives measured round-robin).\n\n"
        + table(["Verifier", "Rate", "vs bare RS256"], rows)
        + f"\n\nTarget: chain >= {TARGET:g}x bare RS256 verify. Measured: **{chain / base:.2f}x** "
        f"({'met' if chain / base >= TARGET else 'NOT met'}).\n\n"
        "Why: a repeated token is answered from the jwt stage's verified-token cache (keyed by the token's "
        "SHA-256, rechecked against `exp` on every hit), the user-status cache and an in-memory GCRA counter; "
        "no signature is verified and no query runs. The per-request alternatives pay a full RSA verify "
        "(plus, for PyJWT, parsing and claim checks) every time. The last three rows show what the audit observer "
        "(one JSON event rendered per logged decision, here through the stdlib logging module) costs on this path, "
        "sampled, or written to a file in batches instead of through the logging module.\n"
    )
    print(body)
    if not args.smoke:
        write_page("chain", "Full chain vs bare RS256 verify", body, packages=("cryptography", "pyjwt", "aiosqlite"))
        write_results(
            "chain",
            [
                {
                    "label": "chain (repeated token) vs bare RS256 verify",
                    "ratio": chain / base,
                    "target": TARGET,
                    "note": f"{fmt_rate(chain)} vs {fmt_rate(base)}",
                },
                {
                    "label": "chain, audit logging 1% of allowed, vs bare RS256 verify",
                    "ratio": rates["chain.evaluate, audit logging 1% of allowed (all refusals)"] / base,
                    "target": None,
                    "note": "the audit observer renders one JSON event per logged decision",
                },
                {
                    "label": "chain (repeated token) vs PyJWT decode",
                    "ratio": chain / rates["PyJWT decode (RS256, per request)"],
                    "target": None,
                    "note": f"{fmt_rate(chain)} vs {fmt_rate(rates['PyJWT decode (RS256, per request)'])}",
                },
            ],
            title="Full chain",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
