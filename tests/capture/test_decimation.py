"""The pure capture core: decimation by capture time, sequence numbers, backoff schedule."""

from __future__ import annotations

import itertools

import pytest

from services.runtime.backoff import Backoff
from services.runtime.decimation import FrameDecimator, SequenceNumbers, source_is_live


def kept_times(fps: float, times: list[float], tolerance: float = 0.25) -> list[float]:
    decimator = FrameDecimator(fps, tolerance)
    return [t for t in times if decimator.keep(t)]


def source(rate: float, seconds: float, start: float = 100.0, jitter: float = 0.0) -> list[float]:
    n = int(rate * seconds)
    # Deterministic jitter: alternately early and late.
    return [start + i / rate + (jitter if i % 2 else -jitter) for i in range(n)]


@pytest.mark.parametrize(
    ("source_fps", "target_fps"),
    [(25.0, 2.0), (30.0, 5.0), (25.0, 7.0), (10.0, 5.0), (12.5, 12.5), (60.0, 1.0)],
)
def test_long_run_rate_is_the_target_whatever_the_source_rate(
    source_fps: float, target_fps: float
) -> None:
    kept = kept_times(target_fps, source(source_fps, 60.0))
    assert len(kept) == pytest.approx(target_fps * 60, abs=2)


def test_kept_frames_are_spaced_by_time_not_by_frame_count() -> None:
    # The source speeds up half way (e.g. a camera changing its rate): counting every Nth frame
    # would double the output; keeping by time does not.
    times = source(10.0, 10.0, start=0.0) + source(40.0, 10.0, start=10.0)
    kept = kept_times(2.0, times)
    first_half = [t for t in kept if t < 10.0]
    second_half = [t for t in kept if t >= 10.0]
    assert len(first_half) == pytest.approx(20, abs=1)
    assert len(second_half) == pytest.approx(20, abs=1)


def test_a_source_at_the_target_rate_with_jitter_loses_nothing() -> None:
    times = source(5.0, 20.0, jitter=0.02)
    assert kept_times(5.0, times) == times


def test_without_tolerance_jitter_would_drop_frames() -> None:
    # Guards the test above: it is the tolerance that keeps early-by-jitter frames.
    times = source(5.0, 20.0, jitter=0.02)
    assert len(kept_times(5.0, times, tolerance=0.0)) < len(times)


def test_after_a_stall_the_grid_restarts_without_a_burst() -> None:
    times = [*source(25.0, 2.0, start=0.0), *source(25.0, 2.0, start=30.0)]
    kept = kept_times(2.0, times)
    after = [t for t in kept if t >= 30.0]
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert min(gaps) >= 0.5 * 0.75 - 1e-9
    assert len(after) == pytest.approx(4, abs=1)


def test_reset_keeps_the_next_frame() -> None:
    decimator = FrameDecimator(1.0)
    assert decimator.keep(0.0)
    assert not decimator.keep(0.1)
    decimator.reset()
    assert decimator.keep(0.2)


@pytest.mark.parametrize(("fps", "tolerance"), [(0.0, 0.25), (-1.0, 0.25), (2.0, 1.0)])
def test_bad_decimation_parameters_are_refused(fps: float, tolerance: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        FrameDecimator(fps, tolerance)


def test_sequence_numbers_increase_and_restart_above_the_previous_run() -> None:
    first = SequenceNumbers(start=1_700_000_000_000)
    taken = [first.take() for _ in range(500)]
    assert taken == list(range(1_700_000_000_000, 1_700_000_000_500))
    # A restart one second later (at most fps*1s frames were taken in that second).
    second = SequenceNumbers(start=1_700_000_001_000)
    assert second.take() > taken[-1]


def test_default_sequence_start_is_wall_clock_milliseconds() -> None:
    import time

    before = int(time.time() * 1000)
    seq = SequenceNumbers().take()
    assert before <= seq <= int(time.time() * 1000)


@pytest.mark.parametrize(
    ("initial", "maximum", "factor", "expected"),
    [
        (0.5, 4.0, 2.0, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]),
        (1.0, 1.0, 2.0, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        (0.1, 10.0, 3.0, [0.1, 0.3, 0.9, 2.7, 8.1, 10.0]),
    ],
)
def test_backoff_schedule_doubles_up_to_its_cap(
    initial: float, maximum: float, factor: float, expected: list[float]
) -> None:
    assert Backoff(initial, maximum, factor).schedule(6) == pytest.approx(expected)


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(0.5, 4.0)
    for _ in range(5):
        backoff.next_delay()
    assert backoff.next_delay() == 4.0
    backoff.reset()
    assert backoff.next_delay() == 0.5


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_bad_backoff_parameters_are_refused(initial: float, maximum: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial, maximum, factor)


@pytest.mark.parametrize(
    ("url", "live"),
    [("rtsp://h/x", True), ("http://h/x.mjpg", True), ("file:///data/cam.mp4", False)],
)
def test_only_files_need_pacing(url: str, live: bool) -> None:
    assert source_is_live(url) is live
