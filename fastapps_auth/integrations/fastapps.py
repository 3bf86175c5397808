"""``WidgetMCPServer``: FastApps' server, made to construct, serve and authenticate with a chain.

FastApps 1.4.3 passes ``token_verifier=`` to ``fastmcp.FastMCP`` (which rejects it)
and reads the verified token from ``req.context.access_token`` (which the MCP SDK
never sets). This subclass builds FastMCP without auth, puts ``ChainAuthMiddleware``
in front of the MCP endpoint, and hands each widget the request's verified token,
so the documented snippet works by changing one import. Tested with the versions
pinned in the ``fastapps`` extra.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mcp import types
from mcp.server.auth.provider import AccessToken

from fastapps_auth.chain import VerifierChain
from fastapps_auth.component import ComponentOptions
from fastapps_auth.errors import Rejected
from fastapps_auth.integrations.asgi.context import RequestScopedVerifier, current_access_token
from fastapps_auth.integrations.asgi.cors import cors_middleware
from fastapps_auth.integrations.asgi.metadata import metadata_routes, metadata_url, resource_metadata
from fastapps_auth.integrations.asgi.middleware import ChainAuthMiddleware
from fastapps_auth.integrations.asgi.needs import ChainNeeds
from fastapps_auth.integrations.asgi.tools import exact_names
from fastapps_auth.integrations.quiet_import import quiet_fastmcp_import
from fastapps_auth.integrations.widgets import WidgetRules
from fastapps_auth.scope_policy import ScopePolicy, Strategy
from fastapps_auth.stage import Stage, StageOptions, Verification

with quiet_fastmcp_import():  # FastApps imports fastmcp
    from fastapps.core.server import WidgetMCPServer as _FastAppsServer

if TYPE_CHECKING:
    from fastapps.core.widget import BaseWidget
    from starlette.applications import Starlette

__all__ = ["WidgetMCPServer"]

logger = logging.getLogger("fastapps_auth")


class VerifierStage(Stage[StageOptions]):
    """Any MCP ``TokenVerifier`` as an authenticating stage, so a hand-written verifier still fits a chain."""

    plugin_name: ClassVar[str] = "token-verifier"
    options_model: ClassVar[type[ComponentOptions]] = StageOptions
    authenticates: ClassVar[bool] = True

    def __init__(self, verifier: Any, *, name: str | None = None) -> None:
        super().__init__(name=name or type(verifier).__name__)
        self.verifier = verifier

    async def __call__(self, v: Verification) -> None:
        at = await self.verifier.verify_token(v.token)
        if at is None:
            raise Rejected("invalid_token", "the token was not accepted")
        v.access_token = at


def _as_chain(verifier: Any, issuer_url: str | None, audience: str | None, rules: WidgetRules) -> VerifierChain | None:
    """The chain to run: the one given, a given verifier wrapped, or a ``jwt`` stage for the issuer.

    ``auth_required_scopes`` and the widgets' own scopes are its last stage (``WidgetRules``, named
    ``widget-scopes``), so the decision the observers record is the one the client gets.
    """
    chain = _authenticating_chain(verifier, issuer_url, audience)
    if chain is None or not (rules.server_scopes or any(_has_scopes(w) for w in rules.widgets.values())):
        return chain
    return VerifierChain(*chain.stages, rules, observers=chain.observers, clock=chain.clock, name=chain.name)


def _has_scopes(widget: Any) -> bool:
    return bool(getattr(widget, "_auth_scopes", None))


def _authenticating_chain(verifier: Any, issuer_url: str | None, audience: str | None) -> VerifierChain | None:
    if isinstance(verifier, VerifierChain):
        return verifier
    if verifier is not None:
        return VerifierChain(VerifierStage(verifier))
    if issuer_url is None:
        return None
    from fastapps_auth.registry import load

    options: dict[str, Any] = {"issuer_url": issuer_url}
    if audience:
        options["audience"] = audience
    jwt = load("jwt")(**options)
    if not isinstance(jwt, Stage):
        raise TypeError("the 'jwt' plugin is not a stage")
    return VerifierChain(jwt)


class _RequestWithContext:
    """The call-tool request as FastApps' handler expects it: ``req.context.access_token`` set."""

    __slots__ = ("_req", "context")

    def __init__(self, req: types.CallToolRequest, access_token: AccessToken | None) -> None:
        self._req = req
        self.context = _Context(access_token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._req, name)


class _Context:
    __slots__ = ("access_token",)

    def __init__(self, access_token: AccessToken | None) -> None:
        self.access_token = access_token


