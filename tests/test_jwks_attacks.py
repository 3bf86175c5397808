"""What a hostile network path, a misbehaving issuer or an unusual-but-legal key set can do to the
jwt stage's key fetching, against a real HTTP server on 127.0.0.1. Every case must end in a clean,
bounded decision: never an accepted forgery, never unbounded memory, time or logging."""

from __future__ import annotations

import asyncio
import gzip
import logging
import tracemalloc
import zlib
from collections.abc import Collection
from typing import Any

import pytest

from fastapps_auth import ConfigError, ManualClock, TransientError, VerifierChain
from fastapps_auth.backends.http_json import FetchError, JSONClient, JSONResponse
from fastapps_auth.backends.jwks import MAX_JWKS_ENTRIES, MAX_KEYS, RemoteKeySource, parse_jwks
from fastapps_auth.endpoints import check_url
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwks_server import JWKSServer
from tests.support.jwt_mint import b64, claims, signing_key
from tests.support.jwt_stages import evaluate, remote

AUD = "api://mcp"


def source(st: JWTVerifier) -> RemoteKeySource:
    src = st._source
    assert isinstance(src, RemoteKeySource)
    return src


# -- redirects, slow and huge answers ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["http://keys.example/jwks.json", "https://keys.example/jwks.json", "loop"])
async def test_redirects_are_never_followed(clock: ManualClock, srv: JWKSServer, target: str) -> None:
    """A redirect (to plain http, to another host, or to itself) is a failed fetch, requested once."""
    location = srv.url + "/jwks.json" if target == "loop" else target
    srv.routes["/jwks.json"] = (302, b"", {"Location": location})
    st = remote(clock, srv)
    d = await asyncio.wait_for(evaluate(st, signing_key().token(claims(clock.time()))), 10)
    assert (d.status, d.error) == (503, "temporarily_unavailable")
    assert srv.total == 1
    await st.aclose()


async def test_redirected_discovery_is_not_followed(clock: ManualClock, srv: JWKSServer) -> None:
    issuer = srv.serve_discovery()
    srv.routes["/.well-known/openid-configuration"] = (301, b"", {"Location": "http://evil.example/meta"})
    srv.routes["/.well-known/oauth-authorization-server"] = (307, b"", {"Location": srv.url + "/"})
    srv.set_jwks([signing_key().jwk()])
    st = JWTVerifier(issuer_url=issuer, clock=clock, timeout=3.0, http_timeout=2.0)
    d = await evaluate(st, signing_key().token(claims(clock.time(), iss=issuer)))
    assert d.status == 503
    assert (srv.count("/"), srv.count("/jwks.json")) == (0, 0)
    await st.aclose()


async def test_dripping_answer_is_bounded_by_http_timeout(clock: ManualClock, srv: JWKSServer) -> None:
    """Slowloris from the server side: headers at once, then one byte every 50 ms, forever."""
    key = signing_key()
    srv.set_jwks([key.jwk()])
    srv.drip = 0.05
    st = remote(clock, srv, http_timeout=0.5, timeout=5.0)
    d = await asyncio.wait_for(evaluate(st, key.token(claims(clock.time()))), 10)
    assert d.status == 503
    assert "no answer within" in (source(st).last_error or "")
    await st.aclose()


def _bomb(size: int) -> bytes:
    return gzip.compress(b" " * size, 9)


async def test_compressed_bomb_is_refused_without_inflating_it(clock: ManualClock, srv: JWKSServer) -> None:
    """A small gzip body that inflates to 64 MiB: the limit applies to the inflated bytes, and
    inflation stops at the limit (no 64 MiB buffer, whatever the network chunk size)."""
    body = _bomb(64 * 1024 * 1024)
    assert len(body) < 128 * 1024
    srv.routes["/jwks.json"] = (200, body, {"Content-Encoding": "gzip"})
    http = JSONClient(timeout=5.0, max_bytes=64 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(FetchError, match="larger than 65536 bytes"):
            await http.get(srv.url + "/jwks.json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.1f} MB allocated to refuse a 64 KiB-limited answer"
    await http.aclose()


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "identity"])
async def test_compressed_jwks_is_accepted(clock: ManualClock, srv: JWKSServer, encoding: str) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()])
    plain = srv.routes["/jwks.json"][1]
    if encoding in ("gzip", "x-gzip"):
        body = gzip.compress(plain)
    elif encoding == "deflate":
        body = zlib.compress(plain)
    else:
        body = plain
    srv.routes["/jwks.json"] = (200, body, {"Content-Encoding": encoding})
    st = remote(clock, srv)
    d = await evaluate(st, key.token(claims(clock.time())))
    assert d.allowed, (d.reason, source(st).last_error)
    await st.aclose()


