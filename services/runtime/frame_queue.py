"""A bounded, thread-safe frame queue where the newest frames win.

Between the stages of the ingest path (camera reader -> sender, receiver -> object store) a
slow or absent consumer must never block the producer or grow memory without bound. When the
queue is over its budget (item count or bytes) the OLDEST items are evicted and handed back to
the caller, which counts them as drops: a live view wants the latest frame, not a backlog.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FrameQueue(Generic[T]):
    """FIFO with an item and a byte budget; ``put`` evicts the oldest items when full."""

    def __init__(
        self,
        max_items: int,
        max_bytes: int | None = None,
        size_of: Callable[[T], int] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"queue needs room for at least 1 item, got max_items={max_items}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._size_of: Callable[[T], int] = size_of or len  # type: ignore[assignment]
        self._items: deque[T] = deque()
        self._bytes = 0
        self._cond = threading.Condition()

    def put(self, item: T) -> list[T]:
        """Append ``item``; returns the oldest items evicted to stay within budget.

        An item larger than the whole byte budget still goes in (alone): refusing the newest
        frame would contradict newest-wins.
        """
        with self._cond:
            self._items.append(item)
            self._bytes += self._size_of(item)
            self._cond.notify()
            return self._trim()

    def put_front(self, item: T) -> list[T]:
        """Return an item taken by :meth:`get` to the head (a send that must be retried).

        If that overflows the budget, the returned item itself is the oldest and is evicted.
        """
        with self._cond:
            self._items.appendleft(item)
            self._bytes += self._size_of(item)
            self._cond.notify()
            return self._trim()

    def _trim(self) -> list[T]:
        # Caller holds the lock. Oldest first out; the last item always stays.
        evicted: list[T] = []
        while len(self._items) > 1 and (
            len(self._items) > self.max_items
            or (self.max_bytes is not None and self._bytes > self.max_bytes)
        ):
            old = self._items.popleft()
            self._bytes -= self._size_of(old)
            evicted.append(old)
        return evicted

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to ``timeout`` seconds; None if none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
            self._bytes -= self._size_of(item)
            return item

    def drain(self) -> list[T]:
        """Remove and return everything queued."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._bytes = 0
            return items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def bytes(self) -> int:
        """Bytes currently queued (as measured by ``size_of``)."""
        with self._cond:
            return self._bytes
