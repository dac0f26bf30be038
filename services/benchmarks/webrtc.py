"""Browser cameras: WebRTC intake beside a capture of the same video; capture -> boxes drawn.

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
position estimator and web app, Chromium streaming at 2 fps, and the page's own measure of
each box set: capture (frame arrival in the web app) -> boxes drawn in the page, p50/p95.
Browser -> server network and jitter-buffer time is not in it (on one machine: milliseconds).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import numpy.typing as npt
import yaml

from services.benchmarks.ingest_rig import ServiceProcess, metric_sum, service_env
from services.infra.processes import free_port
from services.runtime.frame_wire import EncodedFrame
from services.runtime.settings import Settings

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


def _write_h264(frames: list[npt.NDArray[np.uint8]], path: Path, fps: int) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(2 * fps), "preset": "veryfast"}  # a keyframe every 2 s
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


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


def _tree_cpu_s(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


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


async def _start_page(page: Any, base: str) -> None:
    await page.navigate(f"{base}/webrtc?token={TOKEN}&camera={BROWSER}")
    await page.wait_for(f"document.getElementById('camera')?.value === '{BROWSER}'", 30)
    await page.evaluate("document.getElementById('start').click()")
    await page.wait_for("document.getElementById('connection').textContent === 'streaming'", 60)


def _browser_args(clip_y4m: Path) -> tuple[str, ...]:
    return (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={clip_y4m}",
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
                s0, k0 = _tree_cpu_s(page.pid), rx.counts.get(BROWSER, 0)
                await asyncio.sleep(seconds)
                m1, c1 = dash.metrics(), dash.cpu_seconds()
                s1, k1 = _tree_cpu_s(page.pid), rx.counts.get(BROWSER, 0)
                decoded = metric_sum(m1, read, camera_id=BROWSER) - metric_sum(
                    m0, read, camera_id=BROWSER
                )
                cpu = max(0.0, (c1 - c0) - idle_per_s * seconds)
                return Run("webrtc", fps, seconds, decoded, k1 - k0, cpu, s1 - s0)

        return asyncio.run(stream()), idle_per_s


def _latency(
    config_path: Path, camera: str, clip_y4m: Path, seconds: float, data_dir: Path
) -> list[float]:
    """Capture -> boxes drawn, seconds, as the page measured each box set it drew."""
    from services.benchmarks.chromium import Chromium
    from services.benchmarks.ingest_rig import aggregator_process
    from services.infra import EmbeddedInfra, settings_on_free_ports

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

            async def stream() -> list[float]:
                async with Chromium(900, 700, extra_args=_browser_args(clip_y4m)) as page:
                    await _start_page(page, f"http://127.0.0.1:{dash.http_port}")
                    await page.wait_for("document.querySelectorAll('#boxes .det-box').length", 180)
                    await page.evaluate("lags.length = 0")  # from here on: warm
                    await asyncio.sleep(seconds)
                    return [float(v) for v in await page.evaluate("lags.slice()")]

            return asyncio.run(stream())
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
    """Browser camera intake vs a capture of the same 720p video; capture -> boxes drawn."""
    from schemas.facility import ConfigError, load_facility
    from services.benchmarks.chromium import chromium_binary
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
        _write_h264(frames, mp4, CLIP_FPS)
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
        lags: list[float] = []
        if latency:
            click.echo(
                f"latency: aggregator, position estimator, web app on embedded S3 + broker, "
                f"{latency_seconds:g} s ..."
            )
            lags = _latency(config_path, camera, y4m, latency_seconds, tmp)
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
        if not lags:
            click.echo("latency: the page drew no boxes (MISSED)")
            return
        p50, p95 = _pct(lags, 0.5), _pct(lags, 0.95)
        verdict = "met" if p95 <= LATENCY_GOAL_S else "MISSED"
        click.echo(
            f"capture -> boxes drawn: p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(lags):.2f} s "
            f"over {len(lags)} box sets (goal p95 <= {LATENCY_GOAL_S:g} s: {verdict})"
        )
