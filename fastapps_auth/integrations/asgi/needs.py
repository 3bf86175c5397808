"""What a request needs, read from the chain once, for the challenges of its refusals.

A refusal tells the client everything the operation needs, so one re-authorization suffices
(RFC 6750 §3, the MCP authorization spec's scope selection): the scopes every ``scopes`` stage of
the chain asks of this request (its ``required`` ones and the called tool's), whichever stage
refused, and the proof algorithms of its ``dpop`` stage. A third-party stage joins in by defining
``scopes_for(request) -> Sequence[str]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapps_auth.chain import VerifierChain, leaves
from fastapps_auth.decision import Decision
from fastapps_auth.request import RequestInfo
from fastapps_auth.stage import Stage
from fastapps_auth.stages.scopes import ScopesStage

ScopesFor = Callable[[RequestInfo | None], Sequence[str]]


def without_dpop(chain: VerifierChain) -> VerifierChain:
    """``chain`` without its ``dpop`` stages (same stages otherwise, same observers), or ``chain`` if it has none.

    For deciding again within a request (or a websocket connection) the middleware already allowed: its
    proof of possession is verified, and the same proof checked a second time would be a replay.
    """
    from fastapps_auth.stages.dpop import DPoPStage

    stages = [s for s in chain.stages if not isinstance(s, DPoPStage)]
    if len(stages) == len(chain.stages):
        return chain
    return VerifierChain(*stages, observers=chain.observers, clock=chain.clock, name=chain.name)


def _scopes_stage(stage: ScopesStage) -> ScopesFor:
    options = stage.options
    required = tuple(options.required)
    tools = {name: tuple(rule.scopes) for name, rule in options.tools.items()}

    def scopes_for(request: RequestInfo | None) -> Sequence[str]:
        tool = request.tool_name if request is not None else None
        return (*required, *tools.get(tool, ())) if tool is not None else required

    return scopes_for


class ChainNeeds:
    """The scope rules and the DPoP stage of a chain, found once (a chain's stages do not change)."""

    def __init__(self, chain: VerifierChain) -> None:
        from fastapps_auth.stages.dpop import DPoPStage

        rules: list[ScopesFor] = []
        self.dpop: DPoPStage | None = None
        for stage in leaves(chain):
            if not isinstance(stage, Stage) or not stage.enforce:
                continue  # a stage in shadow mode refuses nothing: a client need not ask for its scopes
            if isinstance(stage, ScopesStage):
                rules.append(_scopes_stage(stage))
            elif callable(own := getattr(stage, "scopes_for", None)):
                rules.append(own)
            if isinstance(stage, DPoPStage) and self.dpop is None:
                self.dpop = stage
        self._rules = tuple(rules)
        #: The proof algorithms of the chain's first ``dpop`` stage (empty: the chain checks no DPoP).
        self.dpop_algorithms: tuple[str, ...] = self.dpop.algorithms if self.dpop is not None else ()

    def scopes(self, request: RequestInfo | None) -> tuple[str, ...]:
        """Every scope the chain's rules ask of ``request``, in order, each once."""
        found: dict[str, None] = {}
        for rule in self._rules:
            found.update(dict.fromkeys(rule(request)))
        return tuple(found)

    def for_client(self, decision: Decision) -> Decision:
        """``decision`` with ``scope`` naming all the request needs (a 401 or 403), for the response."""
        if decision.status not in (401, 403) or not self._rules:
            return decision
        own = decision.scope.split() if decision.scope else ()
        scopes = tuple(dict.fromkeys((*own, *self.scopes(decision.request))))
        return decision._replace(scope=" ".join(scopes)) if scopes else decision

    def nonce(self, decision: Decision | None = None, request: RequestInfo | None = None) -> str | None:
        """The ``DPoP-Nonce`` to send: to a ``use_dpop_nonce`` refusal and to a request made with the DPoP
        scheme, when the chain's ``dpop`` stage issues nonces."""
        if self.dpop is None:
            return None
        request = request if request is not None else (decision.request if decision is not None else None)
        wanted = (decision is not None and decision.error == "use_dpop_nonce") or (
            request is not None and request.auth_scheme == "dpop"
        )
        return self.dpop.nonce() if wanted else None
