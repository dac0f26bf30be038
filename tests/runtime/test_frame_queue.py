"""The bounded newest-wins queue between ingest stages."""

from __future__ import annotations

import threading
import time

import pytest

from services.runtime.frame_queue import FrameQueue


def test_full_queue_evicts_the_oldest_and_reports_them() -> None:
    q: FrameQueue[bytes] = FrameQueue(max_items=3)
    evicted = [q.put(bytes([i])) for i in range(5)]
    assert evicted == [[], [], [], [b"\x00"], [b"\x01"]]
    assert q.drain() == [b"\x02", b"\x03", b"\x04"]


def test_byte_budget_evicts_oldest_until_it_fits() -> None:
    q: FrameQueue[bytes] = FrameQueue(max_items=100, max_bytes=10)
    q.put(b"a" * 4)
    q.put(b"b" * 4)
    assert q.put(b"c" * 6) == [b"a" * 4]
    assert q.bytes == 10
    assert len(q) == 2


def test_an_item_larger_than_the_budget_still_goes_in_alone() -> None:
    q: FrameQueue[bytes] = FrameQueue(max_items=10, max_bytes=10)
    q.put(b"old")
    assert q.put(b"x" * 50) == [b"old"]
    assert q.drain() == [b"x" * 50]


def test_put_front_returns_an_item_for_retry_and_it_is_evicted_first() -> None:
    q: FrameQueue[bytes] = FrameQueue(max_items=2)
    q.put(b"1")
    q.put(b"2")
    taken = q.get(timeout=0)
    assert taken == b"1"
    q.put(b"3")
    # Retrying "1" overflows: being the oldest, it is the one that goes.
    assert q.put_front(b"1") == [b"1"]
    assert q.drain() == [b"2", b"3"]


def test_get_times_out_empty_and_wakes_on_put() -> None:
    q: FrameQueue[bytes] = FrameQueue(max_items=2)
    started = time.monotonic()
    assert q.get(timeout=0.05) is None
    assert time.monotonic() - started >= 0.04
    threading.Timer(0.05, q.put, args=(b"late",)).start()
    assert q.get(timeout=5) == b"late"


def test_zero_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FrameQueue(max_items=0)
