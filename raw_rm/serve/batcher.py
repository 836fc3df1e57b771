"""An asyncio micro-batcher that forms a batch only when a worker is free (pure: no Ray, no HTTP).

    batcher = MicroBatcher(score_chunks, max_batch_size=64, batch_wait_timeout_s=0.005, size_fn=len)
    rows = await batcher.submit(chunk)          # from many concurrent requests; one call of score_chunks per batch

Why not Ray Serve's ``@serve.batch``: its loop forms the next batch as soon as ``batch_wait_timeout_s`` has passed,
whether or not the previous batch has finished, and parks the new batch on a semaphore
(``ray/serve/batching.py``, ``_BatchQueue._process_batches``, ray 2.60). With one batch at a time and a forward of
50 ms, the requests that arrive meanwhile are cut into a queue of 5 ms batches: the mean batch size measured in
``benchmarks/serve_load.py`` was 2.2 texts at 64 concurrent clients. Here a batch is formed only when one of the
``max_concurrent_batches`` workers is free, so everything that queued during the previous batch joins the next one
(up to ``max_batch_size``). ``batch_wait_timeout_s`` counts from the oldest queued item's arrival: an idle server
waits that long for company, a busy one does not wait at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Gathers items submitted by concurrent coroutines into calls of ``fn(items) -> results`` (same order, same length).

    Args:
        fn: async function of a list of items, returning one result per item.
        max_batch_size: the most ``size_fn`` units per batch; a single larger item forms a batch on its own.
        batch_wait_timeout_s: the longest an item waits for others when a worker is free (0 = take what is queued).
        max_concurrent_batches: batches in flight at once (workers).
        size_fn: the size of one item (default 1 per item), e.g. the number of texts in a chunk.

    An exception raised by ``fn`` is raised in every caller of that batch; a caller that was cancelled before its
    batch formed is left out of it.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch_size: int,
        batch_wait_timeout_s: float = 0.0,
        max_concurrent_batches: int = 1,
        size_fn: Callable[[T], int] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: expected >= 1, got {max_batch_size}")
        if max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches: expected >= 1, got {max_concurrent_batches}")
        if batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s: expected >= 0, got {batch_wait_timeout_s}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_concurrent_batches = max_concurrent_batches
        self.size_fn = size_fn or (lambda item: 1)
        # (item, size, future, arrival time from time.monotonic())
        self._queue: deque[tuple[T, int, asyncio.Future, float]] = deque()
        self._queued_size = 0
        self._arrived: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result."""
        loop = asyncio.get_running_loop()
        if self._arrived is None or not self._workers or self._workers[0].get_loop() is not loop:
            self._arrived = asyncio.Event()
            self._workers = [loop.create_task(self._work()) for _ in range(self.max_concurrent_batches)]
        future: asyncio.Future = loop.create_future()
        size = int(self.size_fn(item))
        self._queue.append((item, size, future, time.monotonic()))
        self._queued_size += size
        self._arrived.set()
        return await future

    def _take_batch(self) -> list[tuple[T, asyncio.Future]]:
        batch: list[tuple[T, asyncio.Future]] = []
        total = 0
        while self._queue:
            item, size, future, _ = self._queue[0]
            if future.done():  # the caller was cancelled (client gone): drop it
                self._queue.popleft()
                self._queued_size -= size
                continue
            if batch and total + size > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_size -= size
            batch.append((item, future))
            total += size
        return batch

    async def _work(self) -> None:
        assert self._arrived is not None, "submit() creates the event before the workers"
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if self.batch_wait_timeout_s > 0 and self._queued_size < self.max_batch_size:
                deadline = self._queue[0][3] + self.batch_wait_timeout_s
                while self._queued_size < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), left)
                    except asyncio.TimeoutError:
                        break
            batch = self._take_batch()
            if self._queue:
                self._arrived.set()  # leftovers: let another free worker take them now
            if not batch:
                continue
            await self._run(batch)

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await self.fn(items)
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error; the worker lives on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException as exc:  # cancellation of the worker itself: fail the callers, then stop
            for _, future in batch:
                if not future.done():
                    future.set_exception(RuntimeError(f"batch worker stopped ({type(exc).__name__})"))
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def stats(self) -> dict[str, Any]:
        """Queued items and their total size (for /stats)."""
        return {"queued_items": len(self._queue), "queued_size": self._queued_size}
