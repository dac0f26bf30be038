"""``depotwatch up`` end to end: embedded infra, simulator, captures, aggregator, dashboard.

The first test runs without detector weights (estimators skipped); the second needs the
trained weights and shows locomotives from the simulator on the dashboard.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from rtsp_server import NEEDS_RTSP_SERVER

from schemas.facility import load_facility
from services.benchmarks.chromium import Chromium, chromium_binary
from services.infra import settings_on_free_ports
from services.infra.embedded import COMPONENTS, PORT_FIELDS
from services.infra.processes import free_port
from services.simulator.world import load_scenario
from services.simulator.y4m import render_clip

REPO = Path(__file__).resolve().parents[2]
# DEPOTWATCH_TEST_WEIGHTS runs the full test against a checkpoint (e.g. one still training).
WEIGHTS = Path(os.environ.get("DEPOTWATCH_TEST_WEIGHTS", REPO / "models" / "depot-yolo.pt"))
PHONE = "cam-phone"
TOKEN = "up-test-token"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    NEEDS_RTSP_SERVER,
]


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def _wait(
    cond: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"`up` exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    config: Path
    data: Path
    dashboard: str
    log: Path

    def status(self) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.data / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return dict(doc)

    def service(self, name: str) -> dict[str, Any] | None:
        for svc in (self.status() or {}).get("services", []):
            if svc["name"] == name:
                return dict(svc)
        return None


def _write_config(path: Path, rtsp_port: int, enabled: set[str], phone: bool = False) -> None:
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    data["flows"] = {"prod": data["flows"]["prod"]}
    data["flows"]["prod"]["position_estimator"]["weights"] = str(WEIGHTS)
    for cam in data["cameras"]:
        cam["enabled"] = cam["id"] in enabled
        cam["source"] = cam["source"].replace(":8554/", f":{rtsp_port}/")
    if phone:
        # A browser camera with cam-s1's pose: its page streams a render of that view.
        s1 = next(c for c in data["cameras"] if c["id"] == "cam-s1")
        data["cameras"].append({**s1, "id": PHONE, "source": f"webrtc://{PHONE}"})
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _start_up(
    tmp_path: Path, *extra: str, phone: bool = False, env_extra: dict[str, str] | None = None
) -> Iterator[Up]:
    config = tmp_path / "facility.yaml"
    _write_config(config, free_port(), {"cam-s1", "cam-s2", PHONE}, phone)
    data = tmp_path / "data"
    infra = settings_on_free_ports(data).infra
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPOTWATCH_")}
    for component in COMPONENTS:
        for name in PORT_FIELDS[component]:
            env[f"DEPOTWATCH_INFRA__{name.upper()}"] = str(getattr(infra, name))
    env["DEPOTWATCH_HTTP_PORT"] = "0"
    env.update(env_extra or {})
    port = free_port()
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "up",
                "--config",
                str(config),
                "--data-dir",
                str(data),
                "--dashboard-port",
                str(port),
                "--no-live",
                *extra,
            ],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    up = Up(proc, config, data, f"http://127.0.0.1:{port}", log)
    try:
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                raise AssertionError(
                    f"`up` did not stop in 120s:\n{log.read_text()[-3000:]}"
                ) from None


@pytest.fixture
def up_without_estimators(tmp_path: Path) -> Iterator[Up]:
    yield from _start_up(
        tmp_path, "--skip", "position-estimator", "--skip", "plate-ocr", "--skip", "state-estimator"
    )


def test_up_runs_hot_adds_a_camera_and_leaves_nothing_behind(up_without_estimators: Up) -> None:
    up = up_without_estimators
    _wait(
        lambda: (s := up.service("capture/cam-s1")) and s["state"] == "up" and s["rate"],
        180,
        "capture/cam-s1 up with a frame rate",
        up.proc,
        up.log,
    )
    # Frames flow: camera -> capture -> aggregator -> S3 + frames.v1 -> dashboard tile.
    _wait(
        lambda: (snap := _json(f"{up.dashboard}/api/snapshot")) and "cam-s1" in snap["frames"],
        90,
        "a frame of cam-s1 on the dashboard",
        up.proc,
        up.log,
    )
    with urllib.request.urlopen(f"{up.dashboard}/frames/cam-s1.jpg", timeout=5) as resp:
        assert resp.read(3) == b"\xff\xd8\xff"  # a JPEG from the object store

    # Hot add: enable cam-n1; only its capture starts (and the simulator serves it).
    agg_pid = up.service("aggregator")["pid"]  # type: ignore[index]
    s1_pid = up.service("capture/cam-s1")["pid"]  # type: ignore[index]
    data = yaml.safe_load(up.config.read_text())
    for cam in data["cameras"]:
        if cam["id"] == "cam-n1":
            cam["enabled"] = True
    up.config.write_text(yaml.safe_dump(data, sort_keys=False))
    _wait(
        lambda: (s := up.service("capture/cam-n1")) and s["state"] == "up",
        60,
        "capture/cam-n1 started",
        up.proc,
        up.log,
    )
    _wait(
        lambda: (
            (snap := _json(f"{up.dashboard}/api/snapshot"))
            and any(c["id"] == "cam-n1" and c["enabled"] for c in snap["layout"]["cameras"])
        ),
        30,
        "cam-n1 enabled on the dashboard",
        up.proc,
        up.log,
    )
    _wait(
        lambda: (snap := _json(f"{up.dashboard}/api/snapshot")) and "cam-n1" in snap["frames"],
        90,
        "a frame of the added camera on the dashboard",
        up.proc,
        up.log,
    )
    assert up.service("aggregator")["pid"] == agg_pid  # type: ignore[index]
    assert up.service("capture/cam-s1")["pid"] == s1_pid  # type: ignore[index]

    # A config error is reported and the running config stays.
    up.config.write_text(up.config.read_text().replace("fps: 2", "fps: 0", 1))
    _wait(
        lambda: "config rejected" in up.log.read_text(),
        30,
        "config error reported",
        up.proc,
        up.log,
    )
    assert up.service("capture/cam-n1")["state"] == "up"  # type: ignore[index]

    # Ctrl-C / SIGTERM: everything `up` started is gone, infrastructure included.
    started = _descendants(up.proc.pid)
    assert len(started) >= 6
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(120) == 0, up.log.read_text()[-3000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.2)
    left = sorted(p for p in started if _alive(p))
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def up_full(tmp_path: Path) -> Iterator[Up]:
    # A token, for the browser camera's offer (a change); reads stay open for the checks.
    yield from _start_up(
        tmp_path,
        phone=True,
        env_extra={
            "DEPOTWATCH_DASHBOARD_TOKEN": TOKEN,
            "DEPOTWATCH_DASHBOARD_READ_TOKEN_REQUIRED": "false",
        },
    )


async def _stream_phone(up: Up, clip: Path) -> dict[str, Any]:
    """Stream ``clip`` from headless Chromium's fake camera on /webrtc until the page draws
    the pipeline's boxes; returns the dashboard snapshot seen then."""
    args = (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    )
    async with Chromium(1000, 800, extra_args=args) as page:
        await page.navigate(f"{up.dashboard}/webrtc?token={TOKEN}&camera={PHONE}")
        await page.wait_for(f"document.getElementById('camera')?.value === '{PHONE}'", 20)
        await page.evaluate("document.getElementById('start').click()")
        await page.wait_for("document.getElementById('connection').textContent === 'streaming'", 30)
        # Boxes of the position estimator, for this camera's frames, over the live video.
        boxes = await page.wait_for("document.querySelectorAll('#boxes .det-box').length", 120)
        assert boxes >= 1
        classes = await page.evaluate(
            "[...document.querySelectorAll('#boxes .det-box')].map(b => b.dataset.cls)"
        )
        assert set(classes) <= {"head", "tail", "plate"}, classes
        snap = _json(f"{up.dashboard}/api/snapshot")
        assert snap is not None
        await page.screenshot(up.log.parent / "webrtc-page.png")
        return dict(snap)