_RAW_DEFLATE = zlib.compressobj(wbits=-zlib.MAX_WBITS)


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("br", b"\x0b\x02\x80{}\x03"),  # not requested
        ("gzip", b"not gzip at all"),
        ("gzip", gzip.compress(b'{"keys": []}')[:-12]),  # truncated
        ("gzip, gzip", gzip.compress(gzip.compress(b'{"keys": []}'))),  # stacked: not requested
        ("deflate", _RAW_DEFLATE.compress(b'{"keys": []}') + _RAW_DEFLATE.flush()),  # deflate is zlib-wrapped
    ],
)
async def test_undecodable_or_unrequested_encoding_is_transient(
    clock: ManualClock, srv: JWKSServer, encoding: str, body: bytes
) -> None:
    srv.routes["/jwks.json"] = (200, body, {"Content-Encoding": encoding})
    st = remote(clock, srv)
    assert (await evaluate(st, signing_key().token(claims(clock.time())))).status == 503
    await st.aclose()


async def test_cookies_are_neither_kept_nor_sent(clock: ManualClock, srv: JWKSServer) -> None:
    """A key server setting cookies must not grow the client's jar, nor see them come back."""
    key = signing_key()
    st = remote(clock, srv, min_refresh_interval=1.0)
    for i in range(5):
        srv.set_jwks([key.jwk()])
        path, body, _ = srv.routes["/jwks.json"]
        srv.routes["/jwks.json"] = (path, body, {"Set-Cookie": f"c{i}={'x' * 100}; Path=/"})
        d = await evaluate(st, key.token(claims(clock.time()), kid=f"unknown-{i}"))
        assert d.reason == "unknown_key"
        clock.advance(1.0)
    assert srv.count() == 5
    assert all("cookie" not in h for h in srv.request_headers)
    client = source(st).http._client
    assert client is not None and len(client.cookies.jar) == 0
    await st.aclose()


# -- what the key set holds ---------------------------------------------------------------------------


def test_junk_entries_cost_bounded_work_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """256 KiB of ``1,1,1...`` is 130,000 entries: examined up to a bound, skipped with one warning."""
    caplog.set_level(logging.WARNING, logger="fastapps_auth.jwks")
    good = signing_key().jwk()
    late = signing_key("RS256", 1, kid="late").jwk()
    keys: list[Any] = [good, *([1] * 130_000), late]
    ks = parse_jwks({"keys": keys}, {"RS256"}, strict=False)
    assert [k.kid for k in ks.keys] == [good["kid"]]  # "late" is past the examined entries
    records = [r for r in caplog.records if r.name == "fastapps_auth.jwks"]
    assert len(records) <= 2, [r.getMessage()[:100] for r in records]
    assert any(str(MAX_JWKS_ENTRIES - 1) in r.getMessage() for r in records)


def test_thousands_of_usable_keys_keep_the_first_ones() -> None:
    jwk = signing_key("ES256").jwk()
    ks = parse_jwks({"keys": [dict(jwk, kid=str(i)) for i in range(2000)]}, {"ES256"}, strict=False)
    assert len(ks) == MAX_KEYS
    assert [k.kid for k in ks.keys] == [str(i) for i in range(MAX_KEYS)]


