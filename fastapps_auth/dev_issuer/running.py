"""A dev issuer served on loopback in a background thread: what tests and the demo use."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from fastapps_auth.clock import SYSTEM_CLOCK, Clock
from fastapps_auth.dev_issuer.app import create_app
from fastapps_auth.dev_issuer.clients import Client
from fastapps_auth.dev_issuer.introspection import introspect
from fastapps_auth.dev_issuer.issuer import DEFAULT_AUDIENCE, DEFAULT_LIFETIME, DEFAULT_SCOPES, DevIssuer
from fastapps_auth.dev_issuer.keystore import DEFAULT_ALGORITHMS, KeyStore, SigningKey
from fastapps_auth.dev_issuer.registration import MetadataDocuments
from fastapps_auth.dev_issuer.server import BackgroundServer
from fastapps_auth.dev_issuer.users import DEFAULT_USERS, DevUser


class RunningIssuer:
    """A ``DevIssuer`` with its HTTP endpoints live on ``url``; ``mint``/``rotate`` work while it serves.

    Keys live in ``folder`` (kept across runs) or in memory when ``folder`` is None.
    A client ``dev-client`` with a random secret is configured for the token endpoint.
    ``users``, ``auto_login``, ``opaque``, ``scopes_supported`` and ``dpop_nonce`` are ``DevIssuer``'s;
    ``metadata_verify`` is the TLS trust for fetching client ID metadata documents.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        *,
        audience: str | list[str] = DEFAULT_AUDIENCE,
        lifetime: float = DEFAULT_LIFETIME,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        clock: Clock | None = None,
        seed: Iterable[SigningKey] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "dev-client",
        client_secret: str | None = None,
        users: Iterable[str | DevUser] = DEFAULT_USERS,
        auto_login: str | None = None,
        opaque: bool = False,
        scopes_supported: Iterable[str] = DEFAULT_SCOPES,
        metadata_verify: ssl.SSLContext | bool = True,
        dpop_nonce: bool = False,
    ) -> None:
        self.keys = KeyStore(folder, algorithms=algorithms, clock=clock, seed=seed)
        self.issuer: DevIssuer | None = None
        now = clock or SYSTEM_CLOCK

        def build(url: str) -> Any:
            self.issuer = DevIssuer(
                url,
                self.keys,
                audience,
                lifetime,
                now,
                users=users,
                auto_login=auto_login,
                opaque=opaque,
                scopes_supported=scopes_supported,
                metadata_documents=MetadataDocuments(clock=now, verify=metadata_verify),
                dpop_nonce=dpop_nonce,
            )
            return create_app(self.issuer)

        self._server = BackgroundServer(build, host=host, port=port, factory=True, lifespan="off")
        assert self.issuer is not None
        self.client: Client = self.issuer.add_client(client_id, client_secret)

    # -- delegation to the issuer ---------------------------------------------------------------

    @property
    def _iss(self) -> DevIssuer:
        assert self.issuer is not None
        return self.issuer

    @property
    def url(self) -> str:
        """The issuer URL (``iss``), e.g. ``http://127.0.0.1:54321``."""
        return self._iss.issuer_url

    @property
    def clock(self) -> Clock:
        """The issuer's clock (a test's ``ManualClock``, or the system's)."""
        return self._iss.clock

    @property
    def audience(self) -> str | list[str]:
        return self._iss.audience

    @property
    def jwks_uri(self) -> str:
        return self._iss.jwks_uri

    @property
    def token_endpoint(self) -> str:
        return self._iss.token_endpoint

    @property
    def authorization_endpoint(self) -> str:
        return self._iss.authorization_endpoint

    @property
    def registration_endpoint(self) -> str:
        return self._iss.registration_endpoint

    @property
    def introspection_endpoint(self) -> str:
        return self._iss.introspection_endpoint

    @property
    def revocation_endpoint(self) -> str:
        return self._iss.revocation_endpoint

    def metadata(self) -> dict[str, Any]:
        return self._iss.metadata()

    def mint(self, subject: str = "user-1", **kwargs: Any) -> str:
        """See ``DevIssuer.mint``."""
        return self._iss.mint(subject, **kwargs)

    def mint_opaque(self, subject: str = "user-1", **kwargs: Any) -> str:
        """An opaque token known to this issuer's introspection (``DevIssuer.mint_opaque``)."""
        return self._iss.mint_opaque(subject, **kwargs)

    def revoke(self, token: str) -> bool:
        """Revoke an access or refresh token, as ``POST /revoke`` would; introspection then says inactive."""
        return self._iss.revoke(token)

    def introspect(self, token: str) -> dict[str, Any]:
        """What ``POST /introspect`` answers for ``token``, without HTTP."""
        return introspect(self._iss, token)

    def add_client(self, client_id: str, secret: str | None = None, **kwargs: Any) -> Client:
        """Configure another client (``DevIssuer.add_client``)."""
        return self._iss.add_client(client_id, secret, **kwargs)

    def expired(self, subject: str = "user-1", **kwargs: Any) -> str:
        return self._iss.expired(subject, **kwargs)

    def not_yet_valid(self, subject: str = "user-1", **kwargs: Any) -> str:
        return self._iss.not_yet_valid(subject, **kwargs)

    def rotate(self, *, grace: float = 3600.0, algorithms: Sequence[str] | None = None) -> list[str]:
        """New signing keys; the old ones stay in the JWKS for ``grace`` seconds."""
        return self.keys.rotate(grace=grace, algorithms=algorithms)

    def jwks(self) -> dict[str, Any]:
        return self._iss.jwks()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RunningIssuer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> RunningIssuer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
