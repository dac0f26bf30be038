"""RTSP: the GStreamer server child serves rendered frames; an OpenCV client reads them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from schemas.facility import FacilityConfig
from services.simulator.frames import FrameSource
from services.simulator.render import Renderer
from services.simulator.serve import SYSTEM_PYTHON, RtspCameraServer, RtspServerError, run_realtime
from tests.simulator.scenes import scenario


def _gstreamer_available() -> bool:
    import subprocess

    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = (
        "import gi; gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import GstRtspServer"
    )
    return (
        subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, check=False).returncode
        == 0
    )


needs_gst = pytest.mark.skipif(
    not _gstreamer_available(),
    reason="GStreamer RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0) is not installed",
)


@pytest.mark.integration
@needs_gst
def test_opencv_reads_the_served_stream(facility: FacilityConfig, renderer: Renderer) -> None:
    parked = [{"id": "P", "model": "TEM2", "track": "T1", "keyframes": [{"at_s": 0, "head_m": 16}]}]
    source = FrameSource(
        facility,
        scenario(duration_s=600, locomotives=parked),
        seed=1,
        cameras=["cam-s2"],
        renderer=renderer,
    )
    expected = source.tick(0).frames["cam-s2"].image
    stop = threading.Event()
    with RtspCameraServer(source.cameras, port=0) as server:
        feeder = threading.Thread(
            target=run_realtime,
            args=(
                source,
                lambda t: [server.push(c, f.image) for c, f in t.frames.items()],
                stop.is_set,
            ),
            kwargs={"speed": 4.0},  # 8 frames/s: the client's probe finishes sooner
            daemon=True,
        )
        feeder.start()
        try:
            cap = cv2.VideoCapture(server.url("cam-s2"), cv2.CAP_FFMPEG)
            assert cap.isOpened(), f"OpenCV could not open {server.url('cam-s2')}"
            frames = []
            deadline = time.monotonic() + 30
            while len(frames) < 3 and time.monotonic() < deadline:
                ok, frame = cap.read()
                if ok:
                    frames.append(frame)
            cap.release()
        finally:
            stop.set()
            feeder.join(10)
        assert len(frames) == 3
        assert frames[-1].shape == expected.shape
        # H.264 at 2 Mbit/s: close to the rendered frame, not bit-exact.
        diff = np.abs(frames[-1].astype(int) - expected.astype(int)).mean()
        assert diff < 8, diff
    assert not server.alive


@pytest.mark.integration
@needs_gst
def test_server_reports_a_taken_port(facility: FacilityConfig) -> None:
    import socket

    cams = [facility.camera("cam-s1")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RtspCameraServer(cams, port=port, start_timeout_s=10)
        with pytest.raises(RtspServerError, match="port"):
            server.start()
    assert not server.alive


def test_missing_gstreamer_python_is_one_clear_line(facility: FacilityConfig) -> None:
    server = RtspCameraServer([facility.camera("cam-s1")], python="/nonexistent/python3")
    with pytest.raises(RtspServerError, match="python3-gi"):
        server.start()