class WidgetMCPServer(_FastAppsServer):  # type: ignore[misc, unused-ignore]
    """FastApps' ``WidgetMCPServer`` with the same arguments, authenticated by a ``VerifierChain``.

    Extra keyword arguments: ``cors_origins`` (opt-in CORS, explicit origins),
    ``trusted_proxies`` (CIDRs whose X-Forwarded-For is believed), ``anonymous``
    (``"allow"`` lets token-less requests reach ``@no_auth``/``@optional_auth``
    widgets), ``path`` (the MCP endpoint, default ``/mcp``), ``scope_strategy`` and
    ``scope_implies`` (how granted scopes satisfy the server's and the widgets' scopes,
    as in the ``scopes`` stage).

    Each widget's ``@auth_required(scopes=[...])`` is enforced before it runs (403 naming the
    scopes; see ``widgets.WidgetRules``), and the widget's own check still runs after.
    """

    def __init__(
        self,
        name: str,
        widgets: list[BaseWidget],
        auth_issuer_url: str | None = None,
        auth_resource_server_url: str | None = None,
        auth_required_scopes: list[str] | None = None,
        auth_audience: str | None = None,
        token_verifier: Any = None,
        global_resource_domains: list[str] | None = None,
        global_connect_domains: list[str] | None = None,
        *,
        cors_origins: Sequence[str] | None = None,
        trusted_proxies: Sequence[str] = (),
        anonymous: Literal["deny", "allow"] = "deny",
        path: str = "/mcp",
        scope_strategy: Strategy = "exact",
        scope_implies: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        from fastmcp import FastMCP

        self.widgets_by_id = {w.identifier: w for w in widgets}
        self.widgets_by_uri = {w.template_uri: w for w in widgets}
        self.client_locale: str | None = None
        self.global_resource_domains = global_resource_domains or []
        self.global_connect_domains = global_connect_domains or []
        self._configure_widget_csp(widgets)

        authenticates = token_verifier is not None or auth_issuer_url is not None
        self.widget_rules = WidgetRules(
            self.widgets_by_id,
            server_scopes=list(auth_required_scopes or []),
            policy=ScopePolicy(scope_strategy, scope_implies),
            anonymous=anonymous == "allow",
            server_requires_auth=authenticates,
        )
        self.chain = _as_chain(token_verifier, auth_issuer_url, auth_audience, self.widget_rules)
        if self.chain is not None and auth_resource_server_url:
            self.chain.bind_resource(auth_resource_server_url)
        # FastApps' policy for undecorated widgets; ``anonymous="allow"`` opens only @no_auth/@optional_auth ones.
        self.server_requires_auth = self.chain is not None
        self.name = name
        self.server_auth_scopes = list(auth_required_scopes or [])
        self.auth_issuer_url = auth_issuer_url
        self.auth_resource_server_url = auth_resource_server_url
        self.token_verifier_instance = (
            RequestScopedVerifier(self.chain, resource_url=auth_resource_server_url) if self.chain else None
        )
        self.cors_origins = list(cors_origins) if cors_origins else None
        self.trusted_proxies = tuple(trusted_proxies)
        self.anonymous = anonymous
        self.path = path
        self.mcp = FastMCP(name=name)
        self._register_handlers()
        self._wrap_call_tool()

    def _wrap_call_tool(self) -> None:
        """Give FastApps' call-tool handler the request's verified token where it looks for it."""
        server = self.mcp._mcp_server
        original = server.request_handlers[types.CallToolRequest]

        async def call_tool(req: types.CallToolRequest) -> types.ServerResult:
            at = current_access_token() or self._token_from_request(server)
            widget = self.widgets_by_id.get(req.params.name)
            if widget is not None:
                at = self.widget_rules.token_for(widget, at)
            result: types.ServerResult = await original(_RequestWithContext(req, at))
            return result

        server.request_handlers[types.CallToolRequest] = call_tool

    @staticmethod
    def _token_from_request(server: Any) -> AccessToken | None:
        """The token the middleware put on the Starlette request (for handlers run outside its context)."""
        try:
            request = server.request_context.request
        except LookupError:
            return None
        user = getattr(request, "scope", {}).get("user") if request is not None else None
        at = getattr(user, "access_token", None)
        return at if isinstance(at, AccessToken) else None

    @property
    def resource_metadata_url(self) -> str | None:
        """The RFC 9728 metadata URL advertised in ``WWW-Authenticate``."""
        if not (self.auth_resource_server_url and self.auth_issuer_url):
            return None
        return metadata_url(self.auth_resource_server_url)

    def get_app(self) -> Starlette:
        """The Starlette app: MCP endpoint behind the chain, RFC 9728 metadata, opt-in CORS."""
        from starlette.middleware import Middleware

        middleware: list[Middleware] = []
        if self.cors_origins:
            middleware.append(cors_middleware(self.cors_origins))
        if self.chain is not None:
            middleware.append(
                Middleware(
                    ChainAuthMiddleware,
                    chain=self.chain,
                    resource_metadata_url=self.resource_metadata_url,
                    paths=[self.path],
                    # Anonymous requests reach all but the widgets that require authentication.
                    anonymous=self.widget_rules.anonymous_may if self.anonymous == "allow" else "deny",
                    trusted_proxies=self.trusted_proxies,
                    resolve_tool=exact_names(self.widgets_by_id),  # FastApps calls the widget of that id
                )
            )
        app: Starlette = self.mcp.http_app(path=self.path, stateless_http=True, middleware=middleware)
        if self.auth_resource_server_url and self.auth_issuer_url:
            dpop = ChainNeeds(self.chain).dpop_algorithms if self.chain is not None else ()
            document = resource_metadata(
                self.auth_resource_server_url,
                [self.auth_issuer_url],
                scopes=self.server_auth_scopes,
                resource_name=self.name,
                dpop_algorithms=dpop,
            )
            app.routes.extend(metadata_routes(document))
        return app
