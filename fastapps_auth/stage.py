"""The stage protocol: one async step of a verification.

A stage receives the ``Verification`` so far and either returns (passing it on,
perhaps enriched) or raises ``Rejected``. Any other exception is a transient
failure; the chain undoes the stage's changes (``Verification.restore``) and applies its
``on_error`` policy. Cancellation and interrupts are never caught.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from mcp.server.auth.provider import AccessToken
from pydantic import Field

from fastapps_auth.clock import Clock
from fastapps_auth.component import Component, ComponentOptions, OnError, OptionsT
from fastapps_auth.decision import RateLimitInfo, StageTrace
from fastapps_auth.errors import ConfigError
from fastapps_auth.fingerprint import token_digest
from fastapps_auth.request import RequestInfo


class StageOptions(ComponentOptions):
    """Options every stage accepts."""

    on_error: OnError = Field(
        default="deny",
        description="On a transient failure (service down, timeout): deny (503) or allow (fail open, recorded).",
    )
    retry_after: float = Field(default=5.0, gt=0, description="Retry-After seconds sent with a 503 from this stage.")
    enforce: bool = Field(
        default=True,
        description="false: shadow mode; a refusal is recorded (decision, trace, audit, metrics), the chain goes on.",
    )


class Snapshot(NamedTuple):
    """What a stage may change in a ``Verification``, as it was before the stage ran.

    The ``AccessToken`` (replaced when enriched), the rate-limit state, and how many entries
    ``failed_open`` and ``shadowed`` had (a composite stage's inner stages append to them).
    ``token``, ``request``, ``now`` and ``clock`` are never a stage's to change; ``trace`` and
    ``cache_hit`` record what ran and stay.
    """

    access_token: AccessToken | None
    rate_limit: RateLimitInfo | None
    failed_open: int
    shadowed: int


class Verification:
    """The state of one verification as it moves through the stages."""

    __slots__ = (
        "_digest",
        "access_token",
        "cache_hit",
        "clock",
        "failed_open",
        "now",
        "rate_limit",
        "request",
        "shadowed",
        "token",
        "trace",
    )

    def __init__(self, token: str, *, now: float, clock: Clock, request: RequestInfo | None = None) -> None:
        self.token = token
        #: Built by the authenticating stage; later stages may replace it with an enriched copy.
        self.access_token: AccessToken | None = None
        self.request = request
        #: Wall time of this verification, fixed once so every stage agrees on "now".
        self.now = now
        self.clock = clock
        #: A stage sets this to True/False to report whether it answered from a cache.
        self.cache_hit: bool | None = None
        self.rate_limit: RateLimitInfo | None = None
        self.trace: list[StageTrace] = []
        self.failed_open: list[str] = []
        #: (stage, reason) of each rejection a stage with ``enforce = false`` would have made.
        self.shadowed: list[tuple[str, str]] = []
        self._digest: bytes | None = None

    def snapshot(self) -> Snapshot:
        """What a stage may change, to ``restore`` if it fails, does not enforce, or was an alternative not taken."""
        return Snapshot(self.access_token, self.rate_limit, len(self.failed_open), len(self.shadowed))

    def restore(self, saved: Snapshot) -> None:
        """Undo every change made since ``saved`` was taken (the trace keeps its entries)."""
        self.access_token = saved.access_token
        self.rate_limit = saved.rate_limit
        del self.failed_open[saved.failed_open :]
        del self.shadowed[saved.shadowed :]

    @property
    def digest(self) -> bytes:
        """SHA-256 of the token, computed once per verification."""
        if self._digest is None:
            self._digest = token_digest(self.token)
        return self._digest

    @property
    def claims(self) -> dict[str, Any]:
        """The authenticated token's claims (empty before authentication)."""
        at = self.access_token
        return at.claims or {} if at is not None else {}


class Stage(Component[OptionsT]):
    """Base class of stages. Subclasses set ``plugin_name``, ``options_model`` and ``__call__``."""

    kind: ClassVar[str] = "stage"
    options_model: ClassVar[type[ComponentOptions]] = StageOptions
    #: True for a stage that builds the AccessToken (it may never fail open).
    authenticates: ClassVar[bool] = False
    #: True for stages that run other stages and trace them themselves (chains, AnyOf).
    composite: ClassVar[bool] = False

    def __init__(self, options: OptionsT | None = None, /, *, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(options, clock=clock, **kwargs)
        self.on_error: OnError = getattr(self.options, "on_error", "deny")
        self.retry_after: float = float(getattr(self.options, "retry_after", 5.0))
        #: False: shadow mode (the chain records what this stage would refuse and goes on).
        self.enforce: bool = bool(getattr(self.options, "enforce", True))
        if self.authenticates and self.on_error == "allow":
            raise ConfigError(
                "a stage that authenticates cannot fail open: there would be no verified token",
                stage=self.name,
                key="on_error",
            )
        if self.authenticates and not self.enforce:
            raise ConfigError(
                "a stage that authenticates cannot run in shadow mode: there would be no verified token",
                stage=self.name,
                key="enforce",
            )

    def bind_resource(self, resource_url: str) -> None:
        """The server this stage protects is ``resource_url`` (RFC 8707); hosts call it once, before serving.

        An authenticating stage with no ``audience`` of its own then accepts only tokens for that
        resource. The default does nothing; composites pass it on to their stages.
        """

    async def __call__(self, v: Verification) -> None:
        raise NotImplementedError
