"""Attacks on JWT verification, from RFC 7515/7519/8725/9068 and known CVEs. None may be accepted."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fastapps_auth import ConfigError, ManualClock
from fastapps_auth.stages.jwt import JWTVerifier
from tests.support.jwks_server import JWKSServer
from tests.support.jwt_mint import b64, b64json, claims, hs_token, signing_key
from tests.support.jwt_stages import evaluate

ISS = "https://issuer.example/"


def rs_stage(clock: ManualClock, **options: Any) -> JWTVerifier:
    options.setdefault("jwks", {"keys": [signing_key("RS256").jwk(), signing_key("ES256").jwk()]})
    options.setdefault("algorithms", ["RS256", "ES256"])
    return JWTVerifier(issuer_url=ISS, clock=clock, **options)


def forge(header: dict[str, Any], payload: dict[str, Any] | str, signature: bytes = b"") -> str:
    body = payload if isinstance(payload, str) else b64json(payload)
    return f"{b64json(header)}.{body}.{b64(signature)}"


# -- algorithm attacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "", None, 5, ["RS256"], {"a": 1}])
async def test_alg_none_and_garbage(clock: ManualClock, alg: Any) -> None:
    st = rs_stage(clock)
    for sig in (b"", b"x" * 256):
        d = await evaluate(st, forge({"alg": alg, "kid": "rs256-0"}, claims(clock.time(), iss=ISS), sig))
        assert not d.allowed
        assert d.reason == "unsupported_algorithm"


async def test_hmac_rsa_key_confusion(clock: ManualClock) -> None:
    """CVE-2015-9235 / CVE-2016-10555: an HS256 token 'signed' with the RSA public key as secret."""
    rsa = signing_key("RS256")
    st = rs_stage(clock)
    for secret in (rsa.pem().encode(), json.dumps(rsa.jwk()).encode()):
        token = hs_token(secret, claims(clock.time(), iss=ISS), kid="rs256-0")
        d = await evaluate(st, token)
        assert d.reason == "unsupported_algorithm"


async def test_token_algorithm_must_match_key(clock: ManualClock) -> None:
    rsa, ec256 = signing_key("RS256"), signing_key("ES256")
    st = JWTVerifier(
        jwks={"keys": [rsa.jwk(alg="RS384"), ec256.jwk()]}, algorithms=["RS256", "RS384", "ES256", "ES384"], clock=clock
    )
    # the JWK pins RS384: an RS256 token with its kid is refused even though RS256 is configured
    assert (await evaluate(st, rsa.token(claims(clock.time())))).reason == "unsupported_algorithm"
    # a P-256 key never verifies ES384
    d = await evaluate(st, forge({"alg": "ES384", "kid": "es256-0"}, claims(clock.time()), b"\x01" * 96))
    assert d.reason == "unsupported_algorithm"
    # an ES256 token under an RSA kid
    assert (await evaluate(st, ec256.token(claims(clock.time()), kid="rs256-0"))).reason == "unsupported_algorithm"


async def test_configured_algorithms_only(clock: ManualClock) -> None:
    ps = signing_key("PS256")
    st = JWTVerifier(jwks={"keys": [ps.jwk(alg=None)]}, algorithms=["RS256"], clock=clock)
    assert (await evaluate(st, ps.token(claims(clock.time())))).reason == "unsupported_algorithm"


def test_hs_secret_never_mixed_with_public_keys() -> None:
    with pytest.raises(ConfigError):
        JWTVerifier(hs_secret="k" * 32, algorithms=["HS256", "RS256"], public_keys=[signing_key().pem()])


# -- embedded and remote keys in the header ---------------------------------------------------------------


async def test_embedded_and_remote_key_headers_are_ignored(clock: ManualClock, srv: JWKSServer) -> None:
    """CVE-2018-0114 (jwk header) and jku/x5u/x5c: the token never chooses its own key."""
    attacker = signing_key("RS256", 7, kid="attacker")
    srv.set_jwks([attacker.jwk()])
    st = rs_stage(clock)
    headers: list[dict[str, Any]] = [
        {"jwk": attacker.jwk()},
        {"jku": srv.url + "/jwks.json"},
        {"x5u": srv.url + "/cert.pem"},
        {"x5c": ["MIIB"]},
    ]
    for extra in headers:
        d = await evaluate(st, attacker.token(claims(clock.time(), iss=ISS), **extra))
        assert d.reason == "unknown_key", extra
        d = await evaluate(st, attacker.token(claims(clock.time(), iss=ISS), kid="rs256-0", **extra))
        assert d.reason == "bad_signature", extra
    assert srv.total == 0


@pytest.mark.parametrize(
    "kid", ["../../../../dev/null", "' OR '1'='1", "rs256-0\x00", "a" * 5000, "${jndi:ldap://x}", "rs256-0 "]
)
async def test_kid_injection(clock: ManualClock, kid: str) -> None:
    attacker = signing_key("RS256", 7)
    d = await evaluate(rs_stage(clock), attacker.token(claims(clock.time(), iss=ISS), kid=kid))
    assert d.reason == "unknown_key"


@pytest.mark.parametrize("kid", [5, ["rs256-0"], {"$ne": None}, True])
async def test_kid_must_be_a_string(clock: ManualClock, kid: Any) -> None:
    d = await evaluate(rs_stage(clock), signing_key().token(claims(clock.time(), iss=ISS), kid=kid))
    assert d.reason == "malformed"


# -- signature attacks ------------------------------------------------------------------------------------


def test_cryptography_rejects_psychic_signatures() -> None:
    """CVE-2022-21449: r = s = 0 must never verify (checked in the library, and again by the stage)."""
    pub = signing_key("ES256").private.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # order of P-256
    for r, s in ((0, 0), (n, n), (0, 1)):
        with pytest.raises((InvalidSignature, ValueError)):
            pub.verify(encode_dss_signature(r, s), b"anything", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
async def test_psychic_signature_rejected(clock: ManualClock, alg: str) -> None:
    key = signing_key(alg)
    st = JWTVerifier(jwks={"keys": [key.jwk()]}, algorithms=[alg], clock=clock)
    size = {"ES256": 64, "ES384": 96, "ES512": 132}[alg]
    for sig in (bytes(size), b"\x00" * (size // 2) + b"\x01" + bytes(size // 2 - 1)):
        d = await evaluate(st, forge({"alg": alg, "kid": key.kid}, claims(clock.time()), sig))
        assert d.reason == "bad_signature"


async def test_ecdsa_signature_length_exact(clock: ManualClock) -> None:
    key = signing_key("ES256")
    st = JWTVerifier(jwks={"keys": [key.jwk()]}, algorithms=["ES256"], clock=clock)
    good = key.token(claims(clock.time()))
    h, p, s = good.split(".")
    raw = base64.urlsafe_b64decode(s + "==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    assert (await evaluate(st, f"{h}.{p}.{b64(der)}")).reason == "bad_signature"  # DER, not raw r||s
    padded = b64(b"\x00" + raw)
    assert (await evaluate(st, f"{h}.{p}.{padded}")).reason == "bad_signature"
    assert (await evaluate(st, good)).allowed


async def test_signature_stripping_and_tampering(clock: ManualClock) -> None:
    key = signing_key()
    st = rs_stage(clock)
    good = key.token(claims(clock.time(), iss=ISS))
    h, p, s = good.split(".")
    assert (await evaluate(st, f"{h}.{p}.")).reason == "bad_signature"
    evil = b64json(claims(clock.time(), iss=ISS, sub="admin"))
    assert (await evaluate(st, f"{h}.{evil}.{s}")).reason == "bad_signature"
    other = signing_key("RS256", 1).token(claims(clock.time(), iss=ISS))
    assert (await evaluate(st, f"{h}.{p}.{other.split('.')[2]}")).reason == "bad_signature"
    assert (await evaluate(st, good)).allowed


async def test_non_canonical_base64_signature(clock: ManualClock) -> None:
    """A signature with different unused trailing bits decodes to the same bytes: still refused."""
    key = signing_key()
    st = rs_stage(clock)
    good = key.token(claims(clock.time(), iss=ISS))
    h, p, s = good.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(s[-1])
    twin = s[:-1] + alphabet[last ^ 1]  # 256-byte signatures leave 4 unused bits in the last char
    assert (await evaluate(st, f"{h}.{p}.{twin}")).reason == "malformed"
    for variant in (s + "==", s.replace("-", "+").replace("_", "/"), s + "\n"):
        if variant != s:
            assert (await evaluate(st, f"{h}.{p}.{variant}")).reason in ("malformed", "bad_signature")
            assert not (await evaluate(st, f"{h}.{p}.{variant}")).allowed


# -- header attacks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["http://example.com/ext"], [], "b64"])
async def test_unknown_crit_rejected(clock: ManualClock, crit: Any) -> None:
    """RFC 7515 §4.1.11 / RFC 7797: extensions we do not understand must not be ignored."""
    key = signing_key()
    token = key.token(claims(clock.time(), iss=ISS), crit=crit, b64=False, exp=1)
    assert (await evaluate(rs_stage(clock), token)).reason == "unknown_critical_header"


async def test_duplicate_header_members_rejected(clock: ManualClock) -> None:
    header = b64(b'{"alg":"none","alg":"RS256","kid":"rs256-0"}')
    body = b64json(claims(clock.time(), iss=ISS))
    assert (await evaluate(rs_stage(clock), f"{header}.{body}.{b64(b'x' * 256)}")).reason == "malformed"


async def test_typ_confusion_with_id_token(clock: ManualClock) -> None:
    """RFC 9068 / RFC 8725 §3.11: with require_typ an ID token (typ JWT) is not an access token."""
    st = rs_stage(clock, require_typ="at+jwt")
    assert (await evaluate(st, signing_key().token(claims(clock.time(), iss=ISS)))).reason == "wrong_type"


# -- parsing attacks ------------------------------------------------------------------------------------------------


def _signed(raw_payload: bytes, clock: ManualClock) -> str:
    key = signing_key()
    h = b64json({"alg": "RS256", "kid": key.kid})
    si = f"{h}.{b64(raw_payload)}"
    return f"{si}.{b64(key.sign_bytes(si.encode()))}"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[1, 2]", "malformed"),
        (b'"just a string"', "malformed"),
        (b"null", "malformed"),
        (b"{" + b'"a":' * 1 + b"[" * 5000 + b"]" * 5000 + b"}", "malformed"),
        (b'{"exp": NaN, "sub": "x"}', "malformed"),
        (b'{"exp": Infinity, "sub": "x"}', "malformed"),
        (b'{"exp": 1e400, "sub": "x"}', "bad_claim"),
        (b'{"exp": 99999999999999999999999, "sub": "x"}', "bad_claim"),
        (b'{"exp": "1900000000", "sub": "x"}', "bad_claim"),
        (b'{"sub": "x", "sub": "admin", "exp": 1900000000}', "missing_claim"),  # last wins; no iss
        (b"\xff\xfe{}", "malformed"),
        (b'{"a": "\xc3\x28"}', "malformed"),
        (b"", "malformed"),
    ],
)
async def test_hostile_payloads_are_clean_rejections(clock: ManualClock, payload: bytes, reason: str) -> None:
    d = await evaluate(rs_stage(clock), _signed(payload, clock))
    assert (d.allowed, d.reason, d.status) == (False, reason, 401)


@pytest.mark.parametrize(
    "token",
    [
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",  # JWE compact serialization
        "....",
        "eyJhbGciOiJSUzI1NiJ9..",
        "not a token",
        "é.é.é",
        "eyJhbGciOiJSUzI1NiJ9\n.e30.AA",
        " eyJhbGciOiJSUzI1NiJ9.e30.AA",
        "eyJhbGciOiJSUzI1NiJ9.e30.A",  # impossible base64 length
        "eyJhbGciOiJSUzI1NiJ9=.e30.AA",
    ],
)
async def test_malformed_tokens(clock: ManualClock, token: str) -> None:
    d = await evaluate(rs_stage(clock), token)
    assert (d.allowed, d.reason) == (False, "malformed")


async def test_oversized_token_rejected_before_parsing(clock: ManualClock) -> None:
    st = rs_stage(clock)
    token = "A" * 20000 + "." + "B" * 10 + "." + "C"
    assert (await evaluate(st, token)).reason == "token_too_large"


async def test_expired_token_with_valid_signature(clock: ManualClock) -> None:
    now = int(clock.time())
    d = await evaluate(rs_stage(clock), signing_key().token(claims(now, iss=ISS, exp=now - 3600, iat=now - 7200)))
    assert d.reason == "expired"


async def test_raw_token_never_logged(clock: ManualClock, srv: JWKSServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    srv.status_override = 503
    key = signing_key()
    st = JWTVerifier(jwks_uri=srv.url + "/jwks.json", clock=clock, timeout=2, http_timeout=1)
    tokens = [key.token(claims(clock.time())), "garbage." + key.token(claims(clock.time())).split(".", 1)[1]]
    for t in tokens:
        d = await evaluate(st, t)
        assert not d.allowed
        for part in t.split("."):
            if len(part) > 8:
                assert part not in caplog.text
                assert part[:16] not in caplog.text
    await st.aclose()


# -- lone UTF-16 surrogates (I-JSON, RFC 7493): no encoding can write them, every consumer reads them its own way --


def _with_member(clock: ManualClock, member: str) -> bytes:
    """The typical payload with one more member, written as raw JSON text (escapes kept as written)."""
    body = json.dumps(claims(clock.time(), iss=ISS))
    return (body[:-1] + ", " + member + "}").encode()


@pytest.mark.parametrize(
    ("member", "nick"),
    [
        ('"sub": "ali\\ud800ce"', None),  # a lone high surrogate in the subject (the last "sub" wins)
        ('"nick": "\\udfff"', None),  # a lone low surrogate
        ('"\\ud800": "x"', None),  # in a member name
        ('"tags": [{"a": ["ok", "\\uDBFF"]}]', None),  # nested, upper-case escape
        ('"nick": "\\ude00\\ud83d"', None),  # a pair in the wrong order is two lone halves
        ('"nick": "\\ud83d\\ude00"', "\U0001f600"),  # an escaped pair is one character: accepted
        ('"nick": "\\\\ud800"', "\\ud800"),  # an escaped backslash, then the letters: no surrogate
    ],
)
async def test_lone_surrogates_are_malformed(clock: ManualClock, member: str, nick: str | None) -> None:
    d = await evaluate(rs_stage(clock), _signed(_with_member(clock, member), clock))
    if nick is None:
        assert (d.allowed, d.reason, d.status) == (False, "malformed", 401)
        return
    assert d.allowed
    assert d.access_token is not None
    assert d.access_token.claims is not None
    assert d.access_token.claims["nick"] == nick


async def test_a_lone_surrogate_in_the_header_is_malformed(clock: ManualClock) -> None:
    key = signing_key()
    header = b'{"alg": "RS256", "kid": "' + key.kid.encode() + b'", "x": "\\ud800"}'
    si = f"{b64(header)}.{b64json(claims(clock.time(), iss=ISS))}"
    d = await evaluate(rs_stage(clock), f"{si}.{b64(key.sign_bytes(si.encode()))}")
    assert (d.allowed, d.reason) == (False, "malformed")


# -- scope claims ------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", ["\u00a0", "\t", "\n", "\u2003", "\u3000"])
async def test_scopes_are_delimited_by_spaces_only(clock: ManualClock, space: str) -> None:
    """RFC 6749 §3.3: a scope string is delimited by U+0020; any other whitespace is part of a scope."""
    st = rs_stage(clock, required_scopes=["admin"])
    token = signing_key("RS256").token(claims(clock.time(), iss=ISS, scope=f"read{space}admin"))
    d = await evaluate(st, token)
    assert not d.allowed and d.reason == "insufficient_scope"
    ok = await evaluate(rs_stage(clock), token)
    assert ok.allowed and ok.access_token is not None and ok.access_token.scopes == [f"read{space}admin"]