def _rsa_jwk(e: int, n: int, kid: str) -> dict[str, Any]:
    def enc(x: int) -> str:
        return b64(x.to_bytes((x.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "kid": kid, "use": "sig", "e": enc(e), "n": enc(n)}


def _odd(bits: int) -> int:
    return (1 << (bits - 1)) | 0x1234567 | 1


@pytest.mark.parametrize(
    ("kid", "e", "n_bits"),
    [
        pytest.param("e1", 1, 2048, id="e=1"),  # s^1 = s: anyone can "sign"
        pytest.param("e-even", 65536, 2048, id="e-even"),
        pytest.param("small", 65537, 1024, id="1024-bit"),
        pytest.param("huge-e", _odd(2040), 2048, id="2040-bit-e"),  # a private-key-sized exponentiation per token
        pytest.param("huge-n", 65537, 16392, id="16392-bit"),  # more than OpenSSL verifies: it never could
    ],
)
def test_unsound_rsa_keys_are_refused(kid: str, e: int, n_bits: int) -> None:
    n = signing_key().private.public_key().public_numbers().n if n_bits == 2048 else _odd(n_bits)  # type: ignore[union-attr]
    jwk = _rsa_jwk(e, n, kid)
    assert len(parse_jwks({"keys": [jwk]}, {"RS256"}, strict=False)) == 0
    with pytest.raises(ConfigError, match=r"keys\[0\]"):
        JWTVerifier(jwks={"keys": [jwk]}, algorithms=["RS256"])


def test_sound_rsa_exponents_are_kept() -> None:
    n = signing_key().private.public_key().public_numbers().n  # type: ignore[union-attr]
    ks = parse_jwks({"keys": [_rsa_jwk(3, n, "e3"), _rsa_jwk(65537, n, "f4")]}, {"RS256"}, strict=False)
    assert [k.kid for k in ks.keys] == ["e3", "f4"]


async def test_keys_with_the_wrong_use_alg_kty_or_crv_never_verify(clock: ManualClock, srv: JWKSServer) -> None:
    good = signing_key("RS256", 0, kid="good")
    ec = signing_key("ES256", 0, kid="ec-as-rs")
    ec384 = signing_key("ES256", 1, kid="p256-as-p384")
    rs = signing_key("RS256", 1, kid="rs-as-es")
    pss = signing_key("RS256", 2, kid="ps-only")
    srv.set_jwks(
        [
            good.jwk(),
            ec.jwk(alg="RS256"),  # an EC key claiming an RSA algorithm
            ec384.jwk(crv="P-384"),  # P-256 coordinates under another curve's name
            rs.jwk(alg="ES256"),
            pss.jwk(alg="PS256"),  # PS256 only: an RS256 token signed by it must not verify
            {**rs.jwk(kid="lower-kty"), "kty": "rsa"},
            {**rs.jwk(kid="alg-none"), "alg": "none"},
            {**rs.jwk(kid="use-list"), "use": ["sig"]},
            {"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": b64(b"\x09" + b"\x00" * 31)},
        ]
    )
    st = remote(clock, srv, algorithms=["RS256", "PS256", "ES256"])
    assert (await evaluate(st, good.token(claims(clock.time())))).allowed
    assert source(st).stats()["keys"] == 2  # good, ps-only
    for key in (ec, ec384, rs):
        assert (await evaluate(st, key.token(claims(clock.time())))).reason == "unknown_key"
    d = await evaluate(st, pss.token(claims(clock.time()), alg="RS256"))
    assert d.reason == "unsupported_algorithm"
    for kid in ("lower-kty", "alg-none", "use-list"):
        assert (await evaluate(st, rs.token(claims(clock.time()), kid=kid))).reason == "unknown_key"
    await st.aclose()


async def test_private_key_material_in_a_key_set_is_refused(clock: ManualClock, srv: JWKSServer) -> None:
    """A JWKS that publishes a private key lets anyone sign: that key must not verify anything."""
    key = signing_key("RS256", 0, kid="leaked")
    d = key.private.private_numbers().d  # type: ignore[union-attr]
    leaked = key.jwk(d=b64(d.to_bytes((d.bit_length() + 7) // 8, "big")))
    other = signing_key("ES256", 0, kid="fine")
    srv.set_jwks([leaked, other.jwk()])
    st = remote(clock, srv, algorithms=["RS256", "ES256"])
    assert (await evaluate(st, other.token(claims(clock.time())))).allowed
    assert (await evaluate(st, key.token(claims(clock.time())))).reason == "unknown_key"
    await st.aclose()
    with pytest.raises(ConfigError, match="private"):
        JWTVerifier(jwks={"keys": [leaked]}, algorithms=["RS256"])


async def test_duplicate_kids_each_tried(clock: ManualClock, srv: JWKSServer) -> None:
    old, new = signing_key("RS256", 0, kid="k"), signing_key("RS256", 1, kid="k")
    srv.set_jwks([old.jwk(), new.jwk()])
    st = remote(clock, srv)
    assert (await evaluate(st, old.token(claims(clock.time())))).allowed
    assert (await evaluate(st, new.token(claims(clock.time())))).allowed
    forged = signing_key("RS256", 2, kid="k").token(claims(clock.time()))
    assert (await evaluate(st, forged)).reason == "bad_signature"
    assert srv.count() == 1
    await st.aclose()


# -- rotation -------------------------------------------------------------------------------------------


async def test_new_kid_is_fetched_even_when_kidless_keys_exist(clock: ManualClock, srv: JWKSServer) -> None:
    """A kid the set does not know is an unknown key, also when keys without a kid are there to try."""
    anon = signing_key("RS256", 0, kid="anon")
    new = signing_key("RS256", 1, kid="new")
    srv.set_jwks([anon.jwk(kid=None)])
    st = remote(clock, srv, min_refresh_interval=1.0)
    assert (await evaluate(st, anon.token(claims(clock.time()), kid=None))).allowed
    srv.set_jwks([anon.jwk(kid=None), new.jwk()])
    clock.advance(1.0)
    d = await evaluate(st, new.token(claims(clock.time())))
    assert d.allowed, d.reason
    assert srv.count() == 2
    # Still rate-limited: a flood of random kids costs no fetch within the interval ...
    for i in range(10):
        forged = signing_key("RS256", 2, kid=f"r{i}").token(claims(clock.time()))
        assert (await evaluate(st, forged)).reason == "bad_signature"
    assert srv.count() == 2
    # ... and a kid-less key still answers a token naming an unknown kid (its signature decides).
    assert (await evaluate(st, anon.token(claims(clock.time(), jti="x"), kid="whatever"))).allowed
    await st.aclose()


async def test_removed_key_answers_from_the_cache_until_cache_ttl(clock: ManualClock, srv: JWKSServer) -> None:
    """Documented: a key removed from the set keeps validating already-seen tokens for at most
    ``cache_ttl``; ``clear_cache()`` ends that at once."""
    old, new = signing_key("RS256", 0, kid="old"), signing_key("RS256", 1, kid="new")
    srv.set_jwks([old.jwk()])
    st = remote(clock, srv, cache_ttl=60, min_refresh_interval=1.0)
    seen, seen2 = old.token(claims(clock.time())), old.token(claims(clock.time(), jti="2"))
    assert (await evaluate(st, seen)).allowed
    assert (await evaluate(st, seen2)).allowed
    srv.set_jwks([new.jwk()])
    clock.advance(1.0)
    assert (await evaluate(st, new.token(claims(clock.time())))).allowed  # the set is refreshed: "old" is gone
    assert (await evaluate(st, old.token(claims(clock.time(), jti="3")))).reason == "unknown_key"
    d = await evaluate(st, seen)
    assert d.allowed and d.trace[0].cache_hit
    clock.advance(59.0)
    assert (await evaluate(st, seen)).reason == "unknown_key"
    st.clear_cache()
    assert (await evaluate(st, seen2)).reason == "unknown_key"
    await st.aclose()


async def test_concurrent_start_and_first_tokens_share_one_fetch(clock: ManualClock, srv: JWKSServer) -> None:
    issuer = srv.serve_discovery()
    key = signing_key()
    srv.set_jwks([key.jwk()])
    srv.delay = 0.1
    st = JWTVerifier(issuer_url=issuer, clock=clock, timeout=3.0)
    chain = VerifierChain(st, clock=clock)
    token = key.token(claims(clock.time(), iss=issuer))
    results = await asyncio.gather(st.start(), st.start(), *(chain.verify_token(token) for _ in range(50)))
    assert all(r is not None for r in results[2:])
    assert srv.total == 2
    await st.aclose()


async def test_the_event_loop_keeps_running_during_a_slow_fetch(clock: ManualClock, srv: JWKSServer) -> None:
    key = signing_key()
    srv.set_jwks([key.jwk()])
    srv.delay = 0.3
    st = remote(clock, srv)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.get_running_loop().create_task(heartbeat())
    assert (await evaluate(st, key.token(claims(clock.time())))).allowed
    beat.cancel()
    assert ticks >= 5
    await st.aclose()


# -- where discovery may send us ------------------------------------------------------------------------------------


class _Metadata(JSONClient):
    """An HTTP client answering discovery with given metadata and any other URL with a key set: an https
    issuer cannot run here. The endpoint policy of the real client still applies to every URL."""

    def __init__(self, issuer: str, jwks_uri: str) -> None:
        super().__init__(timeout=1.0, max_bytes=1024)
        self.meta = {"issuer": issuer, "jwks_uri": jwks_uri}
        self.asked: list[str] = []

    async def get(self, url: str, *, loopback_http: bool = True, accept: Collection[int] = (200,)) -> JSONResponse:
        check_url(url, loopback_http=loopback_http)
        self.asked.append(url)
        if "/.well-known/" in url:
            return JSONResponse(200, self.meta, {})
        return JSONResponse(200, {"keys": [signing_key().jwk()]}, {})


@pytest.mark.parametrize(
    ("issuer", "jwks_uri", "followed"),
    [
        ("https://issuer.example", "https://keys.example/jwks.json", True),
        # a remote issuer's metadata must not send us to a plain-http service on this host
        ("https://issuer.example", "http://127.0.0.1:6379/jwks.json", False),
        ("https://issuer.example", "http://localhost/jwks.json", False),
        ("https://issuer.example", "http://[::1]/jwks.json", False),
        # an issuer on loopback (a dev issuer) may keep its keys there
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765/jwks.json", True),
    ],
)
async def test_discovery_sends_us_to_loopback_http_only_for_a_loopback_issuer(
    clock: ManualClock, issuer: str, jwks_uri: str, followed: bool
) -> None:
    http = _Metadata(issuer, jwks_uri)
    src = RemoteKeySource(allowed=["RS256"], clock=clock, issuer=issuer, http=http)
    if followed:
        assert len(await src.wait_keys()) == 1
        assert http.asked[-1] == jwks_uri
    else:
        with pytest.raises(TransientError, match="issuer is not on loopback"):
            await src.wait_keys()
        assert jwks_uri not in http.asked
    await src.aclose()
