"""`depotwatch sim serve` end to end: RTSP child, ground truth on Kafka, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from schemas import GroundTruth, decode
from services.runtime.settings import Settings
from tests.simulator.scenes import REPO
from tests.simulator.test_rtsp import needs_gst


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"serve never printed {needle!r} (exit code {proc.poll()})")


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
    scenario_file = tmp_path / "serve-test.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario))
    env = {
        **os.environ,
        "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": stack_settings.kafka.bootstrap_servers,
        "DEPOTWATCH_LOG_FORMAT": "console",
    }
    cmd = [sys.executable, "-m", "services.cli", "sim", "serve", "--config",
           str(REPO / "facility.yaml"), "--scenario", str(scenario_file), "--cameras", "cam-s1",
           "--port", "0", "--speed", "4"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url_line = _wait_for_line(proc, "rtsp://", 60)
        port = int(url_line.split("rtsp://127.0.0.1:")[1].split("/")[0])
        consumer = KafkaConsumer(
            bootstrap_servers=stack_settings.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=1000,
        )
        consumer.assign([TopicPartition(GroundTruth.topic_name(), 0)])
        truths: list[GroundTruth] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(truths) < 3:
            for record in consumer:
                msg = decode(GroundTruth, record.value)
                if msg.scenario == "serve-test":
                    truths.append(msg)
        consumer.close()
        assert len(truths) >= 3
        assert truths[0].locomotives[0].head_m == 10.0
        assert truths[0].facility_id == "depot-north"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The GStreamer child went with it: nothing listens on its port any more.
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
