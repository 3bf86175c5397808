"""Websocket messages checked one by one, as the middleware checks an HTTP ``POST``.

The handshake is authenticated like a request. After it, every JSON-RPC request or
notification the client sends is decided by the chain with the handshake's token: a
``tools/call`` against its tool's rule, and a token that has expired or been revoked since
stops working. A refused request is answered with a JSON-RPC error and never reaches the app;
the connection stays open, unless the token itself is refused (401): then it is closed with
1008 (policy violation), as the client has to authenticate again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from starlette.types import Message, Receive, Send

from fastapps_auth.decision import Decision
from fastapps_auth.integrations.asgi.body import TOO_LARGE, RpcTarget, rpc_message
from fastapps_auth.integrations.asgi.responses import frame_error

POLICY_VIOLATION = 1008

#: Decides one message of the connection (the middleware's decision with the handshake's token).
DecideMessage = Callable[[RpcTarget], Awaitable[Decision | None]]


class MessageGuard:
    """The ``receive`` and ``send`` the app gets for one authenticated websocket connection."""

    def __init__(self, decide: DecideMessage, max_bytes: int, receive: Receive, send: Send) -> None:
        self.decide = decide
        self.max_bytes = max_bytes
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
            too_large = len(data) > self.max_bytes
            target = RpcTarget(refusal=TOO_LARGE) if too_large else rpc_message(data)
            if target.method is None and target.refusal is None:
                return message  # a response to the server's request, or no JSON-RPC at all: the app's to answer
            decision = await self.decide(target)
            if decision is None or decision.allowed:
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
