"""The audience rule the authenticating stages share (``jwt``, ``introspection``).

A token is meant for one API, its ``aud``. Either the stage is configured with audiences (compared
exactly: RFC 7519 audiences are case-sensitive strings), or it is bound to the server's resource URL
(RFC 8707) by its host and compares canonically (``endpoints.canonical_resource``: scheme and host
case-insensitive, default port and trailing slash ignored). An explicit audience wins; with neither,
the stage checks nothing and warns once.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapps_auth.endpoints import canonical_resource
from fastapps_auth.errors import ConfigError, Rejected

_MISSING: Any = object()


def configured_audiences(value: str | list[str] | None, *, stage: str) -> frozenset[str] | None:
    """The ``audience`` option as a set; ``None`` when not configured; ``ConfigError`` for an empty one."""
    if value is None:
        return None
    audiences = [value] if isinstance(value, str) else list(value)
    if not audiences or not all(audiences):
        raise ConfigError("audience must be a non-empty string or list of strings", stage=stage, key="audience")
    return frozenset(audiences)


class AudienceRule:
    """Which ``aud`` values a stage accepts: configured ones, else the bound resource URL, else any."""

    __slots__ = ("audiences", "resource", "warned")

    def __init__(self, audiences: frozenset[str] | None) -> None:
        #: Configured audiences, compared exactly; ``None``: none configured.
        self.audiences = audiences
        #: The canonical resource URL the stage is bound to, used when no audience is configured.
        self.resource: str | None = None
        self.warned = False

    @property
    def checks(self) -> bool:
        """Whether an ``aud`` is required at all."""
        return self.audiences is not None or self.resource is not None

    def bind(self, resource_url: str, *, stage: str) -> bool:
        """Bind to ``resource_url`` unless an audience is configured; True if the rule changed.

        Binding again to the same resource is a no-op; to another one, a ``ConfigError``: a stage shared
        by two servers would otherwise accept, at the first, the tokens minted for the second.
        """
        if self.audiences is not None:
            return False  # an explicit audience wins
        if not isinstance(resource_url, str) or not resource_url:
            raise ConfigError("the resource URL must be a non-empty string", stage=stage, key="resource_url")
        resource = canonical_resource(resource_url)
        if self.resource == resource:
            return False
        if self.resource is not None:
            raise ConfigError(
                f"already bound to the resource {self.resource!r}, not {resource!r}: give each server its own "
                "chain, or set audience to every resource it serves",
                stage=stage,
                key="resource_url",
            )
        self.resource = resource
        return True

    def warn_if_unchecked(self, logger: logging.Logger, kind: str, name: str) -> None:
        """Once per stage, at start or its first token: neither an audience nor a bound resource URL."""
        if self.warned:
            return
        self.warned = True
        if not self.checks:
            logger.warning(
                "%s stage %r checks no audience: a token its issuer minted for any other API is accepted here "
                "(set audience, e.g. this server's resource URL, or serve it through an integration that binds it)",
                kind,
                name,
            )

    def match(self, claims: dict[str, Any]) -> str:
        """The token's audience that is this server's (call only when ``checks``); ``Rejected`` otherwise."""
        aud = claims.get("aud", _MISSING)
        if aud is _MISSING:
            raise Rejected("missing_claim", "the token has no aud claim")
        values = [aud] if type(aud) is str else aud
        if type(values) is list:
            for a in values:
                if type(a) is not str:
                    break
            else:
                return self._matching(values)
        raise Rejected("bad_claim", "the token's aud claim is not a string or list of strings")

    def _matching(self, values: list[str]) -> str:
        if self.audiences is not None:
            for a in values:
                if a in self.audiences:
                    return a
        else:
            for a in values:
                if canonical_resource(a) == self.resource:
                    return a
        raise Rejected("wrong_audience", "the token is not meant for this audience")
