"""The challenges of a refusal, for every combination the middleware meets: with and without a token, DPoP's
scheme or Bearer's, a proof's own error, step-up (the HTTP behaviour is in test_integration_challenges and
test_dpop_http; this is the table)."""

from __future__ import annotations

import json

import pytest

from fastapps_auth import Decision, RequestInfo
from fastapps_auth.integrations.asgi.responses import challenges, error_response

ALGS = ("ES256", "EdDSA")
META = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"


def refused(status: int, error: str | None, *, scheme: str | None = "bearer", **fields: object) -> Decision:
    reason = "missing_token" if error is None else error
    return Decision(
        allowed=False,
        access_token=None,
        status=status,
        reason=reason,
        error=error,
        description=f"{reason} happened" if error else None,
        request=RequestInfo(auth_scheme=scheme),
        **fields,  # type: ignore[arg-type]
    )


def rendered(decision: Decision, algs: tuple[str, ...] = ()) -> list[str]:
    return [c.render() for c in challenges(decision, resource_metadata=META, realm=None, dpop_algorithms=algs)]


@pytest.mark.parametrize(
    ("decision", "algs", "expected"),
    [
        (refused(401, None, scheme=None, scope="user"), (), [f'Bearer scope="user", resource_metadata="{META}"']),
        (
            refused(401, None, scheme=None),
            ALGS,
            [f'Bearer resource_metadata="{META}"', 'DPoP algs="ES256 EdDSA"'],
        ),
        (
            refused(403, "insufficient_scope", scope="user files:read"),
            (),
            [
                'Bearer error="insufficient_scope", error_description="insufficient_scope happened", '
                f'scope="user files:read", resource_metadata="{META}"'
            ],
        ),
        (
            refused(401, "invalid_token", scheme="dpop", scope="user"),
            ALGS,
            [
                f'Bearer scope="user", resource_metadata="{META}"',
                'DPoP error="invalid_token", error_description="invalid_token happened", scope="user", '
                'algs="ES256 EdDSA"',
            ],
        ),
        (
            refused(401, "invalid_dpop_proof", scheme="bearer"),
            ALGS,
            [
                f'Bearer resource_metadata="{META}"',
                'DPoP error="invalid_dpop_proof", error_description="invalid_dpop_proof happened", algs="ES256 EdDSA"',
            ],
        ),
        (
            refused(401, "invalid_token", scheme="bearer"),
            ALGS,
            [
                f'Bearer error="invalid_token", error_description="invalid_token happened", resource_metadata="{META}"',
                'DPoP algs="ES256 EdDSA"',
            ],
        ),
        (
            refused(401, "insufficient_user_authentication", scheme="dpop", scope="pay", acr_values="mfa", max_age=0),
            ALGS,
            [
                f'Bearer scope="pay", resource_metadata="{META}"',
                'DPoP error="insufficient_user_authentication", '
                'error_description="insufficient_user_authentication happened", scope="pay", acr_values="mfa", '
                'max_age="0", algs="ES256 EdDSA"',
            ],
        ),
        (refused(429, "rate_limited"), ALGS, []),
    ],
)
def test_the_challenges_of_a_refusal(decision: Decision, algs: tuple[str, ...], expected: list[str]) -> None:
    assert rendered(decision, algs) == expected


def test_the_body_says_what_the_challenge_says_and_the_nonce_is_a_header() -> None:
    decision = refused(401, "use_dpop_nonce", scheme="dpop", scope="user")
    status, headers, body = error_response(decision, dpop_algorithms=ALGS, dpop_nonce="n-1")
    assert status == 401 and (b"dpop-nonce", b"n-1") in headers
    assert json.loads(body) == {
        "error": "use_dpop_nonce",
        "error_description": "use_dpop_nonce happened",
        "scope": "user",
    }
    rate = refused(429, "rate_limited", scope="user")
    assert "scope" not in json.loads(error_response(rate)[2])  # a scope says nothing to a client that waits
