"""asyncio support for ``Region.persisted_async`` / ``Region.replicated_async`` (internal).

One helper thread per region with pending awaits sleeps on the host's futex word (the GIL
released, woken by every publish: no polling) and completes each awaiting future through
``loop.call_soon_threadsafe`` once the host's status covers its seq (``persisted_async``)
or its replica seq reaches it (``replicated_async``). The thread exits when
nothing is pending. A cancelled await (task cancelled, ``asyncio.wait_for`` timed out) wakes
the thread so it drops the future; a wake-up lost in the instant before the thread's sleep
costs at most one sleep slice (one second), never a wrong answer.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, List, Optional, Tuple

if TYPE_CHECKING:
    from ._native import Region, Status

#: Longest single sleep of the helper thread (the native side caps it too).
_SLICE = 1.0

#: (seq, replicated, loop, future): ``replicated`` waits for the replica seq, else the local one.
_Pending = Tuple[int, bool, "asyncio.AbstractEventLoop", "asyncio.Future[bool]"]


def _done(status: "Status", seq: int, replicated: bool) -> bool:
    return status.replicated(seq) if replicated else status.covers(seq)


def _resolve(fut: "asyncio.Future[bool]") -> None:
    if not fut.done():
        fut.set_result(True)


def _fail(fut: "asyncio.Future[bool]", exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class Waiter:
    """The pending awaits of one region and the thread that answers them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: List[_Pending] = []
        self._running = False

    def add(self, region: "Region", seq: int, replicated: bool,
            loop: "asyncio.AbstractEventLoop", fut: "asyncio.Future[bool]") -> None:
        with self._lock:
            self._pending.append((seq, replicated, loop, fut))
            if not self._running:
                self._running = True
                thread = threading.Thread(
                    target=self._run, args=(region,), name="shmsnap-persisted", daemon=True
                )
                thread.start()

    def _answer(self, region: "Region") -> bool:
        """Completes the covered futures, drops the cancelled ones; False when none is left."""
        status = region.persisted()
        with self._lock:
            keep: List[_Pending] = []
            for seq, replicated, loop, fut in self._pending:
                if fut.done():
                    continue
                if _done(status, seq, replicated):
                    _call(loop, _resolve, fut)
                else:
                    keep.append((seq, replicated, loop, fut))
            self._pending = keep
            if not keep:
                self._running = False
                return False
            return True

    def _run(self, region: "Region") -> None:
        try:
            while True:
                # Counter before status: a publish after this load ends the sleep at once.
                seen = region._wake_count()
                if not self._answer(region):
                    return
                region._wait_change(seen, _SLICE)
        except BaseException as exc:  # an OSError of the futex, ForkedError, ...
            with self._lock:
                pending, self._pending = self._pending, []
                self._running = False
            for _, _, loop, fut in pending:
                _call(loop, _fail, fut, exc)


def _call(loop: "asyncio.AbstractEventLoop", fn: object, *args: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)  # type: ignore[arg-type]
    except RuntimeError:
        pass  # the loop is closed: nobody awaits the future any more


async def status_async(region: "Region", waiter: Waiter, seq: int,
                       timeout: Optional[float], replicated: bool) -> bool:
    """``Region.persisted_async`` (``replicated`` False: True once ``seq`` is durable) and
    ``Region.replicated_async`` (True once ``seq`` is in the replica); False at the timeout."""
    if _done(region.persisted(), seq, replicated):
        return True
    loop = asyncio.get_running_loop()
    fut: "asyncio.Future[bool]" = loop.create_future()
    # A cancelled future wakes the thread, so it drops it (and exits if it was the last).
    fut.add_done_callback(lambda _f: _wake(region))
    waiter.add(region, seq, replicated, loop, fut)
    if timeout is None:
        return await fut
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        return False


def _wake(region: "Region") -> None:
    try:
        region._wake_waiters()
    except Exception:
        pass  # best effort: the thread re-checks within one slice anyway
