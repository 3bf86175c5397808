"""The jwt stage with static keys: algorithms, claims, scopes, the AccessToken, the cache, options."""

from __future__ import annotations

from typing import Any

import pytest

from fastapps_auth import ConfigError, ManualClock, VerifierChain
from fastapps_auth.config import chain_from_config
from fastapps_auth.stages.jwt import JWTOptions, JWTVerifier
from tests.support.jwt_mint import claims, hs_token, signing_key

ISS = "https://issuer.example/"
AUD = "api://mcp"
SECRET = b"s" * 32


def stage(clock: ManualClock, *keys: str, **options: Any) -> JWTVerifier:
    jwks = {"keys": [signing_key(alg).jwk() for alg in keys or ("RS256",)]}
    options.setdefault("algorithms", sorted({*(keys or ("RS256",))}))
    return JWTVerifier(jwks=jwks, issuer_url=ISS, audience=AUD, clock=clock, **options)


async def decide(st: JWTVerifier, token: str) -> Any:
    return await VerifierChain(st, clock=st.clock).evaluate(token)


@pytest.mark.parametrize(
    "alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
)
async def test_each_algorithm_verifies(clock: ManualClock, alg: str) -> None:
    st = stage(clock, alg)
    d = await decide(st, signing_key(alg).token(claims(clock.time())))
    assert d.allowed, d.reason
    assert d.access_token.subject == "user-1"


async def test_access_token_fields(clock: ManualClock) -> None:
    st = stage(clock)
    token = signing_key().token(claims(clock.time(), aud=["other", AUD], scope="a b", client_id="cli"))
    at = await VerifierChain(st, clock=clock).verify_token(token)
    assert at is not None
    assert at.token == token
    assert at.client_id == "cli"
    assert at.scopes == ["a", "b"]
    assert at.expires_at == int(clock.time()) + 3600
    assert at.subject == "user-1"
    assert at.resource == AUD
    assert at.claims is not None and at.claims["iss"] == ISS


@pytest.mark.parametrize(
    ("extra", "scopes"),
    [
        ({"scope": None, "scp": ["x", "y"]}, ["x", "y"]),
        ({"scope": None, "scp": "x y"}, ["x", "y"]),
        ({"scope": None, "permissions": ["read:a"]}, ["read:a"]),
        ({"scope": "a b", "permissions": ["b", "c"]}, ["a", "b", "c"]),
        ({"scope": None}, []),
        ({"scope": "a b a  b"}, ["a", "b"]),
    ],
)
async def test_scope_sources(clock: ManualClock, extra: dict[str, Any], scopes: list[str]) -> None:
    at = await VerifierChain(stage(clock), clock=clock).verify_token(signing_key().token(claims(clock.time(), **extra)))
    assert at is not None and at.scopes == scopes


@pytest.mark.parametrize(
    ("extra", "client"),
    [
        ({"client_id": "a", "azp": "b"}, "a"),
        ({"client_id": None, "azp": "b", "cid": "c"}, "b"),
        ({"client_id": None, "cid": "c"}, "c"),
        ({"client_id": None}, "user-1"),
    ],
)
async def test_client_id_sources(clock: ManualClock, extra: dict[str, Any], client: str) -> None:
    at = await VerifierChain(stage(clock), clock=clock).verify_token(signing_key().token(claims(clock.time(), **extra)))
    assert at is not None and at.client_id == client


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"exp": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"iss": None}, "missing_claim"),
        ({"aud": None}, "missing_claim"),
        ({"exp": "soon"}, "bad_claim"),
        ({"exp": True}, "bad_claim"),
        ({"exp": 1e400}, "malformed"),  # json.dumps writes Infinity, a non-JSON literal
        ({"exp": 1e300}, "bad_claim"),  # finite, but no time: expires_at would be a 301-digit integer
        ({"exp": 2.0**54}, "bad_claim"),  # as out of range as the integer 2**54
        ({"nbf": 1e300}, "bad_claim"),
        ({"iat": -1e300}, "bad_claim"),
        ({"nbf": True}, "bad_claim"),
        ({"iat": False}, "bad_claim"),
        ({"nbf": "x"}, "bad_claim"),
        ({"iat": [1]}, "bad_claim"),
        ({"sub": 5}, "bad_claim"),
        ({"sub": ""}, "bad_claim"),
        ({"aud": 5}, "bad_claim"),
        ({"aud": [AUD, 5]}, "bad_claim"),
        ({"scope": 5}, "bad_claim"),
        ({"permissions": {"a": 1}}, "bad_claim"),
        ({"scp": ["a", 1]}, "bad_claim"),
        ({"iss": ISS.rstrip("/")}, "wrong_issuer"),
        ({"iss": ISS + "x"}, "wrong_issuer"),
        ({"aud": "api://other"}, "wrong_audience"),
        ({"aud": []}, "wrong_audience"),
    ],
)
async def test_claim_rejections(clock: ManualClock, extra: dict[str, Any], reason: str) -> None:
    d = await decide(stage(clock), signing_key().token(claims(clock.time(), **extra)))
    assert not d.allowed
    assert (d.reason, d.status, d.error, d.stage) == (reason, 401, "invalid_token", "jwt")


