"""What the middleware refuses itself (a body it cannot read, a failed tool lookup), as decisions like the chain's.

A refusal of a request that carries a token is made after the token is checked, as the chain's
last stage: the client hears about a bad token first, and the observers see one decision per
request, naming who sent it. An anonymous request (``anonymous="allow"``) refused for its body is
reported to the observers as a decision of stage ``http``.
"""

from __future__ import annotations

from typing import ClassVar

from fastapps_auth.chain import VerifierChain
from fastapps_auth.decision import Decision, decide
from fastapps_auth.errors import Rejected
from fastapps_auth.integrations.asgi import body
from fastapps_auth.request import RequestInfo
from fastapps_auth.stage import Stage, StageOptions, Verification

#: The ``stage`` a refusal of the middleware's own is recorded under in the decision.
STAGE = "http"

_BODY_REFUSALS = {
    body.UNREADABLE: ("the body is not JSON that can be read within the server's limits", 400),
    body.UNDECODED: ("the body has a Content-Encoding the server does not decode", 400),
    body.TOO_LARGE: ("the body is too large", 413),
    body.BATCHED_CALL: ("tools/call cannot be batched", 400),
    body.HEADER_MISMATCH: ("the Mcp-Method or Mcp-Name header does not match the body", 400),
}


def body_refusal(reason: str) -> Rejected:
    """The ``Rejected`` of a message the middleware will not pass on (a reason from the body module)."""
    description, status = _BODY_REFUSALS[reason]
    # RFC 6750's invalid_request is a 400; a body over the limit is a 413 of its own.
    error = "invalid_request" if status == 400 else "request_too_large"
    return Rejected(reason, description, error=error, status=status)


def lookup_failed() -> Rejected:
    """The host's lookup of the called tool failed: its rule cannot be applied, so nothing runs (503)."""
    return Rejected(
        "tool_lookup_failed",
        "the server could not look up the tool",
        error="temporarily_unavailable",
        status=503,
        transient=True,
    )


class _Refuse(Stage[StageOptions]):
    """A last stage that refuses what the middleware refuses, once the stages before it checked the token."""

    plugin_name: ClassVar[str] = STAGE

    def __init__(self, rejected: Rejected) -> None:
        super().__init__(name=STAGE)
        self.rejected = rejected

    async def __call__(self, v: Verification) -> None:
        raise self.rejected


async def refuse_after_checking(chain: VerifierChain, token: str, info: RequestInfo, rejected: Rejected) -> Decision:
    """``chain``'s decision for ``token`` with ``rejected`` as its last stage (same stages, observers, caches)."""
    refusing = VerifierChain(
        *chain.stages, _Refuse(rejected), observers=chain.observers, clock=chain.clock, name=chain.name
    )
    return await refusing.evaluate(token, request=info)


def refuse_anonymous(chain: VerifierChain, info: RequestInfo, rejected: Rejected) -> Decision:
    """The decision for an anonymous request refused by the middleware, reported to ``chain``'s observers."""
    rejected.stage = STAGE
    decision = decide(rejected, access_token=None, trace=(), request=info, started_at=chain.clock.time())
    chain.notify(decision)
    return decision
