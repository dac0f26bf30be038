"""Camera clips rendered and encoded once, then played like an IP camera's stream.

A real IP camera sends H.264 at 10-25 fps with a keyframe every 1-2 s; the capture service
decodes it and keeps the camera's fps. Rendering and encoding live for every camera costs more
than the pipeline under test, so a benchmark renders each camera's view once, encodes it as
H.264 (``.mp4``, a keyframe every 2 s), caches it by what it shows, and points the camera's
``source`` at it: ``file://`` sources are paced to their own frame rate and loop, so capture
pays the real decode cost and nothing is encoded while the pipeline runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from schemas.facility import FacilityConfig
from services.simulator.y4m import clip_frames

if TYPE_CHECKING:
    from services.simulator.world import Scenario

KEYFRAME_EVERY_S = 2.0
CLIP_FORMAT = 1
"""Bumped when the rendering or encoding of a clip changes (cached clips are then redone)."""


def write_h264(
    frames: Iterable[npt.NDArray[np.uint8]],
    path: Path,
    fps: int,
    keyframe_every_s: float = KEYFRAME_EVERY_S,
) -> int:
    """Encode BGR frames (one even size) as H.264 in an MP4 at ``fps``, a keyframe every
    ``keyframe_every_s``; returns frames written."""
    import av

    n = 0
    with av.open(str(path), "w", format="mp4") as out:
        stream = None
        for image in frames:
            if stream is None:
                h, w = image.shape[:2]
                if w % 2 or h % 2:
                    raise ValueError(f"H.264 4:2:0 needs an even frame size, got {w}x{h}")
                stream = out.add_stream("libx264", rate=fps)
                stream.width, stream.height = w, h
                stream.pix_fmt = "yuv420p"
                gop = max(1, round(keyframe_every_s * fps))
                stream.options = {"g": str(gop), "keyint_min": str(gop), "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
            n += 1
        if stream is None:
            raise ValueError("no frames to write")
        for packet in stream.encode():
            out.mux(packet)
    return n


def clip_key(
    facility: FacilityConfig,
    scenario: Scenario,
    seed: int,
    camera_id: str,
    seconds: float,
    fps: int,
    size: tuple[int, int],
) -> str:
    """What a clip shows, hashed: the camera, the tracks and models, the scenario and seed."""
    camera = facility.camera(camera_id)
    doc = {
        "format": CLIP_FORMAT,
        "camera": camera.model_dump(mode="json", include={"pose", "width", "height"}),
        "tracks": [t.model_dump(mode="json") for t in facility.tracks],
        "models": [m.model_dump(mode="json") for m in facility.locomotive_models],
        "scenario": scenario.model_dump(mode="json"),
        "seed": seed,
        "seconds": seconds,
        "fps": fps,
        "size": list(size),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def cached_clip(
    facility: FacilityConfig,
    scenario: Scenario,
    seed: int,
    camera_id: str,
    seconds: float,
    fps: int,
    size: tuple[int, int],
    cache_dir: Path,
) -> tuple[Path, bool]:
    """The H.264 clip of one posed camera's view, rendered now only if not cached yet;
    returns (path, rendered now). Raises ValueError when the camera has no pose."""
    key = clip_key(facility, scenario, seed, camera_id, seconds, fps, size)
    path = cache_dir / f"{camera_id}-{key}.mp4"
    if path.is_file():
        return path, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.part.mp4")
    try:
        write_h264(clip_frames(facility, scenario, seed, camera_id, seconds, fps, size), part, fps)
        part.replace(path)  # whole or absent: an interrupted render is never used
    finally:
        part.unlink(missing_ok=True)
    return path, True