async def test_time_claims_with_leeway(clock: ManualClock) -> None:
    now = int(clock.time())
    st = stage(clock, leeway=30)
    key = signing_key()
    assert (await decide(st, key.token(claims(now, exp=now - 29)))).allowed
    assert (await decide(st, key.token(claims(now, exp=now - 30)))).reason == "expired"
    assert (await decide(st, key.token(claims(now, nbf=now + 29)))).allowed
    assert (await decide(st, key.token(claims(now, nbf=now + 31)))).reason == "not_yet_valid"
    assert (await decide(st, key.token(claims(now, iat=now + 29)))).allowed
    assert (await decide(st, key.token(claims(now, iat=now + 31)))).reason == "issued_in_future"


async def test_fractional_time_claims(clock: ManualClock) -> None:
    now = clock.time()
    at = await VerifierChain(stage(clock), clock=clock).verify_token(
        signing_key().token(claims(now, exp=now + 100.75, nbf=now - 0.5, iat=now - 1.25))
    )
    assert at is not None and at.expires_at == int(now) + 100


async def test_no_audience_configured_accepts_any(clock: ManualClock) -> None:
    st = JWTVerifier(jwks={"keys": [signing_key().jwk()]}, clock=clock)
    at = await VerifierChain(st, clock=clock).verify_token(signing_key().token(claims(clock.time(), aud=None)))
    assert at is not None and at.resource is None


async def test_required_scopes_403(clock: ManualClock) -> None:
    st = stage(clock, required_scopes=["read", "admin"])
    key = signing_key()
    d = await decide(st, key.token(claims(clock.time(), scope="read")))
    assert (d.allowed, d.status, d.error, d.reason, d.scope) == (
        False,
        403,
        "insufficient_scope",
        "insufficient_scope",
        "admin",
    )
    # the same token again is a cache hit and is still refused: authorization is never cached away
    d2 = await decide(st, key.token(claims(clock.time(), scope="read")))
    assert d2.status == 403 and d2.trace[0].cache_hit is True
    assert (await decide(st, key.token(claims(clock.time(), scope="admin read")))).allowed


async def test_require_typ(clock: ManualClock) -> None:
    st = stage(clock, require_typ="at+jwt")
    key = signing_key()
    assert (await decide(st, key.token(claims(clock.time()), typ="at+jwt"))).allowed
    assert (await decide(st, key.token(claims(clock.time()), typ="application/at+JWT"))).allowed
    assert (await decide(st, key.token(claims(clock.time()), typ="JWT"))).reason == "wrong_type"
    assert (await decide(st, key.token(claims(clock.time()), typ=None))).reason == "wrong_type"


async def test_token_too_large(clock: ManualClock) -> None:
    st = stage(clock, max_token_bytes=1000)
    d = await decide(st, signing_key().token(claims(clock.time(), pad="x" * 1000)))
    assert d.reason == "token_too_large"


# -- the verified-token cache ---------------------------------------------------------------------------


async def test_cache_hit_reuses_access_token_and_rechecks_exp(clock: ManualClock) -> None:
    st = stage(clock, leeway=0, cache_ttl=10_000)
    chain = VerifierChain(st, clock=clock)
    now = int(clock.time())
    token = signing_key().token(claims(now, exp=now + 100))
    first = await chain.evaluate(token)
    second = await chain.evaluate(token)
    assert first.trace[0].cache_hit is False and second.trace[0].cache_hit is True
    assert second.access_token is first.access_token
    clock.advance(100)
    third = await chain.evaluate(token)
    assert (third.allowed, third.reason) == (False, "expired")


async def test_cache_ttl_caps_reuse(clock: ManualClock) -> None:
    st = stage(clock, cache_ttl=5)
    chain = VerifierChain(st, clock=clock)
    token = signing_key().token(claims(clock.time()))
    await chain.evaluate(token)
    assert (await chain.evaluate(token)).trace[0].cache_hit is True
    clock.advance(6)
    d = await chain.evaluate(token)
    assert d.allowed and d.trace[0].cache_hit is False


