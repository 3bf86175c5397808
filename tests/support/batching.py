"""A gated backend for the batcher tests: ``one`` and ``many`` record their calls and wait for ``gate``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapps_auth.backends.batcher import Batcher
from fastapps_auth.backends.users import StoreUnavailable


def failure(exc: BaseException) -> BaseException:
    """What a waiter gets when its batch fails: a store failure naming the cause."""
    return StoreUnavailable(f"failed: {type(exc).__name__}")


async def settle() -> None:
    """Let every ready task run to its next wait (a few loop iterations, no clock involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Backend:
    """``one`` and ``many`` for a batcher: they record their calls and wait for ``gate`` (open unless ``held``)."""

    def __init__(self, *, held: bool = False) -> None:
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()
        self.ones: list[str] = []
        self.manys: list[list[str]] = []
        self.fail_many: Exception | None = None

    async def one(self, key: str) -> str:
        self.ones.append(key)
        await self.gate.wait()
        return f"row:{key}"

    async def many(self, keys: Sequence[str]) -> list[str]:
        self.manys.append(list(keys))
        await self.gate.wait()
        if self.fail_many is not None:
            raise self.fail_many
        return [f"row:{k}" for k in keys]

    def batcher(self, **options: Any) -> Batcher[str, str]:
        options.setdefault("max_inflight", 1)
        return Batcher(self.one, self.many, failure=failure, **options)
