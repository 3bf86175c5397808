"""pytest plugin (entry point ``pytest11``): fixtures are inert until a test asks for them.

Importing this module imports nothing but pytest; the dev issuer, keys and stages
load inside the fixtures. Override ``dev_issuer_audience`` in a conftest to change
the audience that tokens carry and the chain expects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fastapps_auth.chain import VerifierChain
    from fastapps_auth.dev_issuer import RunningIssuer
    from fastapps_auth.testing.issuer import Minter

try:  # pytest-asyncio makes ``auth_chain`` an async fixture; without it the fixture says what to install.
    from pytest_asyncio import fixture as _async_fixture
except Exception:  # pragma: no cover - exercised only where pytest-asyncio is absent
    _async_fixture = None  # type: ignore[assignment]


@pytest.fixture
def dev_issuer_audience() -> str | list[str]:
    """The ``aud`` of minted tokens and the audience ``auth_chain`` requires."""
    return "fastapps-auth-tests"


@pytest.fixture
def dev_issuer(dev_issuer_audience: str | list[str]) -> Iterator[RunningIssuer]:
    """A dev issuer (the local authorization server: metadata, login, token, introspection...) on 127.0.0.1."""
    from fastapps_auth.testing.issuer import start_issuer

    issuer = start_issuer(audience=dev_issuer_audience)
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def mint(dev_issuer: RunningIssuer) -> Minter:
    """``mint(subject, scopes=[...], claims={...}, lifetime=..., alg=...)`` plus ``.expired()``,
    ``.not_yet_valid()`` and ``.tampered()``."""
    from fastapps_auth.testing.issuer import Minter

    return Minter(dev_issuer)


@pytest.fixture
def expired_token(dev_issuer: RunningIssuer) -> str:
    """A token for ``user-1`` that expired five minutes ago."""
    return dev_issuer.expired()


@pytest.fixture
def not_yet_valid_token(dev_issuer: RunningIssuer) -> str:
    """A token for ``user-1`` whose ``nbf`` is five minutes from now."""
    return dev_issuer.not_yet_valid()


@pytest.fixture
def rotate_keys(dev_issuer: RunningIssuer) -> Callable[..., list[str]]:
    """``rotate_keys(grace=3600)``: new signing keys; the old stay published for ``grace`` seconds."""
    return dev_issuer.rotate


if _async_fixture is not None:

    @_async_fixture
    async def auth_chain(dev_issuer: RunningIssuer) -> AsyncIterator[VerifierChain]:
        """A ``VerifierChain`` with the ``jwt`` stage trusting ``dev_issuer``; closed after the test."""
        from fastapps_auth.testing.issuer import issuer_chain

        chain = issuer_chain(dev_issuer)
        try:
            yield chain
        finally:
            await chain.aclose()

else:  # pragma: no cover

    @pytest.fixture
    def auth_chain() -> None:
        pytest.fail("the auth_chain fixture needs pytest-asyncio (pip install pytest-asyncio)")
