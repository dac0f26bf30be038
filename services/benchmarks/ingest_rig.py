"""The ingest benchmark's rig: synthetic camera video, a facility file for N cameras, and
capture / aggregator processes run the way an operator runs them (``python -m ...``).

Part of the package because ``depotwatch bench ingest`` (a shipped command) uses every piece
of it. The integration tests reuse it instead of keeping a second copy, so the benchmark and
the tests exercise the same entry points, settings and signals; nothing here imports from
``tests/``.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import yaml

from schemas.base import decode
from schemas.frames import FrameRef
from services.infra.processes import free_port, spawn, stop_child, wait_or_kill
from services.runtime.settings import Settings


def synthetic_video(
    path: Path, seconds: float, fps: float, width: int = 1280, height: int = 720, seed: int = 7
) -> Path:
    """Write an MJPEG AVI of a textured scene with a moving block (realistic JPEG sizes)."""
    rng = np.random.default_rng(seed)
    # Static texture (floor, walls) plus mild per-frame noise, like a real camera.
    base = cv2.resize(
        rng.integers(40, 200, (height // 8, width // 8, 3), dtype=np.uint8), (width, height)
    )
    base = cv2.GaussianBlur(base, (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}; is this OpenCV built with video I/O?")
    try:
        frames = max(1, int(seconds * fps))
        for i in range(frames):
            img = base.copy()
            x = int((i / frames) * (width - 200))
            cv2.rectangle(img, (x, height // 3), (x + 200, height // 3 + 120), (30, 90, 160), -1)
            cv2.putText(
                img, f"frame {i}", (40, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3
            )
            noise = np.asarray(rng.integers(0, 12, img.shape), dtype=np.uint8)
            writer.write(cv2.add(img, noise))
    finally:
        writer.release()
    return path


def facility_for_cameras(
    path: Path,
    sources: Mapping[str, str],
    fps: float,
    jpeg_quality: int = 85,
    width: int = 1280,
    height: int = 720,
) -> Path:
    """Write a minimal valid facility file whose cameras read ``sources`` (id -> URL)."""
    # A plain scale (1 px = 1 cm) is a valid calibration; the rig never maps positions.
    calibration = [
        {"pixel": [u, v], "floor": [u / 100, v / 100]}
        for u, v in ((0, 0), (width, 0), (0, height), (width, height))
    ]
    doc = {
        "facility_id": "ingest-rig",
        "tracks": [{"id": "T1", "polyline": [[0.0, 3.0], [12.8, 3.0]]}],
        "locomotive_models": [
            {"name": "TEM2", "length_m": 16.97, "plate_pattern": "^TEM2-\\d{4}$"}
        ],
        "flows": {"prod": {}},
        "cameras": [
            {
                "id": cid,
                "source": url,
                "fps": fps,
                "width": width,
                "height": height,
                "jpeg_quality": jpeg_quality,
                "calibration": calibration,
            }
            for cid, url in sources.items()
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a service process that talks to the Kafka and S3 of ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPOTWATCH_")}
    env.update(
        {
            "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "DEPOTWATCH_S3__ENDPOINT": settings.s3.endpoint,
            "DEPOTWATCH_S3__BUCKET": settings.s3.bucket,
            "DEPOTWATCH_S3__ACCESS_KEY": settings.s3.access_key.get_secret_value(),
            "DEPOTWATCH_S3__SECRET_KEY": settings.s3.secret_key.get_secret_value(),
            "DEPOTWATCH_S3__SECURE": str(settings.s3.secure).lower(),
            "DEPOTWATCH_HTTP_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class ServiceProcess:
    """A capture or aggregator process with its /metrics port and log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        """Start (or restart) the process; output goes to ``log_path``."""
        env = {**self.env, "DEPOTWATCH_HTTP_PORT": str(self.http_port)}
        self.proc = spawn(self.argv, self.log_path, Path.cwd(), env)
        return self

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc is None:
            return None
        stop_child(self.proc, timeout_s)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL at once (crash tests)."""
        if self.proc is not None:
            wait_or_kill(self.proc, deadline=0.0)

    def cpu_seconds(self) -> float:
        """User + system CPU the process used so far (Linux /proc)."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def http(self, path: str, timeout_s: float = 2.0) -> tuple[int, str]:
        """GET ``path`` from the process's /metrics-/healthz server: (status, body)."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def http_ok(self, path: str = "/metrics") -> bool:
        """Whether the process answers ``path`` with 200 (it is up and serving)."""
        try:
            return self.http(path)[0] == 200
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by ``name{labels}``; empty if the process does not answer."""
        try:
            _, body = self.http("/metrics")
        except OSError:
            return {}
        return parse_metrics(body)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's log (for failure messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def parse_metrics(body: str) -> dict[str, float]:
    """Prometheus text exposition -> value by ``name{labels}``."""
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def sample_labels(key: str) -> tuple[str, dict[str, str]]:
    """A sample key of :func:`parse_metrics` (``name{a="x",b="y"}``) -> (name, labels)."""
    name, _, rest = key.partition("{")
    return name, {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(rest)}