@pytest.mark.skipif(not WEIGHTS.exists(), reason=f"needs trained detector weights at {WEIGHTS}")
@pytest.mark.skipif(chromium_binary() is None, reason="needs chromium (apt-get install chromium)")
def test_up_dashboard_shows_simulated_locomotives(up_full: Up) -> None:
    up = up_full
    snap = _wait(
        lambda: (
            (s := _json(f"{up.dashboard}/api/snapshot"))
            and s["states"].get("prod", {}).get("locomotives")
            and s
        ),
        300,
        "locomotives on the dashboard",
        up.proc,
        up.log,
    )
    locos = snap["states"]["prod"]["locomotives"]
    assert all(lo["track_id"] in {"T1", "T2", "T3"} for lo in locos)
    # `up` runs a job worker on its own Redis, and the API lists it.
    workers = _wait(
        lambda: _json(f"{up.dashboard}/api/v1/workers") or None,
        60,
        "the job worker in /api/v1/workers",
        up.proc,
        up.log,
    )
    assert len(workers) == 1
    assert workers[0]["queues"] == ["video", "replay", "score", "train"]
    # Plates too: the plate reader reads the plate boxes of positions.prod.v1 (no detector of
    # its own), and the state names the locomotives it read.
    snap = _wait(
        lambda: (
            (s := _json(f"{up.dashboard}/api/snapshot"))
            and any(lo["plate"] for lo in s["states"].get("prod", {}).get("locomotives", []))
            and s
        ),
        180,
        "a number plate on the dashboard",
        up.proc,
        up.log,
    )
    plated = [lo for lo in snap["states"]["prod"]["locomotives"] if lo["plate"]]
    assert all(lo["plate"].startswith(f"{lo['model']}-") for lo in plated), plated

    # A browser camera: the page streams a render of cam-s1's view over WebRTC; its frames
    # go through the aggregator (S3 + frames.v1) and the estimators like any camera's.
    assert up.service(f"capture/{PHONE}") is None  # no capture process of its own
    clip = up.log.parent / "phone.y4m"
    render_clip(
        load_facility(up.config), load_scenario("depot-day"), 1, PHONE, clip, 3, 10, (640, 360)
    )
    snap = asyncio.run(_stream_phone(up, clip))
    ref = snap["frames"][PHONE]  # a FrameRef of the phone's on frames.v1
    assert (ref["width"], ref["height"]) == (1280, 720)
    with urllib.request.urlopen(f"{up.dashboard}/{ref['url']}", timeout=10) as resp:
        assert resp.read(2) == b"\xff\xd8"  # its JPEG, read back from S3
    assert snap["detections"][f"{PHONE}/prod"]["boxes"]  # position estimates of its frames
