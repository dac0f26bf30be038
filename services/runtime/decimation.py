"""The pure core of capture: which frames to keep, and how they are numbered.

No OpenCV, no sockets: every function takes times and values and is tested with plain numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class FrameDecimator:
    """Keeps frames at ``fps`` by capture time, whatever rate the source delivers.

    Frames are kept on a fixed time grid (one slot per ``1/fps`` seconds), so the long-run rate
    is exactly ``fps`` even when the source rate is not a multiple of it. A frame up to
    ``tolerance`` of a period early counts as due, so a source that runs at the target rate
    with jitter loses nothing. After a stall (stream gap) the grid restarts at the next frame
    instead of releasing a burst to catch up.
    """

    fps: float
    tolerance: float = 0.25
    _next_due: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")

    @property
    def period(self) -> float:
        """Seconds between kept frames."""
        return 1.0 / self.fps

    def keep(self, t: float) -> bool:
        """Whether the frame read at monotonic time ``t`` (seconds) is kept."""
        if self._next_due is None:
            self._next_due = t + self.period
            return True
        if t < self._next_due - self.tolerance * self.period:
            return False
        # On schedule: advance the grid by one slot. Late by more than a slot: restart it.
        base = self._next_due if t - self._next_due < self.period else t
        self._next_due = base + self.period
        return True

    def reset(self) -> None:
        """Forget the grid (the stream was reopened)."""
        self._next_due = None


@dataclass
class SequenceNumbers:
    """Per-camera frame numbers that keep increasing across capture restarts.

    Numbering starts at the wall-clock time of the start in milliseconds and adds one per
    frame. A camera yields far fewer than 1000 frames a second, so a restarted capture always
    starts above where the previous one stopped, and downstream de-duplication by
    (camera, seq) never mistakes a new frame for an old one. Gaps inside a run are drops.
    """

    start: int = field(default_factory=lambda: int(time.time() * 1000))
    _next: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ValueError(f"sequence start must be >= 0, got {self.start}")
        self._next = self.start

    def take(self) -> int:
        """The next sequence number."""
        value = self._next
        self._next += 1
        return value


def source_is_live(url: str) -> bool:
    """Network streams are paced by the camera; files must be paced by us."""
    return not url.startswith("file://")
