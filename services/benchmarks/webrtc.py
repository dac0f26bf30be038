"""Browser cameras: WebRTC intake beside a capture of the same video; glass -> boxes drawn.

One clip (a render of a posed camera's view, 1280x720 at 15 fps) is played two ways, each to a
ZeroMQ receiver standing in for the aggregator:

- **capture**: ``depotwatch capture`` on the clip as H.264 (file://, paced at 15 fps by the
  capture service, keyframe every 2 s): FFmpeg decode, decimate, JPEG, send: an RTSP camera's
  work without the network.
- **webrtc**: headless Chromium's fake camera plays the clip on the ``/webrtc`` page; the web
  app (``depotwatch dashboard``) receives it with aiortc (VP8 decode), decimates, JPEG, sends.

For each camera fps asked (default 2, the depot's, and 15, every frame), it prints frames
decoded and kept per second and the receiving process's CPU per frame (the web app's idle CPU,
measured first, subtracted). Chromium's own CPU (encoding) is shown apart: it is the sender's.

Then (unless ``--no-latency``) the whole path on the embedded S3 and broker: aggregator,
position estimator and web app, Chromium streaming at 2 fps, glass to boxes drawn. The page's
camera is replaced by a canvas that draws a frame of the clip with a frame number stamped as
blocks along its top edge and notes when it drew each number (the glass); the stored JPEG of
every frame whose boxes the page drew gives back the number, so each box set's latency is
(boxes drawn) - (number drawn on the canvas), split at the frame's arrival in the web app
(its capture time, in the object key): browser encode + network + jitter buffer + decode, then
decimation, aggregator, estimator and the page.
"""

from __future__ import annotations

import asyncio
import base64
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import numpy.typing as npt
import yaml

from services.benchmarks.ingest_rig import ServiceProcess, metric_sum, service_env, tree_cpu_seconds
from services.infra.processes import free_port
from services.runtime.frame_wire import EncodedFrame
from services.runtime.settings import Settings

if TYPE_CHECKING:
    from services.runtime.storage import ObjectStore

TOKEN = "bench-webrtc-token"
CLIP_FPS = 15
SIZE = (1280, 720)
LATENCY_GOAL_S = 1.0
BROWSER = "cam-phone"
FILE_CAMERA = "cam-file"


@dataclass
class Run:
    """One way of taking the clip in, at one camera fps."""

    path: str
    fps: float
    seconds: float
    decoded: float
    kept: float
    cpu_s: float
    sender_cpu_s: float | None

    def row(self) -> str:
        per_kept = 1000 * self.cpu_s / self.kept if self.kept else float("nan")
        per_decoded = 1000 * self.cpu_s / self.decoded if self.decoded else float("nan")
        sender = (
            f"{100 * self.sender_cpu_s / self.seconds:5.0f}%"
            if self.sender_cpu_s is not None
            else "     -"
        )
        return (
            f"{self.path:8} {self.fps:5g} {self.decoded / self.seconds:10.1f} "
            f"{self.kept / self.seconds:8.2f} {100 * self.cpu_s / self.seconds:7.0f}% "
            f"{per_decoded:10.1f} {per_kept:9.1f} {sender}"
        )


HEADER = (
    "path     fps   decoded/s   kept/s     CPU  ms/decoded   ms/kept  sender\n"
    "-------- ----- ---------- -------- ------- ---------- --------- ------"
)


class Receiver:
    """Frames at a bound ZeroMQ PULL socket (the aggregator's place), on a thread: counted per
    camera, and kept when ``keep`` (tests look at them)."""

    def __init__(self, keep: bool = False) -> None:
        from services.runtime.frame_transport import FrameReceiver

        self._rx = FrameReceiver("tcp://127.0.0.1:*", receive_hwm=256)
        self.endpoint = self._rx.endpoint
        self.counts: dict[str, int] = {}
        self.frames: list[EncodedFrame] = []
        self._keep = keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from services.runtime.frame_wire import decode_frame

        while not self._stop.is_set():
            parts = self._rx.receive(0.1)
            if parts is not None:
                frame = decode_frame(parts)
                cid = frame.header.camera_id
                self.counts[cid] = self.counts.get(cid, 0) + 1
                if self._keep:
                    self.frames.append(frame)

    def of(self, camera_id: str) -> list[EncodedFrame]:
        """Kept frames of one camera, in arrival order."""
        return [f for f in self.frames if f.header.camera_id == camera_id]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._rx.close()


