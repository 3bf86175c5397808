"""The dev issuer and the demo: minting cost against PyJWT, issuer start-up, sign-ins, the demo's wall time.

Minting is measured against PyJWT's ``jwt.encode`` with the same key and claims (the usual
hand-written test helper). Issuer start-up compares fresh keys with the per-process seed keys
the pytest fixtures reuse. A sign-in over HTTP (authorize with ``login_hint`` + token with
the PKCE verifier) is compared with a ``client_credentials`` token request, the cheapest grant.
The demo runs as ``fastapps-auth demo`` would, in a fresh interpreter; the issue's target is
under 30 s on a 2-core machine (skipped with --smoke).

    python -m benchmarks.bench_dev_issuer [--smoke]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from benchmarks.common import fmt_rate, rate, table, write_page, write_results
from fastapps_auth.dev_issuer import DevIssuer, KeyStore
from fastapps_auth.testing.issuer import _seed_keys, start_issuer

DEMO_TARGET_S = 30.0
ROOT = Path(__file__).resolve().parent.parent


def mint_rates(number: int, rounds: int) -> dict[str, float]:
    issuer = DevIssuer("http://127.0.0.1:8765", KeyStore(None), audience="api")
    rsa = issuer.keys.signing_key("RS256")
    pem = rsa.as_pem(private=True)
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, RSAPrivateKey)
    body = issuer.claims_for("alice", scopes=["read", "write"])
    headers = {"kid": rsa.kid, "typ": "at+jwt"}
    return {
        "dev issuer mint, RS256": rate(
            lambda: issuer.mint("alice", scopes=["read", "write"]), number=number, rounds=rounds
        ),
        "dev issuer mint, ES256": rate(
            lambda: issuer.mint("alice", scopes=["read", "write"], alg="ES256"), number=number, rounds=rounds
        ),
        "PyJWT encode, RS256 (baseline)": rate(
            lambda: pyjwt.encode(body, private, algorithm="RS256", headers=headers),
            number=number,
            rounds=rounds,
        ),
    }


def start_times(repeats: int) -> dict[str, float]:
    """Median seconds to start and stop a running issuer, fresh keys vs the fixtures' seed keys."""
    out: dict[str, float] = {}
    _seed_keys()  # generated once per process, as in a test session
    for label, seed in (("issuer start, fresh keys", False), ("issuer start, seed keys (fixtures)", True)):
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            issuer = start_issuer() if seed else start_issuer(seed=())
            issuer.stop()
            samples.append(time.perf_counter() - t0)
        samples.sort()
        out[label] = samples[len(samples) // 2]
    return out


def sign_in_rates(number: int, rounds: int) -> dict[str, float]:
    """Sign-ins per second over loopback HTTP: the code flow (two requests) and client credentials (one)."""
    issuer = start_issuer()
    redirect = "http://127.0.0.1/callback"
    try:
        with httpx.Client(timeout=10) as http:
            client = http.post(issuer.registration_endpoint, json={"redirect_uris": [redirect]}).json()
            auth = (client["client_id"], client["client_secret"])

            def code_flow() -> None:
                verifier = secrets.token_urlsafe(48)
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
                query = {"response_type": "code", "client_id": auth[0], "redirect_uri": redirect,
                         "code_challenge": challenge.decode(), "code_challenge_method": "S256",
                         "login_hint": "alice", "resource": "http://127.0.0.1:8000/mcp"}  # fmt: skip
                location = http.get(issuer.authorization_endpoint, params=query).headers["location"]
                code = httpx.URL(location).params["code"]
                data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                        "code_verifier": verifier}  # fmt: skip
                assert http.post(issuer.token_endpoint, data=data, auth=auth).status_code == 200

            cc = (issuer.client.client_id, issuer.client.secret)

            def client_credentials() -> None:
                data = {"grant_type": "client_credentials", "resource": "http://127.0.0.1:8000/mcp"}
                assert http.post(issuer.token_endpoint, data=data, auth=cc).status_code == 200

            return {
                "sign-in: authorize + token (code, PKCE)": rate(code_flow, number=number, rounds=rounds),
                "client_credentials token (baseline)": rate(client_credentials, number=number, rounds=rounds),
            }
    finally:
        issuer.stop()


def demo_seconds() -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fastapps_auth.demo"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return time.perf_counter() - t0, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    number, rounds, repeats = (20, 2, 2) if args.smoke else (300, 5, 7)

    mints = mint_rates(number, rounds)
    base = mints["PyJWT encode, RS256 (baseline)"]
    rows = [[label, fmt_rate(r), f"{r / base:.2f}x"] for label, r in mints.items()]
    mint_table = table(["minting", "rate", "vs PyJWT RS256"], rows)

    starts = start_times(repeats)
    fresh = starts["issuer start, fresh keys"]
    start_rows = [[label, f"{s * 1000:.1f} ms", f"{fresh / s:.2f}x"] for label, s in starts.items()]
    start_table = table(["start + stop", "median", "speed-up vs fresh keys"], start_rows)

    signs = sign_in_rates(number // 4 or 1, rounds)
    cc_rate = signs["client_credentials token (baseline)"]
    sign_rows = [[label, fmt_rate(r), f"{r / cc_rate:.2f}x"] for label, r in signs.items()]
    sign_table = table(["over HTTP (loopback)", "rate", "vs client_credentials"], sign_rows)

    body = f"## Minting\n\n{mint_table}\n\n## Starting an issuer\n\n{start_table}\n\n## Signing in\n\n{sign_table}\n"
    results = [
        {
            "label": "dev issuer mint RS256 vs PyJWT",
            "ratio": mints["dev issuer mint, RS256"] / base,
            "target": None,
            "note": f"{fmt_rate(mints['dev issuer mint, RS256'])} vs {fmt_rate(base)}",
        },
        {
            "label": "issuer start, seed keys vs fresh",
            "ratio": fresh / starts["issuer start, seed keys (fixtures)"],
            "target": None,
            "note": f"{starts['issuer start, seed keys (fixtures)'] * 1000:.0f} ms vs {fresh * 1000:.0f} ms",
        },
        {
            "label": "code-flow sign-in vs client_credentials",
            "ratio": signs["sign-in: authorize + token (code, PKCE)"] / cc_rate,
            "target": None,
            "note": f"{fmt_rate(signs['sign-in: authorize + token (code, PKCE)'])} vs {fmt_rate(cc_rate)}",
        },
    ]
    if not args.smoke:
        seconds, code = demo_seconds()
        demo_table = table(
            ["run", "wall time", "target", "target / time", "exit"],
            [["fastapps-auth demo (fresh interpreter)", f"{seconds:.1f} s", f"< {DEMO_TARGET_S:.0f} s",
              f"{DEMO_TARGET_S / seconds:.1f}x", code]],
        )  # fmt: skip
        body += f"\n## The demo\n\n{demo_table}\n"
        results.append(
            {
                "label": "demo wall time vs 30 s target",
                "ratio": DEMO_TARGET_S / seconds,
                "target": 1.0,
                "note": f"{seconds:.1f} s, exit {code}",
            }
        )
    print(body)
    if not args.smoke:
        write_page("dev_issuer", "Dev issuer and demo", body, packages=("joserfc", "pyjwt", "cryptography", "uvicorn"))
        write_results("dev_issuer", results, title="Dev issuer and demo")


if __name__ == "__main__":
    main()
