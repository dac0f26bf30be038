"""The pure core of the aggregator: object keys, de-duplication, camera activity, frame refs.

No sockets, no S3, no Kafka: everything here takes plain values and is unit-tested with them.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.frames import FrameRef
from services.runtime.frame_wire import FrameHeader
from services.runtime.stats import percentile


def frame_key(prefix: str, camera_id: str, captured_at: datetime, seq: int) -> str:
    """Object key of a frame: ``<prefix>/<camera>/<YYYYMMDD>/<HHMMSS.mmm>-<seq>.jpg`` (UTC).

    Keys list in (camera, capture time) order, a day is one prefix (cheap to browse or delete),
    and the sequence number makes two frames of the same millisecond distinct.
    """
    t = captured_at.astimezone(UTC)
    return f"{prefix}/{camera_id}/{t:%Y%m%d}/{t:%H%M%S}.{t.microsecond // 1000:03d}-{seq}.jpg"


def frame_ref(
    header: FrameHeader,
    bucket: str,
    key: str,
    size: int,
    sha256: str,
    stored_at: datetime | None = None,
) -> FrameRef:
    """The ``frames.v1`` message for a frame that IS stored under ``bucket/key`` (since
    ``stored_at``)."""
    return FrameRef(
        camera_id=header.camera_id,
        seq=header.seq,
        captured_at=header.captured_at,
        bucket=bucket,
        key=key,
        width=header.width,
        height=header.height,
        size=size,
        sha256=sha256,
        stored_at=stored_at,
        reconnects=header.reconnects,
    )


def shard_of(camera_id: str, shards: int) -> int:
    """Which store worker owns a camera; stable, so each camera's frames stay in order."""
    return zlib.crc32(camera_id.encode()) % shards


class DedupeWindow:
    """Remembers the last ``size`` sequence numbers of each camera.

    A frame whose (camera, seq) is in the window is a duplicate (a re-sent frame) and is
    stored once. The window is per camera so a busy camera cannot push a quiet one's history
    out.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"dedupe window needs size >= 1, got {size}")
        self.size = size
        self._seen: dict[str, OrderedDict[int, None]] = {}

    def first_time(self, camera_id: str, seq: int) -> bool:
        """True the first time (camera, seq) is offered within the window, False after."""
        seen = self._seen.setdefault(camera_id, OrderedDict())
        if seq in seen:
            return False
        seen[seq] = None
        if len(seen) > self.size:
            seen.popitem(last=False)
        return True


@dataclass(frozen=True)
class Silence:
    """A camera that has delivered nothing for too long."""

    camera_id: str
    silent_s: float
    ever_seen: bool


class CameraActivity:
    """When each camera last delivered a frame; thread-safe (receiver writes, health reads).

    ``expected`` cameras (from the facility config) count as silent from ``started`` until
    their first frame; any other camera is tracked from its first frame, so a new camera is
    accepted and watched without a restart.
    """

    def __init__(self, started: float, expected: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._started = started
        self._last: dict[str, float] = {}
        self._expected = set(expected)

    def record(self, camera_id: str, t: float) -> bool:
        """Note a frame at monotonic ``t``; True on the camera's first frame since start."""
        with self._lock:
            new = camera_id not in self._last
            self._last[camera_id] = t
            return new

    def set_expected(self, expected: Iterable[str]) -> None:
        """Replace the expected cameras (config reloaded); cameras taken out are forgotten."""
        new = set(expected)
        with self._lock:
            for removed in self._expected - new:
                self._last.pop(removed, None)
            self._expected = new

    def cameras(self) -> list[str]:
        """Every camera seen or expected, sorted."""
        with self._lock:
            return sorted(set(self._last) | self._expected)

    def silent(self, now: float, period_s: float) -> list[Silence]:
        """Cameras with no frame in the last ``period_s`` seconds."""
        with self._lock:
            out = []
            for cam in sorted(set(self._last) | self._expected):
                last = self._last.get(cam)
                silent = now - (last if last is not None else self._started)
                if silent > period_s:
                    out.append(Silence(cam, silent, last is not None))
            return out


class RecentLatencies:
    """The last ``size`` samples of a latency, for percentiles in logs and benchmarks."""

    def __init__(self, size: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        """Record one sample."""
        with self._lock:
            self._samples.append(seconds)

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the samples, None when there are none."""
        with self._lock:
            data = list(self._samples)
        return percentile(data, q)