STAMP_BLOCKS = 16
"""A frame number is stamped as this many blocks across the top 1/12 of the image: the first
white, the last black (guards), the 14 between its bits, lowest first, white = 1."""
STAMP_BITS = STAMP_BLOCKS - 2

# The page's camera, replaced (before Start) by a canvas drawing the background image with the
# frame number stamped on it; window.stampedAt[n] = Date.now() when frame n was drawn.
CANVAS_CAMERA_JS = """
(() => {
  const W = %(w)d, H = %(h)d, FPS = %(fps)d, BLOCKS = %(blocks)d;
  window.stampedAt = [];
  navigator.mediaDevices.getUserMedia = async () => {
    const canvas = document.createElement("canvas");
    canvas.width = W; canvas.height = H;
    const ctx = canvas.getContext("2d");
    const bg = new Image();
    bg.src = "data:image/jpeg;base64,%(jpeg)s";
    await bg.decode();
    let n = 0;
    const draw = () => {
      ctx.drawImage(bg, 0, 0, W, H);
      const bits = [1, ...Array.from({ length: BLOCKS - 2 }, (_, b) => (n >> b) & 1), 0];
      bits.forEach((bit, b) => {
        ctx.fillStyle = bit ? "#fff" : "#000";
        ctx.fillRect(Math.round(b * W / BLOCKS), 0, Math.ceil(W / BLOCKS), Math.round(H / 12));
      });
      window.stampedAt[n] = Date.now();
      n = (n + 1) %% (1 << (BLOCKS - 2));
    };
    draw();
    setInterval(draw, 1000 / FPS);
    return canvas.captureStream(FPS);
  };
})();
"""