async def test_cache_is_bounded(clock: ManualClock) -> None:
    st = stage(clock, max_cached_tokens=3)
    chain = VerifierChain(st, clock=clock)
    tokens = [signing_key().token(claims(clock.time(), jti=str(i))) for i in range(5)]
    for t in tokens:
        assert (await chain.evaluate(t)).allowed
    assert st.stats()["cached_tokens"] == 3
    # the oldest were evicted, the newest are hits
    assert (await chain.evaluate(tokens[0])).trace[0].cache_hit is False
    assert (await chain.evaluate(tokens[4])).trace[0].cache_hit is True


async def test_cache_disabled(clock: ManualClock) -> None:
    st = stage(clock, cache_ttl=0)
    chain = VerifierChain(st, clock=clock)
    token = signing_key().token(claims(clock.time()))
    await chain.evaluate(token)
    assert (await chain.evaluate(token)).trace[0].cache_hit is False


async def test_rejections_are_not_cached(clock: ManualClock) -> None:
    st = stage(clock)
    chain = VerifierChain(st, clock=clock)
    token = signing_key().token(claims(clock.time(), aud="other"))
    await chain.evaluate(token)
    assert st.stats()["cached_tokens"] == 0


# -- key sources -----------------------------------------------------------------------------------------


async def test_pem_keys_inline_and_from_file(clock: ManualClock, tmp_path: Any) -> None:
    rsa_key, ec_key = signing_key("RS256"), signing_key("ES256")
    path = tmp_path / "ec.pem"
    path.write_text(ec_key.pem())
    st = JWTVerifier(public_keys=[rsa_key.pem(), str(path)], issuer_url=ISS, audience=AUD, clock=clock)
    chain = VerifierChain(st, clock=clock)
    assert await chain.verify_token(rsa_key.token(claims(clock.time()))) is not None
    assert await chain.verify_token(ec_key.token(claims(clock.time()), kid=None)) is not None
    # a key that is not configured does not verify, whatever kid it claims
    other = signing_key("RS256", index=1)
    assert (await chain.evaluate(other.token(claims(clock.time())))).reason == "bad_signature"


async def test_hs_secret(clock: ManualClock) -> None:
    st = JWTVerifier(hs_secret=SECRET.decode(), algorithms=["HS256"], issuer_url=ISS, audience=AUD, clock=clock)
    chain = VerifierChain(st, clock=clock)
    assert await chain.verify_token(hs_token(SECRET, claims(clock.time()))) is not None
    assert (await chain.evaluate(hs_token(b"t" * 32, claims(clock.time())))).reason == "bad_signature"
    assert (await chain.evaluate(hs_token(SECRET, claims(clock.time()), alg="HS512"))).reason == "unsupported_algorithm"
    assert "s" * 32 not in repr(st.options)


async def test_kid_selects_among_keys(clock: ManualClock) -> None:
    a, b = signing_key("RS256", 0, kid="a"), signing_key("RS256", 1, kid="b")
    st = JWTVerifier(jwks={"keys": [a.jwk(), b.jwk()]}, clock=clock)
    chain = VerifierChain(st, clock=clock)
    assert await chain.verify_token(a.token(claims(clock.time()))) is not None
    assert await chain.verify_token(b.token(claims(clock.time()))) is not None
    # a token without kid is tried against every key of its algorithm
    assert await chain.verify_token(b.token(claims(clock.time()), kid=None)) is not None
    # b's signature under a's kid fails
    assert (await chain.evaluate(b.token(claims(clock.time()), kid="a"))).reason == "bad_signature"
    assert (await chain.evaluate(b.token(claims(clock.time()), kid="zzz"))).reason == "unknown_key"


async def test_drop_in_for_fastapps_signature(clock: ManualClock) -> None:
    st = JWTVerifier("https://issuer.example/", audience=AUD, required_scopes=["read"])
    assert st.options.issuer_url == ISS and st.options.required_scopes == ["read"]
    st2 = JWTVerifier(issuer_url=ISS, audience=AUD, required_scopes=["read"])
    assert st2.name == "jwt"
    await st.aclose()
    await st2.aclose()


