"""Camera clips rendered and encoded once, then played like an IP camera's stream.

A real IP camera sends H.264 at 10-25 fps with a keyframe every 1-2 s; the capture service
decodes it and keeps the camera's fps. Rendering and encoding live for every camera costs more
than the pipeline under test, so a benchmark renders each camera's view once, encodes it as
H.264 (``.mp4``, a keyframe every 2 s), caches it by what it shows, and points the camera's
``source`` at it: ``file://`` sources are paced to their own frame rate and loop, so capture
pays the real decode cost and nothing is encoded while the pipeline runs.

The same clips can be served over RTSP (:class:`ClipStreams`): each clip's access units are read
once, then pushed, looping at the clip's frame rate, into the GStreamer RTSP server, which only
packetises them. Capture then reads a real RTSP stream (RTP over the network stack, the
keyframe every 2 s, no B-frames, as IP cameras send) while the test bed costs almost nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from schemas.facility import Camera, FacilityConfig
from services.simulator.y4m import clip_frames

if TYPE_CHECKING:
    from services.simulator.serve import RtspCameraServer
    from services.simulator.world import Scenario

log = logging.getLogger(__name__)

KEYFRAME_EVERY_S = 2.0
CLIP_FORMAT = 3
"""Bumped when the rendering or encoding of a clip changes (cached clips are then redone).
2: no B-frames and no scene-cut keyframes (IP cameras send a fixed GOP of I and P frames;
served over RTSP, frames go out in decode order). 3: each picture is CLIP_SLICES slices on any
machine (it was one slice per encoder thread, so per core)."""
CLIP_SLICES = 2
"""Slices per picture: as x264 codes 720p on two threads and as many cameras send, so that the
capture is served pictures of several slices every time the test bed runs."""


def write_h264(
    frames: Iterable[npt.NDArray[np.uint8]],
    path: Path,
    fps: int,
    keyframe_every_s: float = KEYFRAME_EVERY_S,
    slices: int = 1,
) -> int:
    """Encode BGR frames (one even size) as H.264 in an MP4 at ``fps``, a keyframe every
    ``keyframe_every_s``, each picture coded as ``slices`` slices; returns frames written."""
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
                # Frame threads: PyAV's default (slice threads) makes one slice a core, so
                # what a clip is would depend on the machine that rendered it.
                stream.codec_context.thread_type = "FRAME"
                gop = max(1, round(keyframe_every_s * fps))
                stream.options = {
                    "g": str(gop),
                    "keyint_min": str(gop),
                    "bf": "0",  # as IP cameras: decode order is display order
                    "sc_threshold": "0",  # and a fixed keyframe interval, no scene cuts
                    "preset": "veryfast",
                    "slices": str(slices),
                }
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
    start_s: float = 0.0,
    palindrome: bool = False,
) -> str:
    """What a clip shows, hashed: the camera, the tracks and models, the scenario and seed,
    from when and for how long, and whether it plays back again."""
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
        "slices": CLIP_SLICES,
        **({"start_s": start_s} if start_s else {}),  # keys of clips from 0 s stay the same
        **({"palindrome": True} if palindrome else {}),
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
    start_s: float = 0.0,
    palindrome: bool = False,
) -> tuple[Path, bool]:
    """The H.264 clip of one posed camera's view from ``start_s`` into the scenario (and back
    again when ``palindrome``), rendered now only if not cached yet; returns (path, rendered
    now). Raises ValueError when the camera has no pose or the start is outside the
    scenario."""
    key = clip_key(facility, scenario, seed, camera_id, seconds, fps, size, start_s, palindrome)
    path = cache_dir / f"{camera_id}-{key}.mp4"
    if path.is_file():
        return path, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.part.mp4")
    try:
        frames = clip_frames(
            facility, scenario, seed, camera_id, seconds, fps, size, start_s, palindrome
        )
        write_h264(frames, part, fps, slices=CLIP_SLICES)
        part.replace(path)  # whole or absent: an interrupted render is never used
    finally:
        part.unlink(missing_ok=True)
    return path, True


def cached_clips(
    facility: FacilityConfig,
    scenario: Scenario,
    seed: int,
    cameras: Iterable[Camera],
    seconds: float,
    fps: int,
    cache_dir: Path,
    start_s: float = 0.0,
    say: Callable[[str], None] = log.info,
    palindrome: bool = False,
) -> dict[str, Path]:
    """:func:`cached_clip` of each camera at its own size, saying which were rendered now
    (about 30 s a camera for 30 s of 1280x720; twice that played back too) and which were
    found in the cache."""
    out = {}
    for cam in cameras:
        size = (cam.width, cam.height)
        span = f"{seconds:g} s from {start_s:g} s" + (" and back" if palindrome else "")
        say(f"clip {cam.id}: {span} at {fps} fps, {size[0]}x{size[1]}")
        out[cam.id], rendered = cached_clip(
            facility, scenario, seed, cam.id, seconds, fps, size, cache_dir, start_s, palindrome
        )
        say(f"  {'rendered' if rendered else 'cached'}: {out[cam.id]}")
    return out


@dataclass(frozen=True)
class EncodedClip:
    """A clip's H.264 access units in decode order (= display order: no B-frames), Annex B
    with SPS/PPS before each keyframe: what an IP camera sends, ready to packetise."""

    path: Path
    fps: float
    width: int
    height: int
    units: tuple[bytes, ...]
    keyframes: tuple[int, ...]

    @property
    def seconds(self) -> float:
        """How long one pass of the clip plays."""
        return len(self.units) / self.fps


def read_clip(path: Path) -> EncodedClip:
    """Read an H.264 MP4 clip's access units once (demux only, nothing decoded). Raises
    ValueError naming the problem when the file is not such a clip."""
    import av
    from av.bitstream import BitStreamFilterContext

    try:
        container = av.open(str(path))
    except (OSError, av.error.FFmpegError) as exc:
        raise ValueError(f"cannot read clip {path}: {exc}") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream; give an H.264 .mp4 clip")
        video = container.streams.video[0]
        ctx = video.codec_context
        if ctx.name != "h264":
            raise ValueError(f"{path} is {ctx.name}, not H.264; render it with `sim clip`")
        if ctx.has_b_frames:
            raise ValueError(
                f"{path} has B-frames, which a camera stream does not; render it again with "
                "`depotwatch sim clip` (or delete it from the clip cache)"
            )
        rate = video.average_rate or video.guessed_rate
        if not rate:
            raise ValueError(f"{path} has no frame rate")
        to_annex_b = BitStreamFilterContext("h264_mp4toannexb", video)
        units: list[bytes] = []
        keys: list[int] = []
        packets = [p for p in container.demux(video) if p.size]
        for packet in [*packets, None]:
            for out in to_annex_b.filter(packet):
                if out.is_keyframe:
                    keys.append(len(units))
                units.append(bytes(out))
    if not units or not keys or keys[0] != 0:
        raise ValueError(f"{path} does not start with a keyframe; render it with `sim clip`")
    return EncodedClip(path, float(rate), ctx.width, ctx.height, tuple(units), tuple(keys))


class ClipPlayer:
    """Plays encoded clips into streams at each clip's own frame rate, looping, like cameras
    that never stop: unit ``i`` of a clip is due ``i / fps`` after the start. A player that
    falls behind (a stalled process) carries on from where it was, without a burst."""

    def __init__(
        self,
        push: Callable[[str, bytes], None],
        clips: Mapping[str, EncodedClip],
        on_unit: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        max_lag_s: float = 1.0,
    ) -> None:
        if not clips:
            raise ValueError("no clip to play")
        self.push = push
        self.clips = dict(clips)
        self.on_unit = on_unit
        self.clock = clock
        self.sleep = sleep
        self.max_lag_s = max_lag_s
        self.pushed = 0
        self.resyncs = 0

    def run(self, should_stop: Callable[[], bool], max_units: int | None = None) -> int:
        """Push units until ``should_stop()`` (or ``max_units`` in all); returns units pushed."""
        start = self.clock()
        starts = dict.fromkeys(self.clips, start)
        sent = dict.fromkeys(self.clips, 0)
        while not should_stop() and (max_units is None or self.pushed < max_units):
            cam = min(self.clips, key=lambda c: starts[c] + sent[c] / self.clips[c].fps)
            clip = self.clips[cam]
            due = starts[cam] + sent[cam] / clip.fps
            wait = due - self.clock()
            if wait > 0:
                self.sleep(wait)
                continue  # re-check the stop flag and the schedule after any wake-up
            if -wait > self.max_lag_s:
                starts[cam] = self.clock() - sent[cam] / clip.fps  # no burst to catch up
                self.resyncs += 1
                log.warning("clip player behind", extra={"camera": cam, "lag_s": round(-wait, 2)})
            index = sent[cam] % len(clip.units)
            self.push(cam, clip.units[index])
            if self.on_unit is not None:
                self.on_unit(cam, index)
            sent[cam] += 1
            self.pushed += 1
        return self.pushed


@dataclass(frozen=True)
class ClipStream:
    """One stream served from a clip: its id, size and frame rate."""

    id: str
    width: int
    height: int
    fps: float


class ClipStreams:
    """Cameras served over RTSP from encoded clips: the GStreamer server child packetises the
    units a :class:`ClipPlayer` thread pushes; nothing is rendered or encoded while serving.

    ``clips`` maps a stream id to its clip file; each stream is served at
    ``rtsp://HOST:PORT/<id>`` at the clip's size and frame rate.
    """

    def __init__(
        self,
        clips: Mapping[str, Path],
        host: str = "127.0.0.1",
        port: int = 0,
        on_unit: Callable[[str, int], None] | None = None,
    ) -> None:
        self.encoded = {cam: read_clip(path) for cam, path in clips.items()}
        self.host = host
        self.port = port
        self.on_unit = on_unit
        self.server: RtspCameraServer | None = None
        self.player: ClipPlayer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def streams(self) -> list[ClipStream]:
        """One entry per stream, at its clip's size and frame rate (what the server announces)."""
        return [
            ClipStream(c, clip.width, clip.height, clip.fps) for c, clip in self.encoded.items()
        ]

    def start(self) -> ClipStreams:
        """Start the RTSP server and the player thread; raises RtspServerError if the server
        cannot start."""
        from services.simulator.serve import RtspCameraServer

        server = RtspCameraServer(
            self.streams(), host=self.host, port=self.port, encoded=self.encoded
        )
        self.server = server.start()
        self.player = ClipPlayer(server.push_encoded, self.encoded, on_unit=self.on_unit)
        self._thread = threading.Thread(target=self._play, name="clip-player", daemon=True)
        self._thread.start()
        return self

    def _play(self) -> None:
        assert self.player is not None
        try:
            self.player.run(self._stop.is_set)
        except Exception as exc:  # the server child died, or on_unit failed: the streams end
            self.error = exc
            log.error("clip streams stopped", extra={"error": f"{type(exc).__name__}: {exc}"})

    @property
    def alive(self) -> bool:
        """Whether the server runs and the player still feeds it."""
        return (
            self.server is not None
            and self.server.alive
            and self._thread is not None
            and self._thread.is_alive()
        )

    def url(self, stream_id: str) -> str:
        """RTSP URL of a stream (after :meth:`start`)."""
        if self.server is None:
            raise RuntimeError("start() the streams first")
        return self.server.url(stream_id)

    def stop(self) -> None:
        """Stop the player, then the server child. A player blocked writing to a child that
        no longer reads is freed by terminating the child first (its pipe then breaks)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            if self._thread.is_alive() and self.server is not None:
                self.server.terminate()
                self._thread.join(10)
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> ClipStreams:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
