"""`depotwatch sim serve` end to end: RTSP child, ground truth on Kafka, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from schemas import GroundTruth, decode
from services.runtime.settings import Settings
from tests.simulator.scenes import REPO
from tests.simulator.test_rtsp import needs_gst


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if needle in line:
                return line
        time.sleep(0.2)  # polling a log file: there is no event to wait on
    raise AssertionError(f"serve never printed {needle!r}: {log.read_text()[-500:]}")


def _start_serve(
    settings: Settings, tmp_path: Path, scenario: dict[str, object], extra: list[str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """`depotwatch sim serve` of ``scenario`` for cam-s1 on a free port, publishing to the
    test broker; returns the process and its log file."""
    scenario_file = tmp_path / f"{scenario['name']}.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario))
    env = {
        **os.environ,
        "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "DEPOTWATCH_LOG_FORMAT": "console",
    }
    cmd = [sys.executable, "-m", "services.cli", "sim", "serve", "--config",
           str(REPO / "facility.yaml"), "--scenario", str(scenario_file), "--cameras", "cam-s1",
           "--port", "0", *extra]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:  # a file, not a pipe: nobody has to drain it
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def _ground_truths(settings: Settings, scenario: str, n: int) -> list[GroundTruth]:
    """The first ``n`` ground-truth records of ``scenario`` on ground-truth.v1 (60 s at most)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=15000,
    )
    partition = TopicPartition(GroundTruth.topic_name(), 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    truths: list[GroundTruth] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(truths) < n:
        for batch in consumer.poll(timeout_ms=500).values():
            for record in batch:
                msg = decode(GroundTruth, record.value)
                if msg.scenario == scenario:
                    truths.append(msg)
    consumer.close()
    return truths


@needs_gst
def test_serve_publishes_ground_truth_and_stops_cleanly(
    stack_settings: Settings, tmp_path: Path
) -> None:
    scenario = {
        "name": "serve-test",
        "duration_s": 4,
        "locomotives": [
            {"id": "S1", "model": "TEM2", "track": "T1", "keyframes": [{"at_s": 0, "head_m": 10}]}
        ],
    }
    proc, log = _start_serve(stack_settings, tmp_path, scenario, ["--speed", "4"])
    try:
        url_line = _wait_for_line(proc, log, "rtsp://", 60)
        port = int(url_line.split("rtsp://127.0.0.1:")[1].split("/")[0])
        truths = _ground_truths(stack_settings, "serve-test", 3)
        assert len(truths) >= 3
        assert truths[0].locomotives[0].head_m == 10.0
        assert truths[0].facility_id == "depot-north"
        # Stamped with the wall clock, as captures stamp frames, so the two can be paired.
        assert abs((datetime.now(UTC) - truths[-1].at).total_seconds()) < 60
        assert [t.tick for t in truths[:3]] == [0, 1, 2]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The GStreamer child went with it: nothing listens on its port any more.
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


@needs_gst
def test_serve_from_clips_streams_each_clip_and_publishes_the_truth_it_shows(
    stack_settings: Settings, tmp_path: Path
) -> None:
    import cv2

    scenario = {
        "name": "serve-clips-test",
        "duration_s": 4,
        "locomotives": [
            {
                "id": "S1",
                "model": "TEM2",
                "track": "T1",
                "keyframes": [{"at_s": 0, "head_m": 10}, {"at_s": 4, "head_m": 14}],
            }
        ],
    }
    clips = ["--from-clips", "--clip-seconds", "1", "--clip-start", "1",
             "--clips-dir", str(tmp_path / "clips")]  # fmt: skip
    proc, log = _start_serve(stack_settings, tmp_path, scenario, clips)
    try:
        url_line = _wait_for_line(proc, log, "rtsp://", 120)
        # 1 s of the scenario forward (15 frames), then back (13): a 28-frame loop.
        assert "15 fps, 1.9 s loop, capture keeps 2 fps" in url_line
        assert len(list((tmp_path / "clips").glob("cam-s1-*.mp4"))) == 1  # rendered once
        url = url_line.split(": ", 1)[1].split(" ")[0]
        port = int(url.split("rtsp://127.0.0.1:")[1].split("/")[0])
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        assert cap.isOpened(), url
        decoded = 0
        deadline = time.monotonic() + 30
        while decoded < 5 and time.monotonic() < deadline:
            ok, image = cap.read()
            if ok:
                assert image.shape == (720, 1280, 3)
                decoded += 1
        cap.release()
        assert decoded == 5
        ticks = [t.tick for t in _ground_truths(stack_settings, "serve-clips-test", 6)]
        # The truth of the frame shown, at the camera's 2 a second: frames 0, 8, 15 and 23
        # of each loop, from 1 s into the scenario (ticks 15-29 and back): ticks 15, 23, 28
        # (on the way back) and 20.
        assert len(ticks) >= 6, ticks
        assert set(ticks) == {15, 20, 23, 28}, ticks
        start = ticks.index(15)
        assert ticks[start : start + 5] == [15, 23, 28, 20, 15], ticks
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