def stamp(image: npt.NDArray[np.uint8], n: int) -> npt.NDArray[np.uint8]:
    """``image`` with frame number ``n`` stamped as the canvas camera draws it (for tests)."""
    out = image.copy()
    h, w = out.shape[:2]
    bits = [1, *(((n >> b) & 1) for b in range(STAMP_BITS)), 0]
    for b, bit in enumerate(bits):
        x0 = round(b * w / STAMP_BLOCKS)
        out[: round(h / 12), x0 : x0 + -(-w // STAMP_BLOCKS)] = 255 if bit else 0
    return out


def read_stamp(image: npt.NDArray[np.uint8]) -> int | None:
    """The frame number stamped on ``image`` (any size, after lossy coding); None when the
    guard blocks are not white then black (no stamp, or unreadable)."""
    gray = image.mean(axis=2) if image.ndim == 3 else image
    h, w = gray.shape
    y0, y1 = round(h / 12 * 0.25), round(h / 12 * 0.75)
    bits = []
    for b in range(STAMP_BLOCKS):
        x0, x1 = round((b + 0.25) * w / STAMP_BLOCKS), round((b + 0.75) * w / STAMP_BLOCKS)
        bits.append(int(float(gray[y0:y1, x0:x1].mean()) > 128))
    if bits[0] != 1 or bits[-1] != 0:
        return None
    return sum(bit << i for i, bit in enumerate(bits[1:-1]))


_KEY_TIME = re.compile(r"/(\d{8})/(\d{6}\.\d{3})-(\d+)\.jpg$")


def key_time_seq(key: str) -> tuple[datetime, int] | None:
    """(capture time, seq) of a stored frame's object key (``.../YYYYMMDD/HHMMSS.mmm-seq.jpg``)."""
    m = _KEY_TIME.search(key)
    if m is None:
        return None
    at = datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S.%f").replace(tzinfo=UTC)
    return at, int(m[3])


@dataclass
class Glass:
    """Per box set drawn: seconds from the canvas drawing the frame to its arrival in the web
    app, and from there to its boxes drawn in the page."""

    to_arrival: list[float] = field(default_factory=list)
    to_drawn: list[float] = field(default_factory=list)
    unread: int = 0

    @property
    def total(self) -> list[float]:
        return [a + b for a, b in zip(self.to_arrival, self.to_drawn, strict=True)]


def glass_latency(
    drawn: list[tuple[int, float]],
    stamped_at: list[float | None],
    frames: dict[int, tuple[datetime, npt.NDArray[np.uint8]]],
) -> Glass:
    """Glass -> boxes drawn per box set: ``drawn`` is (seq, ms when its boxes were drawn),
    ``stamped_at`` the canvas's ms per frame number, ``frames`` seq -> (arrival, image)."""
    out = Glass()
    for seq, drawn_ms in drawn:
        stored = frames.get(seq)
        n = read_stamp(stored[1]) if stored is not None else None
        sent = stamped_at[n] if n is not None and n < len(stamped_at) else None
        if stored is None or sent is None:
            out.unread += 1
            continue
        arrival_ms = stored[0].timestamp() * 1000.0
        out.to_arrival.append((arrival_ms - sent) / 1000.0)
        out.to_drawn.append((drawn_ms - arrival_ms) / 1000.0)
    return out


def _facility(config_path: Path, camera: str, clip_mp4: Path, fps: float, out: Path) -> Path:
    data = yaml.safe_load(config_path.read_text())
    base = next((c for c in data["cameras"] if c["id"] == camera), None)
    if base is None:
        raise click.ClickException(f"no camera {camera!r} in {config_path}")
    data["cameras"] = [
        {**base, "id": FILE_CAMERA, "source": f"file://{clip_mp4}", "fps": fps},
        {**base, "id": BROWSER, "source": f"webrtc://{BROWSER}", "fps": fps},
    ]
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _dashboard(
    settings: Settings, config: Path, endpoint: str, log_dir: Path, **env: str
) -> ServiceProcess:
    port = free_port()
    environment = service_env(
        settings,
        DEPOTWATCH_FACILITY_CONFIG=str(config),
        DEPOTWATCH_DASHBOARD_PORT=str(port),
        DEPOTWATCH_DASHBOARD_TOKEN=TOKEN,
        DEPOTWATCH_DASHBOARD_READ_TOKEN_REQUIRED="false",
        DEPOTWATCH_CAPTURE__AGGREGATOR_ENDPOINT=endpoint,
        DEPOTWATCH_LOG_LEVEL="WARNING",
        **env,
    )
    argv = [sys.executable, "-m", "services.cli", "dashboard"]
    proc = ServiceProcess("dashboard", argv, environment, log_dir / "dashboard.log")
    proc.http_port = port  # its /metrics is on the app's own port
    return proc


def _wait(condition: Any, timeout_s: float, what: str, proc: ServiceProcess | None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and not proc.running:
            raise click.ClickException(f"{proc.name} exited:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            tail = f"\n{proc.log_tail()}" if proc is not None else ""
            raise click.ClickException(f"no {what} after {timeout_s:.0f}s{tail}")
        time.sleep(0.2)


@contextmanager
def _running(proc: ServiceProcess) -> Iterator[ServiceProcess]:
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _capture_run(
    settings: Settings, config: Path, rx: Receiver, fps: float, seconds: float, log_dir: Path
) -> Run:
    from services.benchmarks.ingest_rig import capture_process

    proc = capture_process(
        FILE_CAMERA, config, rx.endpoint, settings, log_dir, DEPOTWATCH_LOG_LEVEL="WARNING"
    )
    with _running(proc):
        _wait(lambda: rx.counts.get(FILE_CAMERA, 0) >= 2, 30, "capture frames", proc)
        time.sleep(2.0)
        m0, c0, k0 = proc.metrics(), proc.cpu_seconds(), rx.counts.get(FILE_CAMERA, 0)
        time.sleep(seconds)
        m1, c1, k1 = proc.metrics(), proc.cpu_seconds(), rx.counts.get(FILE_CAMERA, 0)
    read = "depotwatch_capture_frames_read_total"
    decoded = metric_sum(m1, read, camera_id=FILE_CAMERA) - metric_sum(
        m0, read, camera_id=FILE_CAMERA
    )
    return Run("capture", fps, seconds, decoded, k1 - k0, c1 - c0, None)


async def _start_page(page: Any, base: str, camera_js: str | None = None) -> None:
    await page.navigate(f"{base}/webrtc?token={TOKEN}&camera={BROWSER}")
    await page.wait_for(f"document.getElementById('camera')?.value === '{BROWSER}'", 30)
    if camera_js is not None:
        await page.evaluate(camera_js)
    await page.evaluate("document.getElementById('start').click()")
    await page.wait_for("document.getElementById('connection').textContent === 'streaming'", 60)


def _browser_args(clip_y4m: Path | None) -> tuple[str, ...]:
    """Chromium's flags: camera granted without asking, fake camera playing ``clip_y4m`` (its
    test pattern when None), IP host candidates (no mDNS resolver needed)."""
    clip = (f"--use-file-for-fake-video-capture={clip_y4m}",) if clip_y4m is not None else ()
    return (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        *clip,
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    )


def _webrtc_run(
    settings: Settings,
    config: Path,
    rx: Receiver,
    fps: float,
    seconds: float,
    clip_y4m: Path,
    log_dir: Path,
) -> tuple[Run, float]:
    from services.benchmarks.chromium import Chromium

    dash = _dashboard(
        settings, config, rx.endpoint, log_dir, DEPOTWATCH_DASHBOARD_LAG_EXPORTER="false"
    )
    with _running(dash):
        _wait(lambda: dash.http_ok("/healthz"), 60, "web app", dash)
        time.sleep(2.0)
        i0 = dash.cpu_seconds()
        time.sleep(seconds)
        idle_per_s = (dash.cpu_seconds() - i0) / seconds

        async def stream() -> Run:
            async with Chromium(900, 700, extra_args=_browser_args(clip_y4m)) as page:
                base = f"http://127.0.0.1:{dash.http_port}"
                await _start_page(page, base)
                await asyncio.sleep(3.0)
                read = "depotwatch_capture_frames_read_total"
                m0, c0 = dash.metrics(), dash.cpu_seconds()
                s0, k0 = tree_cpu_seconds(page.pid), rx.counts.get(BROWSER, 0)
                await asyncio.sleep(seconds)
                m1, c1 = dash.metrics(), dash.cpu_seconds()
                s1, k1 = tree_cpu_seconds(page.pid), rx.counts.get(BROWSER, 0)
                decoded = metric_sum(m1, read, camera_id=BROWSER) - metric_sum(
                    m0, read, camera_id=BROWSER
                )
                cpu = max(0.0, (c1 - c0) - idle_per_s * seconds)
                return Run("webrtc", fps, seconds, decoded, k1 - k0, cpu, s1 - s0)

        return asyncio.run(stream()), idle_per_s


def _stored_frames(
    store: ObjectStore, camera: str, seqs: set[int]
) -> dict[int, tuple[datetime, npt.NDArray[np.uint8]]]:
    """seq -> (capture time, image) of the camera's stored frames with those seqs."""
    import cv2

    out: dict[int, tuple[datetime, npt.NDArray[np.uint8]]] = {}
    for key in (o.key for o in store.listing()):
        parsed = key_time_seq(key) if f"/{camera}/" in key else None
        if parsed is not None and parsed[1] in seqs:
            image = cv2.imdecode(np.frombuffer(store.get(key), np.uint8), cv2.IMREAD_COLOR)
            if image is not None:
                out[parsed[1]] = (parsed[0], np.asarray(image, np.uint8))
    return out


def _latency(
    config_path: Path,
    camera: str,
    background: npt.NDArray[np.uint8],
    seconds: float,
    data_dir: Path,
) -> Glass:
    """Glass -> boxes drawn per box set, split at the frame's arrival in the web app."""
    import cv2

    from services.benchmarks.chromium import Chromium
    from services.benchmarks.ingest_rig import aggregator_process
    from services.infra import EmbeddedInfra, settings_on_free_ports
    from services.runtime.storage import ObjectStore

    data = yaml.safe_load(config_path.read_text())
    base = next(c for c in data["cameras"] if c["id"] == camera)
    data["cameras"] = [{**base, "id": BROWSER, "source": f"webrtc://{BROWSER}", "fps": 2.0}]
    data["flows"] = {"prod": data["flows"]["prod"]}
    # The config is written elsewhere: weights are found relative to the original file.
    est = data["flows"]["prod"].setdefault("position_estimator", {})
    weights = Path(est.get("weights", "models/depot-yolo.pt"))
    if not weights.is_absolute():
        est["weights"] = str((config_path.resolve().parent / weights).resolve())
    config = data_dir / "latency-facility.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    stack = EmbeddedInfra(
        settings_on_free_ports(data_dir / "infra"), flows=["prod"], die_with_parent=True
    )
    stack.up()
    try:
        s = stack.client_settings
        zmq = f"tcp://127.0.0.1:{free_port()}"
        quiet = {"DEPOTWATCH_LOG_LEVEL": "WARNING", "DEPOTWATCH_FACILITY_CONFIG": str(config)}
        agg = aggregator_process(zmq, s, data_dir, **quiet)
        est = ServiceProcess(
            "position-estimator",
            [sys.executable, "-m", "services.cli", "position-estimator", "--flow", "prod"],
            service_env(s, **quiet),
            data_dir / "position-estimator.log",
        )
        dash = _dashboard(s, config, zmq, data_dir, DEPOTWATCH_DASHBOARD_LAG_EXPORTER="false")
        with _running(agg), _running(est), _running(dash):
            _wait(lambda: dash.http_ok("/healthz"), 60, "web app", dash)
            _wait(lambda: est.http_ok("/metrics"), 120, "position estimator", est)

            ok, jpeg = cv2.imencode(".jpg", background, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            canvas = CANVAS_CAMERA_JS % {
                "w": SIZE[0],
                "h": SIZE[1],
                "fps": CLIP_FPS,
                "blocks": STAMP_BLOCKS,
                "jpeg": base64.b64encode(jpeg.tobytes()).decode(),
            }

            async def stream() -> tuple[list[tuple[int, float]], list[float | None]]:
                async with Chromium(900, 700, extra_args=_browser_args(None)) as page:
                    await _start_page(page, f"http://127.0.0.1:{dash.http_port}", canvas)
                    await page.wait_for("document.querySelectorAll('#boxes .det-box').length", 180)
                    await page.evaluate("drawn.length = 0")  # from here on: warm
                    await asyncio.sleep(seconds)
                    drawn = await page.evaluate("drawn.slice()")
                    stamped = await page.evaluate("window.stampedAt.slice()")
                    return [(int(s), float(t)) for s, t in drawn], stamped

            drawn, stamped = asyncio.run(stream())
            frames = _stored_frames(ObjectStore(s.s3), BROWSER, {seq for seq, _ in drawn})
            return glass_latency(drawn, stamped, frames)
    finally:
        stack.down()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@click.command("webrtc")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default="facility.yaml")
@click.option("--camera", default="cam-s1", show_default=True, help="Posed camera to render.")
@click.option("--scenario", default="depot-day", show_default=True)
@click.option("--seconds", type=click.FloatRange(5), default=20, show_default=True, help="Per run.")
@click.option(
    "--fps", "fps_list", default="2,15", show_default=True, help="Camera fps to keep, per run."
)
@click.option("--latency/--no-latency", default=True, show_default=True)
@click.option("--latency-seconds", type=click.FloatRange(10), default=60, show_default=True)
def bench_command(
    config_path: Path,
    camera: str,
    scenario: str,
    seconds: float,
    fps_list: str,
    latency: bool,
    latency_seconds: float,
) -> None:
    """Browser camera intake vs a capture of the same 720p video; glass -> boxes drawn."""
    from schemas.facility import ConfigError, load_facility
    from services.benchmarks.chromium import chromium_binary
    from services.simulator.clips import write_h264
    from services.simulator.world import load_scenario
    from services.simulator.y4m import clip_frames, write_y4m

    if chromium_binary() is None:
        raise click.ClickException("needs chromium (apt-get install chromium)")
    try:
        fps_values = [float(v) for v in fps_list.split(",") if v.strip()]
        facility = load_facility(config_path)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="depotwatch-bench-webrtc-") as tmp_name:
        tmp = Path(tmp_name)
        click.echo(f"rendering {camera} ({scenario}), 4 s at {CLIP_FPS} fps, 1280x720 ...")
        frames = list(clip_frames(facility, load_scenario(scenario), 1, camera, 4, CLIP_FPS, SIZE))
        y4m, mp4 = tmp / "clip.y4m", tmp / "clip.mp4"
        write_y4m(frames, y4m, CLIP_FPS)
        write_h264(frames, mp4, CLIP_FPS)
        background = frames[len(frames) // 2]
        del frames
        settings = Settings()
        rx = Receiver()
        runs: list[Run] = []
        idle = []
        try:
            for fps in fps_values:
                config = _facility(config_path, camera, mp4, fps, tmp / f"facility-{fps:g}.yaml")
                click.echo(f"capture (H.264 file) at {fps:g} fps for {seconds:g} s ...")
                runs.append(_capture_run(settings, config, rx, fps, seconds, tmp))
                click.echo(f"webrtc (Chromium -> web app) at {fps:g} fps for {seconds:g} s ...")
                run, idle_per_s = _webrtc_run(settings, config, rx, fps, seconds, y4m, tmp)
                runs.append(run)
                idle.append(idle_per_s)
        finally:
            rx.close()
        glass = Glass()
        if latency:
            click.echo(
                f"latency: aggregator, position estimator, web app on embedded S3 + broker, "
                f"{latency_seconds:g} s ..."
            )
            glass = _latency(config_path, camera, background, latency_seconds, tmp)
    click.echo("")
    click.echo(f"one sender, 1280x720 clip at {CLIP_FPS} fps; CPU = receiving process")
    click.echo(HEADER)
    for r in runs:
        click.echo(r.row())
    click.echo(
        f"web app idle CPU (subtracted): {100 * statistics.mean(idle):.0f}% of a core; "
        "sender = Chromium encoding (all its processes)"
    )
    if latency:
        if not glass.total:
            click.echo(f"latency: no box set with a readable frame ({glass.unread} unread): MISSED")
            return
        total = glass.total
        verdict = "met" if _pct(total, 0.95) <= LATENCY_GOAL_S else "MISSED"
        click.echo(
            f"glass -> boxes drawn over {len(total)} box sets ({glass.unread} unread), "
            f"goal p95 <= {LATENCY_GOAL_S:g} s: {verdict}"
        )
        for name, values in (
            ("glass -> arrival in the web app", glass.to_arrival),
            ("arrival -> boxes drawn", glass.to_drawn),
            ("glass -> boxes drawn", total),
        ):
            click.echo(
                f"  {name:32} p50 {_pct(values, 0.5):.2f} s  p95 {_pct(values, 0.95):.2f} s  "
                f"max {max(values):.2f} s"
            )
