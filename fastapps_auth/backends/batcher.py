"""Natural batching of concurrent lookups (the DataLoader / group-commit pattern), storage-agnostic.

A lookup that finds a free slot (fewer than ``max_inflight`` queries running and nothing queued)
runs its own one-key query at once: a lone lookup waits for no timer and no other task. A lookup
that arrives while every slot is busy joins the queue; as soon as a slot frees, everything queued
(at most ``max_batch`` distinct keys, oldest first) goes out as one many-key query. Batches
therefore grow with load, and only with load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from fastapps_auth.backends.deadlines import Deadlines

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


def _time_out(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class Batcher(Generic[K, R]):
    """Answers ``load(key)`` with ``one(key)`` when a slot is free, else with a share of ``many(keys)``.

    ``many`` returns one result per key, in order. When it fails, each lookup of that batch
    raises ``failure(exc)`` (a fresh exception each). ``batchable(key)`` false sends that key
    alone, outside the queue (for values that could make a whole batch fail). Lookups of the
    same key queued together share one slot of the batch. A queued lookup still waiting when
    its deadline (``deadlines``) passes raises ``TimeoutError``; like one that is
    cancelled, it leaves the batch to the others. ``one`` and ``many`` bound their own time.
    """

    def __init__(
        self,
        one: Callable[[K], Awaitable[R]],
        many: Callable[[Sequence[K]], Awaitable[Sequence[R]]],
        *,
        failure: Callable[[BaseException], BaseException],
        max_batch: int = 256,
        max_inflight: int = 1,
        batchable: Callable[[K], bool] | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        self._one = one
        self._many = many
        self._failure = failure
        self._batchable = batchable
        self._deadlines = deadlines
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        #: False sends every lookup alone (a query that cannot be batched).
        self.enabled = max_batch > 1
        self._queue: dict[K, list[asyncio.Future[R]]] = {}
        self._inflight = 0
        self._runners: set[asyncio.Task[None]] = set()
        self._closed: BaseException | None = None
        self.batches = 0
        self.batched = 0

    @property
    def inflight(self) -> int:
        """Queries running now (one-key and batches)."""
        return self._inflight

    @property
    def queued(self) -> int:
        """Distinct keys waiting for the next batch."""
        return len(self._queue)

    async def load(self, key: K) -> R:
        """The result for ``key``: from a query of its own if a slot is free, else from the next batch."""
        if not self.enabled or (self._batchable is not None and not self._batchable(key)):
            return await self._one(key)
        if self._inflight < self.max_inflight and not self._queue:
            self._inflight += 1
            try:
                return await self._one(key)
            finally:
                self._inflight -= 1
                if self._queue:
                    self._start_runner()
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        waiters = self._queue.get(key)
        if waiters is None:
            self._queue[key] = [fut]
        else:
            waiters.append(fut)
        if self._inflight < self.max_inflight:
            self._start_runner()
        if self._deadlines is None:
            return await fut
        deadline = self._deadlines.start(lambda: _time_out(fut))
        try:
            return await fut
        finally:
            self._deadlines.finish(deadline)

    def _start_runner(self) -> None:
        if self._closed is not None:
            self._fail_queued(self._closed)
            return
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._run())
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)

    async def _run(self) -> None:
        """Send the queue, batch after batch, until it is empty."""
        try:
            while True:
                batch = self._take()
                if not batch:
                    # Let the callers just answered run first: those that look up again join the
                    # next batch instead of each starting a one-key query.
                    await asyncio.sleep(0)
                    batch = self._take()
                    if not batch:
                        return
                await self._send(batch)
        finally:
            self._inflight -= 1
            if self._queue:  # ended by a cancellation, with lookups queued behind it: hand them on (or fail them)
                self._start_runner()

    def _take(self) -> dict[K, list[asyncio.Future[R]]]:
        """Up to ``max_batch`` queued keys that someone still waits for, oldest first."""
        queue = self._queue
        batch: dict[K, list[asyncio.Future[R]]] = {}
        while queue and len(batch) < self.max_batch:
            key = next(iter(queue))
            waiters = queue.pop(key)
            if any(not w.done() for w in waiters):
                batch[key] = waiters
        return batch

    async def _send(self, batch: dict[K, list[asyncio.Future[R]]]) -> None:
        keys = list(batch)
        try:
            results = await self._many(keys) if len(keys) > 1 else [await self._one(keys[0])]
            answers = list(zip(batch.values(), results, strict=True))
        except BaseException as exc:
            for waiters in batch.values():
                for w in waiters:
                    if not w.done():
                        w.set_exception(self._failure(exc))
            if not isinstance(exc, Exception):
                raise
            return
        if len(keys) > 1:
            self.batches += 1
            self.batched += len(keys)
        for waiters, result in answers:
            for w in waiters:
                if not w.done():
                    w.set_result(result)

    def _fail_queued(self, exc: BaseException) -> None:
        queue, self._queue = self._queue, {}
        for waiters in queue.values():
            for w in waiters:
                if not w.done():
                    w.set_exception(self._failure(exc))

    async def aclose(self, reason: BaseException) -> None:
        """Fail what is queued with ``failure(reason)``; stop the batches in flight (their lookups fail too)."""
        self._closed = reason
        self._fail_queued(reason)
        runners = list(self._runners)
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
