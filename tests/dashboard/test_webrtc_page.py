"""The browser camera page in a real headless Chromium, streaming its fake camera over WebRTC
to the web app (in this process), whose frames reach a real ZeroMQ receiver as a capture's do.

Chromium's fake camera plays a y4m clip; the web app's aiortc answers, decodes and decimates;
the receiver stands where the aggregator would. The pipeline behind the aggregator (S3, Kafka,
estimators, boxes drawn) is covered by ``test_webrtc_pipeline``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import cv2
import numpy as np
import pytest
import yaml
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from dashboard_builders import REPO
from web_harness import Client, run

from schemas.facility import FacilityConfig, parse_facility
from services.benchmarks.chromium import Chromium, chromium_binary
from services.benchmarks.webrtc import Receiver
from services.dashboard.server import DashboardServer
from services.runtime.capture_settings import CaptureSettings
from services.runtime.frame_wire import EncodedFrame
from services.simulator.y4m import write_y4m

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        chromium_binary() is None, reason="needs chromium (apt-get install chromium)"
    ),
]

TOKEN = "webrtc-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CAMERA = "cam-phone"
UNCALIBRATED = "cam-phone-2"
FAKE_CAMERA_ARGS = (
    "--use-fake-ui-for-media-stream",  # grant camera access without asking
    "--use-fake-device-for-media-stream",
    # Host candidates as IP addresses, not mDNS names (no multicast resolver needed).
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)


def phone_facility(fps: float = 4.0) -> FacilityConfig:
    """The repository's facility plus a browser camera ``cam-phone`` (cam-s1's view) and one
    without calibration."""
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    phone = {**data["cameras"][0], "id": CAMERA, "source": f"webrtc://{CAMERA}", "fps": fps}
    phone.pop("pose", None)
    data["cameras"].append(phone)
    data["cameras"].append({"id": UNCALIBRATED, "source": f"webrtc://{UNCALIBRATED}"})
    return parse_facility(data)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s, 15 fps 640x360 clip: a bright bar moving over a grey floor."""
    frames = []
    for i in range(60):
        img = np.full((360, 640, 3), 90, np.uint8)
        x = 40 + i * 9
        cv2.rectangle(img, (x, 120), (x + 80, 240), (40, 200, 240), -1)
        frames.append(img)
    path = tmp_path_factory.mktemp("webrtc") / "phone.y4m"
    write_y4m(frames, path, fps=15)
    return path


async def wait_frames(rx: Receiver, n: int, timeout_s: float) -> list[EncodedFrame]:
    """The phone's frames once there are ``n``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(rx.of(CAMERA)) < n:
        assert asyncio.get_running_loop().time() < deadline, (
            f"{len(rx.of(CAMERA))} of {n} frames after {timeout_s:.0f}s"
        )
        await asyncio.sleep(0.1)
    return rx.of(CAMERA)


@pytest.fixture
def collector() -> Iterator[Receiver]:
    rx = Receiver(keep=True)
    yield rx
    rx.close()


def capture_settings(collector: Receiver) -> CaptureSettings:
    return CaptureSettings(aggregator_endpoint=collector.endpoint, watchdog_s=3.0)


async def aiortc_offer() -> tuple[RTCPeerConnection, str]:
    """A second sender: aiortc's own peer with a test-pattern video track; (pc, offer SDP)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def test_a_browser_streams_its_camera_and_reconnects(clip: Path, collector: Receiver) -> None:
    async def body(client: Client, server: DashboardServer) -> None:
        args = (*FAKE_CAMERA_ARGS, f"--use-file-for-fake-video-capture={clip}")
        async with Chromium(1000, 800, extra_args=args) as page:
            await page.navigate(f"{client.base_url}/webrtc?token={TOKEN}&camera={CAMERA}")
            await page.wait_for("document.getElementById('camera')?.value === 'cam-phone'", 15)
            labels = await page.evaluate(
                "Array.from(document.querySelectorAll('#camera option'), (o) => o.textContent)"
            )
            assert [label.split(" ")[0] for label in labels] == [CAMERA, UNCALIBRATED]
            assert "not calibrated" not in labels[0]
            assert "(not calibrated)" in labels[1]
            # The token moved from the address bar into the page's session storage.
            assert "token" not in await page.evaluate("location.href")
            await page.evaluate("document.getElementById('start').click()")
            frames = await wait_frames(collector, 6, 30)
            await page.wait_for("document.getElementById('connection').textContent", 5)
            assert await page.evaluate("document.getElementById('connection').textContent") == (
                "streaming"
            )

            # The frames are a capture's: configured size, increasing seq, decimated to fps.
            head = frames[0].header
            assert (head.width, head.height) == (1280, 720)
            assert head.reconnects == 0
            seqs = [f.header.seq for f in frames]
            assert seqs == sorted(seqs)
            assert len(set(seqs)) == len(seqs)
            gaps = [
                (b.header.captured_at - a.header.captured_at).total_seconds()
                for a, b in itertools.pairwise(frames)
            ]
            assert 0.15 <= median(gaps) <= 0.4, gaps  # 4 fps kept from a 15 fps stream
            image = cv2.imdecode(np.frombuffer(frames[-1].jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (720, 1280, 3)
            listed = (await client.get("/api/v1/webrtc", headers=AUTH)).json()
            phone = next(c for c in listed["cameras"] if c["id"] == CAMERA)
            assert phone["streaming"]
            assert phone["frames"] >= 6
            assert [(c["id"], c["calibrated"]) for c in listed["cameras"]] == [
                (CAMERA, True),
                (UNCALIBRATED, False),
            ]

            # Another sender is refused while the page streams, and may take over.
            other, sdp = await aiortc_offer()
            offer = {"sdp": sdp, "type": "offer", "client_id": "other-sender-1"}
            busy = await client.post(f"/api/v1/webrtc/{CAMERA}/offer", json=offer, headers=AUTH)
            assert busy.status_code == 409
            assert "already streaming from another page" in busy.json()["detail"]
            taken = await client.post(
                f"/api/v1/webrtc/{CAMERA}/offer", json={**offer, "takeover": True}, headers=AUTH
            )
            assert taken.status_code == 200, taken.text
            assert taken.json()["type"] == "answer"
            await other.setRemoteDescription(RTCSessionDescription(**taken.json()))
            # The page lost its stream, tried again, was refused and offers to take over.
            await page.wait_for("!document.getElementById('takeover').hidden", 20)
            assert "another page" in await page.evaluate(
                "document.getElementById('error').textContent"
            )
            await other.close()

            # Take it back; then the server drops the connection and the page reconnects.
            before = len(collector.of(CAMERA))
            await page.evaluate("document.getElementById('takeover').click()")
            await wait_frames(collector, before + 3, 30)
            assert await server.webrtc.stop(CAMERA, None)
            dropped = len(collector.of(CAMERA))
            resumed = await wait_frames(collector, dropped + 3, 40)
            assert resumed[-1].header.reconnects >= 2  # page, takeover, page again, reconnect
            await page.wait_for(
                "document.getElementById('connection').textContent === 'streaming'", 10
            )

            # Stop ends the stream on the server too.
            await page.evaluate("document.getElementById('stop').click()")
            for _ in range(50):
                if not server.webrtc.streaming():
                    break
                await asyncio.sleep(0.1)
            assert not server.webrtc.streaming()

    run(body, token=TOKEN, config=phone_facility(), capture=capture_settings(collector))
