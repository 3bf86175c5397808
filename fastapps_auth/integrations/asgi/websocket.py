"""Websocket messages checked one by one, as the middleware checks an HTTP ``POST``.

The handshake is authenticated like a request. After it, every JSON-RPC request or
notification the client sends is decided by the chain with the handshake's token: a
``tools/call`` against its tool's rule, and a token that has expired or been revoked since
stops working. A refused request is answered with a JSON-RPC error and never reaches the app;
the connection stays open, unless the token itself is refused (401): then it is closed with
1008 (policy violation), as the client has to authenticate again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
from starlette.types import Message, Receive, Scope, Send

from fastapps_auth.decision import Decision
from fastapps_auth.integrations.asgi.body import TOO_LARGE, RpcTarget, rpc_message
from fastapps_auth.integrations.asgi.responses import frame_error

if TYPE_CHECKING:
    from fastapps_auth.integrations.asgi.middleware import ChainAuthMiddleware

POLICY_VIOLATION = 1008


class MessageGuard:
    """The ``receive`` and ``send`` the app gets for one authenticated websocket connection."""

    def __init__(self, middleware: ChainAuthMiddleware, scope: Scope, token: str, receive: Receive, send: Send) -> None:
        self.middleware = middleware
        self.scope = scope
        self.token = token
        self._receive = receive
        self._send = send
        self._lock = anyio.Lock()  # our error frames and the app's messages share one connection
        self.closed = False

    async def receive(self) -> Message:
        while True:
            message = await self._receive()
            if message["type"] != "websocket.receive" or self.closed:
                return message
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is None:
                return message
            too_large = len(data) > self.middleware.max_body_bytes
            target = RpcTarget(refusal=TOO_LARGE) if too_large else rpc_message(data)
            if target.method is None and target.refusal is None:
                return message  # a response to the server's request, or no JSON-RPC at all: the app's to answer
            decision, _ = await self.middleware.decide(self.token, self.scope, target)
            if decision is None:
                return message
            if self.middleware.on_decision is not None:
                self.middleware.on_decision(self.scope, decision)
            if decision.allowed:
                return message
            await self._refuse(decision, target)
            if self.closed:
                return {"type": "websocket.disconnect", "code": POLICY_VIOLATION}

    async def _refuse(self, decision: Decision, target: RpcTarget) -> None:
        async with self._lock:
            if target.request_id is not None or target.refusal is not None:
                await self._send({"type": "websocket.send", "text": frame_error(decision, target.request_id)})
            if decision.status == 401:
                await self._send({"type": "websocket.close", "code": POLICY_VIOLATION})
                self.closed = True

    async def send(self, message: Message) -> None:
        async with self._lock:
            if not self.closed:  # after our close the app's messages have nowhere to go
                await self._send(message)
