"""Write frames as a YUV4MPEG2 (.y4m) clip: what Chromium's fake camera plays
(``--use-file-for-fake-video-capture=clip.y4m``), so a browser can stream a simulator render
as if it were a phone pointed at a track."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from schemas.facility import FacilityConfig

if TYPE_CHECKING:
    from services.simulator.world import Scenario


def write_y4m(frames: Iterable[npt.NDArray[np.uint8]], path: Path, fps: int) -> int:
    """Write BGR frames (all one even size) as 4:2:0 y4m at ``fps``; returns frames written."""
    n = 0
    size: tuple[int, int] | None = None
    with path.open("wb") as out:
        for frame in frames:
            h, w = frame.shape[:2]
            if size is None:
                if w % 2 or h % 2:
                    raise ValueError(f"y4m 4:2:0 needs an even frame size, got {w}x{h}")
                size = (w, h)
                out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
            elif (w, h) != size:
                raise ValueError(f"frame {n} is {w}x{h}, the clip is {size[0]}x{size[1]}")
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
            n += 1
    if n == 0:
        raise ValueError("no frames to write")
    return n


def render_clip(
    facility: FacilityConfig,
    scenario: Scenario,
    seed: int,
    camera_id: str,
    path: Path,
    seconds: float,
    fps: int = 15,
    size: tuple[int, int] | None = None,
) -> int:
    """Render ``seconds`` of one posed camera's view at ``fps`` into a y4m clip at ``size``
    (default: the camera's own); returns frames written. The camera may be a browser camera:
    the clip is what a phone at its pose would film."""
    frames = clip_frames(facility, scenario, seed, camera_id, seconds, fps, size)
    return write_y4m(frames, path, fps)


def clip_offsets(n: int, palindrome: bool = False) -> list[int]:
    """The scenario ticks of a clip's frames in play order, counted from its first tick:
    forward, or forward then back again (played in a loop it never jumps: what drove in
    drives back out, and the loop starts where it ended)."""
    forward = list(range(n))
    return forward + forward[-2:0:-1] if palindrome else forward


def clip_frames(
    facility: FacilityConfig,
    scenario: Scenario,
    seed: int,
    camera_id: str,
    seconds: float,
    fps: int = 15,
    size: tuple[int, int] | None = None,
    start_s: float = 0.0,
    palindrome: bool = False,
) -> Iterator[npt.NDArray[np.uint8]]:
    """``seconds`` of one posed camera's view at ``fps`` from ``start_s`` into the scenario
    (BGR frames at ``size``), then back again when ``palindrome`` (:func:`clip_offsets`);
    raises ValueError at once when the camera has no pose."""
    from services.simulator.frames import FrameSource

    cams = [c for c in facility.cameras if c.id == camera_id]
    if not cams or cams[0].pose is None:
        posed = [c.id for c in facility.cameras if c.pose is not None]
        raise ValueError(f"camera {camera_id!r} has no pose to render from; use one of {posed}")
    # Render every tick of the clip: the camera's fps is the clip's for this rendering.
    fast = facility.model_copy(
        update={
            "cameras": [
                c.model_copy(update={"fps": float(fps), "enabled": True})
                if c.id == camera_id
                else c
                for c in facility.cameras
            ]
        }
    )
    source = FrameSource(fast, scenario, seed, cameras=[camera_id])
    width, height = size or (cams[0].width, cams[0].height)
    first = round(start_s * fps)
    if start_s < 0 or first >= source.ticks:
        raise ValueError(
            f"start {start_s:g} s is outside the scenario ({scenario.duration_s:g} s long)"
        )
    n = min(source.ticks - first, max(1, round(seconds * fps)))

    def frames() -> Iterator[npt.NDArray[np.uint8]]:
        last: npt.NDArray[np.uint8] | None = None
        for offset in clip_offsets(n, palindrome):
            tick = first + offset
            rendered = source.tick(tick).frames.get(camera_id)  # absent: camera down
            if rendered is not None:
                image = rendered.image
                if image.shape[1] != width or image.shape[0] != height:
                    image = np.asarray(
                        cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA),
                        dtype=np.uint8,
                    )
                last = np.asarray(image, dtype=np.uint8)
            if last is not None:
                yield last

    return frames()