def scrape(port: int, timeout_s: float = 2.0) -> dict[str, float]:
    """The samples a service on this machine's ``port`` exports; empty if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            return parse_metrics(r.read().decode())
    except (OSError, http.client.HTTPException):
        return {}


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its children so far; 0 when gone."""
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


def metric_sum(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def capture_process(
    camera_id: str,
    config: Path,
    aggregator_endpoint: str,
    settings: Settings,
    log_dir: Path,
    **extra_env: str,
) -> ServiceProcess:
    """A ``depotwatch capture`` process for one camera (not started)."""
    env = service_env(
        settings,
        DEPOTWATCH_FACILITY_CONFIG=str(config),
        DEPOTWATCH_CAPTURE__AGGREGATOR_ENDPOINT=aggregator_endpoint,
        **extra_env,
    )
    argv = [sys.executable, "-m", "services.capture", "--camera", camera_id]
    return ServiceProcess(f"capture-{camera_id}", argv, env, log_dir / f"capture-{camera_id}.log")


def aggregator_process(
    bind: str, settings: Settings, log_dir: Path, **extra_env: str
) -> ServiceProcess:
    """A ``depotwatch aggregator`` process watching only cameras that connect (not started)."""
    env = service_env(settings, DEPOTWATCH_AGGREGATOR__BIND=bind, **extra_env)
    argv = [sys.executable, "-m", "services.aggregator", "--no-expect"]
    return ServiceProcess("aggregator", argv, env, log_dir / "aggregator.log")


def wait_until(condition: object, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``condition()`` until true or ``timeout_s`` passes; returns the last result."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


@dataclass(frozen=True)
class RefSample:
    """One FrameRef seen on ``frames.v1``, with its Kafka key and arrival times."""

    ref: FrameRef
    key: bytes | None
    latency_s: float  # arrival (wall clock) - captured_at
    received: float  # monotonic arrival time

    @property
    def camera_id(self) -> str:
        """Camera of the ref."""
        return self.ref.camera_id

    @property
    def seq(self) -> int:
        """Sequence number of the ref."""
        return self.ref.seq


class RefCollector:
    """Reads ``frames.v1`` from its current end in a thread, keeping refs of some cameras.

    Start it before the frames it should see are produced: it begins at the end offsets.
    """

    def __init__(self, settings: Settings, camera_prefix: str = "") -> None:
        self.settings = settings
        self.camera_prefix = camera_prefix
        self.samples: list[RefSample] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="ref-collector", daemon=True)

    def start(self, timeout_s: float = 30.0) -> RefCollector:
        """Start consuming; returns once partitions are assigned at their end offsets."""
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error:
            self.stop()
            raise RuntimeError(f"could not read frames.v1: {self._error or 'timed out'}")
        return self

    def _run(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        from services.runtime.topic_reader import viewer_consumer

        consumer = viewer_consumer(
            self.settings.kafka, "ingest-rig", overrides={"fetch.wait.max.ms": 20}
        )
        topic = FrameRef.topic_name()
        try:
            meta = consumer.list_topics(topic, timeout=10)
            parts = []
            for p in meta.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                parts.append(TopicPartition(topic, p, high))
            consumer.assign(parts)
        except KafkaException as exc:
            self._error = str(exc)
            self._ready.set()
            consumer.close()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(500, 0.1):
                    if msg.error() is not None:
                        continue
                    arrived = datetime.now(UTC)
                    ref = decode(FrameRef, msg.value())
                    if not ref.camera_id.startswith(self.camera_prefix):
                        continue
                    latency = (arrived - ref.captured_at).total_seconds()
                    self.samples.append(RefSample(ref, msg.key(), latency, time.monotonic()))
        finally:
            consumer.close()

    def refs(self, camera_id: str | None = None) -> list[FrameRef]:
        """Refs seen so far, of one camera or all."""
        return [s.ref for s in list(self.samples) if camera_id in (None, s.camera_id)]

    def stop(self) -> None:
        """Stop consuming."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
