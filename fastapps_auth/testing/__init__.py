"""Test helpers for users of fastapps-auth: a dev issuer, token minting, a chain trusting it, DPoP proofs,
the OAuth flows by hand (``Flow``, DPoP-bound with ``dpop=``), and signing in to a protected server
as a real MCP client does (``oauth_client``, ``HeadlessLogin``).

The pytest fixtures (``dev_issuer``, ``mint``, ``expired_token``, ``not_yet_valid_token``,
``rotate_keys``, ``auth_chain``) come from ``fastapps_auth.testing.plugin``, loaded
through the ``pytest11`` entry point. Names here are imported lazily, so loading the
plugin costs nothing until a test uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapps_auth.dev_issuer import DevIssuer, RunningIssuer
    from fastapps_auth.dev_issuer.server import BackgroundServer
    from fastapps_auth.testing.dpop import DPoPKey
    from fastapps_auth.testing.flow import Flow
    from fastapps_auth.testing.issuer import (
        TEST_AUDIENCE,
        Minter,
        issuer_chain,
        jwt_stage,
        start_issuer,
        tamper,
    )
    from fastapps_auth.testing.oauth import HeadlessLogin, LoginError, MemoryStorage, oauth_client

__all__ = [
    "TEST_AUDIENCE",
    "BackgroundServer",
    "DPoPKey",
    "DevIssuer",
    "Flow",
    "HeadlessLogin",
    "LoginError",
    "MemoryStorage",
    "Minter",
    "RunningIssuer",
    "issuer_chain",
    "jwt_stage",
    "oauth_client",
    "start_issuer",
    "tamper",
]

_WHERE = {
    "DevIssuer": "fastapps_auth.dev_issuer",
    "RunningIssuer": "fastapps_auth.dev_issuer",
    "BackgroundServer": "fastapps_auth.dev_issuer.server",
    "HeadlessLogin": "fastapps_auth.testing.oauth",
    "LoginError": "fastapps_auth.testing.oauth",
    "MemoryStorage": "fastapps_auth.testing.oauth",
    "oauth_client": "fastapps_auth.testing.oauth",
    "DPoPKey": "fastapps_auth.testing.dpop",
    "Flow": "fastapps_auth.testing.flow",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'fastapps_auth.testing' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_WHERE.get(name, "fastapps_auth.testing.issuer"))
    return getattr(module, name)