# -- configuration errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "issuer_url"),
        ({"issuer_url": "http://issuer.example"}, "issuer_url"),
        ({"jwks_uri": "ftp://x/jwks"}, "jwks_uri"),
        ({"issuer_url": ISS, "algorithms": ["none"]}, "algorithms"),
        ({"issuer_url": ISS, "algorithms": []}, "algorithms"),
        ({"issuer_url": ISS, "algorithms": ["HS256"]}, "algorithms"),
        ({"hs_secret": "x" * 32, "issuer_url": ISS}, "hs_secret"),
        ({"hs_secret": "short", "algorithms": ["HS256"]}, "hs_secret"),
        ({"hs_secret": "x" * 48, "algorithms": ["HS384", "RS256"]}, "algorithms"),
        ({"jwks": {"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}}, "jwks"),
        ({"jwks": {"nokeys": []}}, "jwks"),
        ({"jwks": {"keys": []}}, "jwks"),
        ({"public_keys": ["/nonexistent/key.pem"]}, "public_keys[0]"),
        ({"public_keys": ["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]}, "public_keys[0]"),
        ({"jwks_uri": "https://x/jwks", "public_keys": [signing_key().pem()]}, "jwks_uri"),
        ({"issuer_url": ISS, "on_error": "allow"}, "on_error"),
        ({"issuer_url": ISS, "bogus": 1}, "bogus"),
        ({"issuer_url": ISS, "leeway": -1}, "leeway"),
        ({"issuer_url": ISS, "audience": []}, "audience"),
    ],
)
def test_config_errors_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        JWTVerifier(**options)
    assert info.value.location.key == key
    assert "x" * 32 not in str(info.value)


def test_insecure_http_allowed_when_configured_and_on_loopback() -> None:
    JWTVerifier(issuer_url="http://127.0.0.1:9/")
    JWTVerifier(jwks_uri="http://localhost:9/jwks")
    JWTVerifier(issuer_url="http://issuer.internal/", allow_insecure_http=True)


def test_weak_rsa_key_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    pem = weak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ConfigError, match="too small"):
        JWTVerifier(public_keys=[pem])


def test_options_documented() -> None:
    for name, field in JWTOptions.model_fields.items():
        assert field.description, name


async def test_from_toml_config(clock: ManualClock, tmp_path: Any) -> None:
    key = signing_key("ES256")
    pem_path = tmp_path / "k.pem"
    pem_path.write_text(key.pem())
    cfg = tmp_path / "auth.toml"
    cfg.write_text(
        f"""
[[stages]]
use = "jwt"
issuer_url = "${{ISS}}"
audience = ["{AUD}", "other"]
public_keys = ["{pem_path}"]
algorithms = ["ES256"]
required_scopes = ["read"]
"""
    )
    chain = chain_from_config(cfg, clock=clock, env={"ISS": ISS})
    at = await chain.verify_token(key.token(claims(clock.time())))
    assert at is not None and at.resource == AUD
    await chain.aclose()


def test_toml_config_error_names_file_stage_key(tmp_path: Any) -> None:
    cfg = tmp_path / "auth.toml"
    cfg.write_text('[[stages]]\nuse = "jwt"\nissuer_url = "https://i/"\nleeway = "soon"\n')
    with pytest.raises(ConfigError) as info:
        chain_from_config(cfg)
    message = str(info.value)
    assert "auth.toml" in message and "jwt" in message and "leeway" in message


async def test_issuer_need_not_be_https_when_not_fetched(clock: ManualClock) -> None:
    key = signing_key()
    st = JWTVerifier(public_keys=[key.pem()], issuer_url="urn:example:issuer", clock=clock)
    at = await VerifierChain(st, clock=clock).verify_token(key.token(claims(clock.time(), iss="urn:example:issuer")))
    assert at is not None


async def test_rfc9864_ed25519_alg_name_in_jwk(clock: ManualClock) -> None:
    key = signing_key("EdDSA")
    st = JWTVerifier(jwks={"keys": [key.jwk(alg="Ed25519")]}, algorithms=["EdDSA"], clock=clock)
    assert await VerifierChain(st, clock=clock).verify_token(key.token(claims(clock.time()))) is not None


async def test_access_token_is_the_library_one_and_hides_the_token(clock: ManualClock) -> None:
    """The stage builds this library's AccessToken (the SDK's subclass) through pydantic: a validated model
    equal to one validated from its dump, that takes the SDK's place and never prints the raw token."""
    from mcp.server.auth.provider import AccessToken as SDKAccessToken

    from fastapps_auth import AccessToken

    token = signing_key().token(claims(clock.time(), aud=["other", AUD], scope="a b", client_id="cli", extra=[1]))
    at = await VerifierChain(stage(clock), clock=clock).verify_token(token)
    assert at is not None and type(at) is AccessToken and isinstance(at, SDKAccessToken)
    validated = AccessToken.model_validate(at.model_dump())
    assert at == validated
    assert at.model_fields_set == validated.model_fields_set
    assert type(at.expires_at) is int and at.claims is not None and at.claims["extra"] == [1]
    assert token not in repr(at) and token not in str(at)
    assert at.model_dump()["token"] == token
    at.scopes = ["changed"]  # an ordinary, mutable pydantic model
    assert at.model_dump()["scopes"] == ["changed"]
