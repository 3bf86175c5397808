"""Small stages for testing the core without a network: an authenticator and failure makers, and registering them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import Field

from fastapps_auth import (
    AccessToken,
    ConfigError,
    RateLimitInfo,
    Rejected,
    Stage,
    StageOptions,
    Verification,
    registry,
)
from fastapps_auth.component import ComponentOptions


class TokenIsSubjectOptions(StageOptions):
    prefix: str = Field(default="user:", description="Tokens must start with this; the rest is the subject.")
    scopes: list[str] = Field(default_factory=list, description="Scopes every token gets.")


class TokenIsSubject(Stage[TokenIsSubjectOptions]):
    """Authenticates ``user:<subject>`` tokens; anything else is ``bad_signature``."""

    plugin_name: ClassVar[str] = "token-is-subject"
    options_model: ClassVar[type[ComponentOptions]] = TokenIsSubjectOptions
    authenticates: ClassVar[bool] = True

    async def __call__(self, v: Verification) -> None:
        prefix = self.options.prefix
        if not v.token.startswith(prefix) or len(v.token) == len(prefix):
            raise Rejected("bad_signature", "the token signature is invalid")
        subject = v.token[len(prefix) :]
        v.access_token = AccessToken(
            token=v.token,
            client_id="test-client",
            scopes=list(self.options.scopes),
            subject=subject,
            claims={"sub": subject},
            expires_at=int(v.now) + 3600,
        )


class FailsOptions(StageOptions):
    error: str = Field(default="connection", description="What to raise: connection, rejected, bug.")


class Fails(Stage[FailsOptions]):
    """Raises what it is told to: a transient error, a rejection, or a plain bug."""

    plugin_name: ClassVar[str] = "fails"
    options_model: ClassVar[type[ComponentOptions]] = FailsOptions

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls = 0

    async def __call__(self, v: Verification) -> None:
        self.calls += 1
        if self.options.error == "rejected":
            raise Rejected("user_banned", "account disabled")
        if self.options.error == "bug":
            raise KeyError("oops")
        raise ConnectionError("database is down")


class Counts(Stage[StageOptions]):
    """Passes, counting its calls and remembering the subject it saw."""

    plugin_name: ClassVar[str] = "counts"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls = 0
        self.seen: list[str | None] = []
        self.closes = 0
        self.started = 0

    async def __call__(self, v: Verification) -> None:
        self.calls += 1
        self.seen.append(v.access_token.subject if v.access_token else None)

    async def start(self) -> None:
        self.started += 1

    async def aclose(self) -> None:
        self.closes += 1


class StaticAuthOptions(StageOptions):
    scopes: list[str] = []
    claims: dict[str, Any] = {}


class StaticAuth(Stage[StaticAuthOptions]):
    """Authenticates any token as ``alice`` with fixed scopes and claims (for stage-level tests)."""

    plugin_name: ClassVar[str] = "static-auth"
    options_model: ClassVar[type[ComponentOptions]] = StaticAuthOptions
    authenticates: ClassVar[bool] = True

    async def __call__(self, v: Verification) -> None:
        o = self.options
        v.access_token = AccessToken(token="fp", client_id="c", scopes=list(o.scopes), subject="alice", claims=o.claims)


@contextmanager
def registered(*classes: type[Stage[Any]]) -> Iterator[None]:
    """``classes`` registered under their plugin names for the block, then removed."""
    for cls in classes:
        registry.register(cls.plugin_name, cls)
    try:
        yield
    finally:
        for cls in classes:
            registry.unregister(cls.plugin_name)


class ProbesOptions(StageOptions):
    probe: str = Field(default="ok", description="What probe() does: ok, fail, hang.")
    start: str = Field(default="ok", description="What start() does: ok, fail, config.")


class Probes(Stage[ProbesOptions]):
    """Passes; its ``probe()`` succeeds, fails or never answers, and its ``start()`` succeeds or fails, as told."""

    plugin_name: ClassVar[str] = "probes"
    options_model: ClassVar[type[ComponentOptions]] = ProbesOptions

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.probed = 0
        self.started = 0
        self.cancelled = False

    async def __call__(self, v: Verification) -> None:
        return None

    async def start(self) -> None:
        self.started += 1
        if self.options.start == "fail":
            raise ConnectionError(f"{self.name}: cannot reach 127.0.0.1:1")
        if self.options.start == "config":
            raise ConfigError("the service says this option is wrong", stage=self.name, key="start")

    async def probe(self) -> None:
        self.probed += 1
        if self.options.probe == "fail":
            raise ConnectionError(f"{self.name}: cannot reach 127.0.0.1:1\n(a second line that is not shown)")
        if self.options.probe == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise


class EnrichesOptions(StageOptions):
    scope: str = Field(default="granted", description="The scope added to the token.")
    then: str = Field(default="pass", description="After enriching: pass, reject, fail.")


class Enriches(Stage[EnrichesOptions]):
    """Adds a scope to the AccessToken and sets rate-limit info, then passes, rejects or fails."""

    plugin_name: ClassVar[str] = "enriches"
    options_model: ClassVar[type[ComponentOptions]] = EnrichesOptions

    async def __call__(self, v: Verification) -> None:
        at = v.access_token
        assert at is not None
        v.access_token = at.model_copy(update={"scopes": [*at.scopes, self.options.scope]})
        v.rate_limit = RateLimitInfo(10, 0, 1.0, 60.0)
        if self.options.then == "reject":
            raise Rejected("not_now", "refused after enriching", status=403)
        if self.options.then == "fail":
            raise ConnectionError("down after enriching")
