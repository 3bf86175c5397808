"""A dev issuer served on loopback in a background thread: what tests and the demo use."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from fastapps_auth.clock import Clock
from fastapps_auth.dev_issuer.app import create_app
from fastapps_auth.dev_issuer.issuer import DEFAULT_AUDIENCE, DEFAULT_LIFETIME, Client, DevIssuer
from fastapps_auth.dev_issuer.keystore import DEFAULT_ALGORITHMS, KeyStore, SigningKey
from fastapps_auth.dev_issuer.server import BackgroundServer


class RunningIssuer:
    """A ``DevIssuer`` with its HTTP endpoints live on ``url``; ``mint``/``rotate`` work while it serves.

    Keys live in ``folder`` (kept across runs) or in memory when ``folder`` is None.
    A client ``dev-client`` with a random secret is registered for the token endpoint.
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
    ) -> None:
        self.keys = KeyStore(folder, algorithms=algorithms, clock=clock, seed=seed)
        self.issuer: DevIssuer | None = None

        def build(url: str) -> Any:
            kwargs: dict[str, Any] = {"audience": audience, "lifetime": lifetime}
            if clock is not None:
                kwargs["clock"] = clock
            self.issuer = DevIssuer(url, self.keys, **kwargs)
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
    def audience(self) -> str | list[str]:
        return self._iss.audience

    @property
    def jwks_uri(self) -> str:
        return self._iss.jwks_uri

    @property
    def token_endpoint(self) -> str:
        return self._iss.token_endpoint

    def mint(self, subject: str = "user-1", **kwargs: Any) -> str:
        """See ``DevIssuer.mint``."""
        return self._iss.mint(subject, **kwargs)

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
