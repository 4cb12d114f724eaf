"""Micro-batching for Layer 1 backends that run a network on a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """Collects concurrent single requests into one call of ``fn`` on one worker thread.

    One thread: CPU forward passes do not get faster by overlapping, and a batch of N is one
    padded pass instead of N. Requests arriving while a batch runs form the next batch; callers
    that gave up (a Layer 1 time budget) are dropped before the pass. ``run`` sends a whole list
    in chunks of ``max_batch`` (warm-up, ``/v1/classifications``).
    """

    def __init__(
        self,
        fn: Callable[[list[str]], list[T]],
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        name: str = "batch",
    ) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"compass-{name}")
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[T]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.largest = 0

    async def run(self, texts: list[str]) -> list[T]:
        """A whole list on the worker thread, in chunks of ``max_batch``."""
        loop = asyncio.get_running_loop()
        out: list[T] = []
        for i in range(0, len(texts), self.max_batch):
            out += await loop.run_in_executor(self.executor, self.fn, texts[i : i + self.max_batch])
        return out

    async def submit(self, text: str) -> T:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:  # a new event loop gets its own worker
            self._queue, self._loop = asyncio.Queue(), loop
            self._worker = loop.create_task(self._serve(self._queue))
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put_nowait((text, future))
        return await future

    async def _serve(self, queue: asyncio.Queue[tuple[str, asyncio.Future[T]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), remaining))
                    except TimeoutError:
                        break
                else:
                    batch.append(queue.get_nowait())
            batch = [(t, f) for t, f in batch if not f.done()]  # callers that timed out are gone
            if not batch:
                continue
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [t for t, _ in batch])
            except Exception as exc:  # every waiter sees the failure; the worker keeps serving
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for result, (_, future) in zip(results, batch, strict=True):
                if not future.done():
                    future.set_result(result)

    def close(self) -> None:
        if self._worker is not None and self._loop is not None and not self._loop.is_closed():
            self._worker.cancel()
        self._worker = self._queue = self._loop = None
        self.executor.shutdown(wait=False, cancel_futures=True)
