"""ProgressWatch: health that fails when there is work and no progress (injected clock)."""

from __future__ import annotations

from fakes import Clock

from services.runtime.observability import ProgressWatch, with_grace


def test_a_backlog_with_no_progress_fails_after_the_limit() -> None:
    clock, done = Clock(), [0]
    watch = ProgressWatch(lambda: done[0], lambda: 5, stall_after_s=30, clock=clock)
    clock.now += 29
    assert watch.check()[0]
    clock.now += 2
    ok, detail = watch.check()
    assert not ok
    assert "5 waiting" in detail
    done[0] += 3
    assert watch.check()[0]
    clock.now += 29
    assert watch.check()[0]


def test_no_work_is_healthy_however_long_it_lasts() -> None:
    clock = Clock()
    watch = ProgressWatch(lambda: 0, lambda: 0, stall_after_s=30, clock=clock)
    clock.now += 3600
    assert watch.check()[0]


def test_a_backlog_that_cannot_be_measured_fails_after_its_grace() -> None:
    clock = Clock()
    backlog: list[int | None] = [0]
    watch = ProgressWatch(lambda: 0, lambda: backlog[0], unreachable_after_s=60, clock=clock)
    watch.check()
    backlog[0] = None
    clock.now += 59
    assert watch.check()[0]
    clock.now += 2
    ok, detail = watch.check()
    assert not ok
    assert "unreachable" in detail


def test_a_dependency_fails_health_only_after_its_grace() -> None:
    clock, up = Clock(), [False]
    check = with_grace(lambda: (up[0], "bucket"), grace_s=30, clock=clock)
    assert check()[0]
    clock.now += 31
    ok, detail = check()
    assert not ok
    assert "failing for 31s" in detail
    up[0] = True
    assert check()[0]
    up[0] = False
    assert check()[0]  # a new outage starts its own grace
