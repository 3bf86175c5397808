"""FastApps widgets' own auth decorators, enforced at the HTTP layer like a ``scopes`` stage's per-tool rules.

A widget is *required* (``@auth_required``, or undecorated on a server that authenticates),
*optional* (``@optional_auth``) or *open* (``@no_auth``). ``WidgetRules`` is the last stage of a
``WidgetMCPServer``'s chain: a ``tools/call`` of a widget needs the server-wide scopes
(``auth_required_scopes``) and the widget's own ``scopes=[...]``, so a token lacking one gets 403
``insufficient_scope`` naming them all, instead of FastApps' HTTP 200 ``isError`` that no client
can step up from. Scopes match through the server's ``ScopePolicy`` (exact, hierarchic, wildcard,
``implies``).

A token never makes a client worse off than no token: with ``anonymous="allow"``, what a client
without credentials may do (anything but calling a required widget) a token may do too, whatever
its scopes. The token is still authenticated: an invalid, expired or refused one is answered as
such (401), so its client knows to get a new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from mcp.server.auth.provider import AccessToken

from fastapps_auth.component import ComponentOptions
from fastapps_auth.errors import Rejected, insufficient_scope
from fastapps_auth.request import RequestInfo
from fastapps_auth.scope_policy import ScopePolicy
from fastapps_auth.stage import Stage, StageOptions, Verification

Access = Literal["required", "optional", "open"]


def access(widget: Any, server_requires_auth: bool) -> Access:
    """How a widget may be called, from FastApps' decorators, read as FastApps reads them.

    ``_auth_required`` is True for ``@auth_required``, False for ``@no_auth`` and ``@optional_auth``
    (the latter also declares an ``oauth2`` security scheme), absent for an undecorated widget.
    """
    required = getattr(widget, "_auth_required", None)
    if required is None:
        return "required" if server_requires_auth else "open"
    if required:
        return "required"
    schemes = getattr(widget, "_security_schemes", None) or []
    return "optional" if any(isinstance(s, dict) and s.get("type") == "oauth2" for s in schemes) else "open"


def _scopes(widget: Any) -> tuple[str, ...]:
    scopes = getattr(widget, "_auth_scopes", None) or ()
    return tuple(s for s in scopes if isinstance(s, str))


class WidgetRules(Stage[StageOptions]):
    """The server-wide scopes and each widget's own, for the widget a ``tools/call`` names.

    ``widgets`` is the server's live registry (id -> widget); ``anonymous``: the server lets requests
    without credentials through (``anonymous="allow"``), so a token needs no scopes for what they may do.
    """

    plugin_name: ClassVar[str] = "widget-scopes"
    options_model: ClassVar[type[ComponentOptions]] = StageOptions

    def __init__(
        self,
        widgets: Mapping[str, Any],
        *,
        server_scopes: Sequence[str] = (),
        policy: ScopePolicy | None = None,
        anonymous: bool = False,
        server_requires_auth: bool = True,
    ) -> None:
        super().__init__(name="widget-scopes")
        self.widgets = widgets
        self.server_scopes = tuple(dict.fromkeys(server_scopes))
        self.policy = policy or ScopePolicy()
        self.anonymous = anonymous
        self.server_requires_auth = server_requires_auth

    def widget(self, request: RequestInfo | None) -> Any:
        """The widget a ``tools/call`` calls (``None``: another method, or no such widget)."""
        if request is None or request.mcp_method != "tools/call" or request.tool_name is None:
            return None
        return self.widgets.get(request.tool_name)

    def access(self, request: RequestInfo | None) -> Access | None:
        widget = self.widget(request)
        return access(widget, self.server_requires_auth) if widget is not None else None

    def anonymous_may(self, request: RequestInfo) -> bool:
        """Whether a request without credentials may go on (``anonymous="allow"``): all but a required widget's call."""
        return self.access(request) != "required"

    def scopes_for(self, request: RequestInfo | None) -> tuple[str, ...]:
        """Every scope ``request`` needs: none for what anonymous requests may do, else the server's and widget's."""
        kind = self.access(request)
        if self.anonymous and kind != "required":
            return ()
        widget = self.widget(request) if kind in ("required", "optional") else None
        own = _scopes(widget) if widget is not None else ()
        return tuple(dict.fromkeys((*self.server_scopes, *own)))

    async def __call__(self, v: Verification) -> None:
        at = v.access_token
        if at is None:
            raise Rejected("unauthenticated", "no stage authenticated the token")
        needed = self.scopes_for(v.request)
        if not needed:
            return
        missing = self.policy.unsatisfied(needed, self.policy.grants(at.scopes))
        if missing:
            reason = "insufficient_tool_scope" if set(missing) - set(self.server_scopes) else "insufficient_scope"
            raise insufficient_scope(missing, reason=reason, needed=needed)

    def token_for(self, widget: Any, at: AccessToken | None) -> AccessToken | None:
        """The token the widget's own check sees (FastApps compares scope strings exactly).

        Its scopes gain each widget scope the policy says the token grants (a hierarchic ``files``
        grants ``files:read``), so the widget agrees with the HTTP layer. An ``@optional_auth``
        widget whose scopes the token lacks, under ``anonymous="allow"``, gets no token: it serves
        the client as it serves one without credentials (never worse off).
        """
        scopes = _scopes(widget)
        if at is None or not scopes:
            return at
        have = self.policy.grants(at.scopes)
        optional = access(widget, self.server_requires_auth) == "optional"
        if self.anonymous and optional and self.policy.unsatisfied(scopes, have):
            return None
        granted = [s for s in scopes if s not in at.scopes and self.policy.satisfied(s, have)]
        return at.model_copy(update={"scopes": [*at.scopes, *granted]}) if granted else at
