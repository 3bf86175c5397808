"""Internal tokens (``InternalTokens``, ``Downstream.mint_internal``): what they carry, how long they live, which
keys sign them. Verified with joserfc against the published JWKS, not by the code that signed them."""

from __future__ import annotations

from typing import Any, cast

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, KeySetSerialization, OKPKey, RSAKey

from fastapps_auth import AccessToken, ManualClock
from fastapps_auth.downstream import Downstream, DownstreamError, InternalTokens

ME = "https://mcp.example"


def user(clock: ManualClock, **overrides: Any) -> AccessToken:
    fields: dict[str, Any] = {
        "token": "user-token",
        "client_id": "inspector",
        "scopes": ["read", "calendar"],
        "subject": "alice",
        "expires_at": int(clock.time()) + 3600,
        "claims": {"iss": "https://auth.example", "sub": "alice"},
    }
    fields.update(overrides)
    return AccessToken(**fields)


def verify(minter: InternalTokens, token: str, alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = KeySet.import_key_set(cast(KeySetSerialization, minter.jwks()))
    decoded = jwt.decode(token, keys, algorithms=[alg])
    return dict(decoded.header), dict(decoded.claims)


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (ECKey.generate_key("P-256", parameters={"kid": "ec"}), "ES256"),
        (RSAKey.generate_key(2048, parameters={"kid": "rsa", "alg": "PS256"}), "PS256"),
        (OKPKey.generate_key("Ed25519"), "EdDSA"),
    ],
)
def test_the_token_names_the_user_this_server_and_the_original_issuer(clock: ManualClock, key: Any, alg: str) -> None:
    minter = InternalTokens(key, issuer=ME, clock=clock)
    header, claims = verify(minter, minter.mint(user(clock), audience="https://billing.internal", ttl=60), alg)
    assert header["typ"] == "at+jwt" and header["alg"] == alg and header["kid"] == minter.jwks()["keys"][0]["kid"]
    now = int(clock.time())
    assert claims == {
        "iss": ME,
        "sub": "alice",
        "aud": "https://billing.internal",
        "iat": now,
        "exp": now + 60,
        "jti": claims["jti"],
        "client_id": "inspector",
        "scope": "read calendar",
        "original_iss": "https://auth.example",
    }
    assert "d" not in minter.jwks()["keys"][0]  # only the public half is published


def test_it_never_outlives_the_users_token_and_jtis_differ(clock: ManualClock) -> None:
    minter = InternalTokens(ECKey.generate_key("P-256"), issuer=ME, clock=clock)
    soon = user(clock, expires_at=int(clock.time()) + 10)
    _, claims = verify(minter, minter.mint(soon, audience="svc", ttl=300), "ES256")
    assert claims["exp"] == int(clock.time()) + 10
    other = verify(minter, minter.mint(soon, audience="svc", ttl=300), "ES256")[1]
    assert other["jti"] != claims["jti"]
    with pytest.raises(DownstreamError) as expired:
        minter.mint(user(clock, expires_at=int(clock.time()) - 1), audience="svc")
    assert expired.value.error == "subject_expired"
    with pytest.raises(DownstreamError) as anonymous:
        minter.mint(user(clock, subject=None, claims={}), audience="svc")
    assert anonymous.value.error == "no_subject"


def test_a_key_per_call_and_a_key_as_a_jwk(clock: ManualClock) -> None:
    configured = ECKey.generate_key("P-256", parameters={"kid": "main"})
    minter = InternalTokens(dict(configured.as_dict(private=True)), issuer=ME, clock=clock)
    verify(minter, minter.mint(user(clock), audience="svc"), "ES256")
    special = RSAKey.generate_key(2048, parameters={"kid": "special"})
    token = minter.mint(user(clock), audience="svc", key=special)
    keys = KeySet.import_key_set({"keys": [special.as_dict(private=False)]})
    assert jwt.decode(token, keys, algorithms=["RS256"]).header["kid"] == "special"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (ECKey.generate_key("P-256").as_dict(private=False), "private key"),
        ({"kty": "EC", "crv": "P-256"}, "not a usable JWK"),
        (ECKey.generate_key("P-256", parameters={"alg": "RS256"}), "does not fit"),
    ],
)
def test_unusable_keys_are_refused_at_configuration(key: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InternalTokens(key, issuer=ME)


def test_ttl_audience_and_issuer_are_checked(clock: ManualClock) -> None:
    minter = InternalTokens(ECKey.generate_key("P-256"), issuer=ME, clock=clock)
    for ttl in (0, -1, 3601, float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            minter.mint(user(clock), audience="svc", ttl=ttl)
    with pytest.raises(ValueError, match="audience"):
        minter.mint(user(clock), audience="")
    with pytest.raises(ValueError, match="issuer"):
        InternalTokens(ECKey.generate_key("P-256"), issuer="")
    no_key = InternalTokens(None, issuer=ME)
    with pytest.raises(ValueError, match="no internal signing key"):
        no_key.mint(user(clock), audience="svc")
    assert no_key.jwks() == {"keys": []}


def test_outside_a_request_there_is_no_user_to_vouch_for(clock: ManualClock) -> None:
    d = Downstream(internal_key=ECKey.generate_key("P-256"), internal_issuer=ME, clock=clock)
    with pytest.raises(DownstreamError) as exc:
        d.mint_internal(audience="svc")
    assert exc.value.error == "no_request_token"
