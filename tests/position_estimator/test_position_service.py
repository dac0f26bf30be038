"""The position estimator service against the real embedded broker and S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from estimator_rig import (
    ROOT,
    LabelDetector,
    RenderedCase,
    collect,
    create_topics,
    dead_letters_of,
    flow_facility,
    output_consumer,
    render_cases,
    running,
    store_frames,
)

from schemas.deadletter import DeadLetter
from schemas.estimates import PositionEstimate, TrackObservation
from schemas.facility import load_facility
from schemas.frames import FrameRef
from services.infra import EmbeddedInfra
from services.infra.processes import free_port
from services.position_estimator.config import position_estimator_config
from services.position_estimator.service import position_stream
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import FrameStream, frame_stream_health
from services.runtime.kafka import MessageProducer, Received
from services.runtime.settings import Settings
from services.runtime.storage import ObjectStore

WEIGHTS = ROOT / "models" / "depot-yolo.pt"


@pytest.fixture
def producer(stack_settings: Settings) -> Iterator[MessageProducer]:
    prod = MessageProducer(stack_settings.kafka, client_id="test-frames")
    yield prod
    prod.close(timeout=10)


@pytest.fixture
def flow(unique_name: Callable[[str], str]) -> str:
    # Flow names become topic names: lower case, start with a letter, at most 31 characters.
    return "t" + unique_name("f").rsplit("-", 1)[-1]


@pytest.mark.slow
def test_rendered_frame_is_placed_on_its_track(
    stack_settings: Settings,
    producer: MessageProducer,
    flow: str,
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> None:
    """Real inference with the committed weights: every clearly visible end lands on its track."""
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} is absent; train it with `depotwatch train`")
    from services.position_estimator.detector import YoloDetector

    facility = load_facility(ROOT / "facility.yaml")
    # Tick 100 of the demo: L1 arriving on T1 past cam-s1/s2, L2 and L3 parked on T2.
    cases = render_cases(facility, [100], ["cam-s1", "cam-s2", "cam-n2"])
    truth = [
        (c.camera_id, label)
        for c in cases
        for label in c.labels
        if label.cls != "plate" and label.visible_fraction >= 0.5
    ]
    assert len(truth) >= 3, "the scenario must show several locomotive ends in these views"
    frames_topic = unique_name("frames")
    path = flow_facility(tmp_path, flow, weights=WEIGHTS)
    create_topics(stack_settings, flow, frames_topic)
    refs = store_frames(stack_settings, producer, frames_topic, cases, prefix=flow)
    watch = FacilityWatch(path)
    config = position_estimator_config(
        watch.config, path, flow, stack_settings, "replay", frames_topic=frames_topic
    )
    detector = YoloDetector(config.weights, config.imgsz, config.confidence, "cpu")
    stream = position_stream(stack_settings, config, watch, detector)
    reader = output_consumer(
        stack_settings,
        producer,
        PositionEstimate.topic_name(flow),
        PositionEstimate,
        unique_name("reader"),
    )
    try:
        with running(stream):
            got = collect(reader, lambda out: len(out) >= len(refs), timeout=120)
    finally:
        reader.close()
    estimates = {r.message.frame.seq: r.message for r in got}
    assert sorted(estimates) == [r.seq for r in refs]
    by_camera: dict[str, list[TrackObservation]] = {}
    for ref in refs:
        est = estimates[ref.seq]
        assert est.frame == ref
        assert est.flow == flow
        assert est.model_version == config.model_version
        assert r_key(got, ref.seq) == ref.camera_id.encode()
        assert len([d for d in est.detections if d.cls != "plate"]) == len(est.observations)
        by_camera[ref.camera_id] = est.observations
    for camera_id, label in truth:
        # The box's bottom-centre lies ~0.3 m inside the end (label convention).
        near = [
            abs(obs.position_m - label.end_position_m)
            for obs in by_camera[camera_id]
            if obs.kind == label.cls
            and obs.track_id == label.track_id
            and obs.position_m is not None
            and label.end_position_m is not None
        ]
        assert near, f"{label.cls} of {label.locomotive_id} in {camera_id} was not placed"
        assert min(near) <= 1.0, (camera_id, label, near)


def r_key(received: list[Received[PositionEstimate]], seq: int) -> bytes | None:
    return next(r.key for r in received if r.message.frame.seq == seq)


def test_poison_refs_are_dead_lettered_and_the_service_goes_on(
    stack_settings: Settings,
    producer: MessageProducer,
    flow: str,
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> None:
    facility = load_facility(ROOT / "facility.yaml")
    (case,) = render_cases(facility, [0], ["cam-s1"])
    frames_topic = unique_name("frames")
    path = flow_facility(tmp_path, flow)
    create_topics(stack_settings, flow, frames_topic, partitions=1)
    store = ObjectStore(stack_settings.s3)
    (good,) = store_frames(stack_settings, producer, frames_topic, [case], prefix=flow, first_seq=9)
    # 1. the object was never stored (or expired)
    missing = good.model_copy(update={"seq": 1, "key": f"{flow}/gone.jpg"})
    # 2. the object is there but is not an image
    junk = b"not a jpeg at all" * 10
    stored = store.put(f"{flow}/junk.jpg", junk)
    corrupt = good.model_copy(
        update={"seq": 2, "key": stored.key, "size": stored.size, "sha256": stored.sha256}
    )
    # 3. the object is not the one the reference describes (truncated upload)
    store.put(f"{flow}/short.jpg", case.jpeg[:-100])
    truncated = good.model_copy(update={"seq": 3, "key": f"{flow}/short.jpg"})
    # 4. a frame from a camera the facility does not know
    stranger = good.model_copy(update={"seq": 4, "camera_id": "cam-x9"})
    for ref in (missing, corrupt, truncated, stranger):
        producer.publish_and_wait(ref, topic=frames_topic)
    # 5. bytes that are not a FrameRef at all
    producer.raw.produce(frames_topic, value=b"{not json", key=b"cam-s1")
    producer.flush(10)
    # 6. a 5 MB value (field failure: its dead letter was too large for the broker, the
    #    offset was never committed and the service crash-looped on it)
    big = Producer({**stack_settings.kafka.client_config(), "message.max.bytes": 10_000_000})
    big.produce(frames_topic, value=b"\x00" * 5_000_000, key=b"cam-s1")
    assert big.flush(30) == 0
    # 7. a frame stamped in 2099 (it stayed the camera's "latest" frame on the dashboard)
    future = good.model_copy(update={"seq": 5, "captured_at": datetime(2099, 1, 1, tzinfo=UTC)})
    producer.publish_and_wait(future, topic=frames_topic)
    producer.publish_and_wait(good.model_copy(update={"seq": 10}), topic=frames_topic)

    watch = FacilityWatch(path)
    config = position_estimator_config(
        watch.config, path, flow, stack_settings, "replay", frames_topic=frames_topic
    )
    stream = position_stream(stack_settings, config, watch, LabelDetector([case]))
    reader = output_consumer(
        stack_settings,
        producer,
        PositionEstimate.topic_name(flow),
        PositionEstimate,
        unique_name("reader"),
    )
    letters = output_consumer(
        stack_settings, producer, DeadLetter.topic_name(), DeadLetter, unique_name("letters")
    )
    try:
        with running(stream):
            got = collect(reader, lambda out: len(out) >= 2)
            dead = collect(
                letters, lambda out: len(dead_letters_of(out, frames_topic)) >= 7, timeout=30
            )
    finally:
        reader.close()
        letters.close()
    assert sorted(r.message.frame.seq for r in got) == [9, 10]
    letters_of = dead_letters_of(dead, frames_topic)
    (huge,) = [d for d in letters_of if d.payload_truncated]
    assert huge.payload_size == 5_000_000
    assert "original 5,000,000 bytes" in huge.reason
    reasons = {
        (FrameRef.model_validate_json(d.payload).seq if d.payload.startswith(b'{"') else -1): d
        for d in letters_of
        if d is not huge
    }
    assert sorted(reasons) == [-1, 1, 2, 3, 4, 5]
    assert "clock-skew bound" in reasons[5].reason
    assert "missing" in reasons[1].reason
    assert "not a decodable image" in reasons[2].reason
    assert "bytes" in reasons[3].reason
    assert "cam-x9" in reasons[4].reason
    assert all(d.service == f"position-estimator.{flow}" for d in reasons.values())
    assert stream.rejected == 4


@pytest.mark.slow
def test_killed_service_restarts_without_losing_frames(
    stack_settings: Settings,
    producer: MessageProducer,
    flow: str,
    tmp_path: Path,
    unique_name: Callable[[str], str],
    dev_weights: Path,
) -> None:
    """SIGKILL mid-run, restart: every frame gets an estimate; only uncommitted ones twice."""
    facility = load_facility(ROOT / "facility.yaml")
    cases = render_cases(facility, [0, 100], ["cam-s1", "cam-s2", "cam-n1", "cam-n2"])
    cases = (cases * 12)[:96]
    frames_topic = unique_name("frames")
    path = flow_facility(tmp_path, flow, weights=dev_weights)
    create_topics(stack_settings, flow, frames_topic)
    refs = store_frames(stack_settings, producer, frames_topic, cases, prefix=flow)
    env = {
        **os.environ,
        "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": stack_settings.kafka.bootstrap_servers,
        "DEPOTWATCH_S3__ENDPOINT": stack_settings.s3.endpoint,
        "DEPOTWATCH_S3__BUCKET": stack_settings.s3.bucket,
        "DEPOTWATCH_S3__ACCESS_KEY": stack_settings.s3.access_key.get_secret_value(),
        "DEPOTWATCH_S3__SECRET_KEY": stack_settings.s3.secret_key.get_secret_value(),
        "DEPOTWATCH_HTTP_PORT": "0",
        "DEPOTWATCH_LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable,
        "-m",
        "services.cli",
        "position-estimator",
        "--flow",
        flow,
        "--config",
        str(path),
        "--mode",
        "replay",
        "--max-batch",
        "2",
        "--frames-topic",
        frames_topic,
    ]
    reader = output_consumer(
        stack_settings,
        producer,
        PositionEstimate.topic_name(flow),
        PositionEstimate,
        unique_name("reader"),
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE)
        procs.append(first)
        before = collect(reader, lambda out: len(out) >= 4, timeout=120)
        # Kill it once it has committed some work, so both sides of the commit are tested.
        group = f"position-estimator.{flow}"
        deadline = time.monotonic() + 60
        while not committed_offsets(stack_settings, group, frames_topic):
            assert time.monotonic() < deadline, "the service committed no offsets within 60 s"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        committed = committed_offsets(stack_settings, group, frames_topic)
        assert sum(committed.values()) < len(refs), "the first run finished before it was killed"
        seen = {r.message.frame.seq for r in before}
        assert len(seen) < len(refs), "the first run finished before it could be killed"
        port = free_port()
        second = subprocess.Popen(
            command,
            env={**env, "DEPOTWATCH_HTTP_PORT": str(port)},
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        procs.append(second)
        after = collect(
            reader,
            lambda out: {r.message.frame.seq for r in before + out} >= {r.seq for r in refs},
            timeout=180,
        )
        health = json.loads(http_get(f"http://127.0.0.1:{port}/healthz"))
        assert health["ok"] is True
        assert set(health["checks"]) == {"loop", "progress", "object_store"}
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert (
            f'depotwatch_frames_processed_total{{flow="{flow}",service="position-estimator"}}'
            in (metrics)
        )
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err.decode()[-2000:]
    finally:
        reader.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    counts = Counter(r.message.frame.seq for r in before + after)
    assert set(counts) == {r.seq for r in refs}
    # At least once, and exactly the uncommitted work again: a frame whose offset was committed
    # when the first run died is estimated once; only frames after the commit may come twice.
    where = frame_offsets(stack_settings, producer, frames_topic, len(refs), unique_name("offsets"))
    for seq, n in counts.items():
        partition, offset = where[seq]
        if offset < committed.get(partition, 0):
            assert n == 1, f"frame {seq} (offset {offset}) was committed, yet estimated {n} times"
    repeated = {seq for seq, n in counts.items() if n > 1}
    assert all(where[seq][1] >= committed.get(where[seq][0], 0) for seq in repeated), counts


def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Offsets ``group`` has committed on each partition of ``topic`` (none: left out)."""
    from confluent_kafka import TopicPartition

    from services.runtime.topic_reader import viewer_consumer

    consumer = viewer_consumer(settings.kafka, "test-offsets", group_id=group)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        got = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in got if tp.offset >= 0}


def frame_offsets(
    settings: Settings, producer: MessageProducer, topic: str, count: int, group: str
) -> dict[int, tuple[int, int]]:
    """frame seq -> (partition, offset) of its ref on ``topic``."""
    reader = output_consumer(settings, producer, topic, FrameRef, group)
    try:
        got = collect(reader, lambda out: len(out) >= count)
    finally:
        reader.close()
    return {r.message.seq: (r.partition, r.offset) for r in got}


def test_unknown_flow_and_missing_stage_are_one_line_errors(tmp_path: Path) -> None:
    from services.runtime.estimator_service import EstimatorConfigError

    facility = load_facility(ROOT / "facility.yaml")
    with pytest.raises(EstimatorConfigError, match="no flow 'qa'; use one of dev, prod"):
        position_estimator_config(facility, ROOT / "facility.yaml", "qa", Settings())


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def test_live_mode_skips_to_the_newest_frame_of_a_camera(
    stack_settings: Settings,
    producer: MessageProducer,
    flow: str,
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> None:
    """Six frames of one camera waiting: live mode estimates the newest and counts the rest."""
    facility = load_facility(ROOT / "facility.yaml")
    (case,) = render_cases(facility, [100], ["cam-s2"])
    frames_topic = unique_name("frames")
    path = flow_facility(tmp_path, flow)
    create_topics(stack_settings, flow, frames_topic, partitions=1)
    refs = store_frames(stack_settings, producer, frames_topic, [case] * 6, prefix=flow)
    watch = FacilityWatch(path)
    config = position_estimator_config(
        watch.config, path, flow, stack_settings, "live", frames_topic=frames_topic
    )
    stream = position_stream(stack_settings, config, watch, LabelDetector([case]))
    reader = output_consumer(
        stack_settings,
        producer,
        PositionEstimate.topic_name(flow),
        PositionEstimate,
        unique_name("reader"),
    )
    try:
        with running(stream):
            got = collect(reader, lambda out: any(r.message.frame.seq == refs[-1].seq for r in out))
    finally:
        reader.close()
    assert stream.processed + stream.skipped == len(refs)
    assert stream.skipped >= 3, "refs already waiting must be skipped, not estimated"
    assert len(got) == stream.processed


@dataclass
class OneCamera:
    """A replay-mode position estimator on a topic of its own, one camera's frames in it."""

    case: RenderedCase
    frames_topic: str
    stream: FrameStream

    @classmethod
    def start(
        cls,
        settings: Settings,
        producer: MessageProducer,
        flow: str,
        tmp_path: Path,
        topic: str,
    ) -> OneCamera:
        facility = load_facility(ROOT / "facility.yaml")
        (case,) = render_cases(facility, [0], ["cam-s1"])
        path = flow_facility(tmp_path, flow)
        create_topics(settings, flow, topic, partitions=1)
        store_frames(settings, producer, topic, [case], prefix=flow, first_seq=1)
        watch = FacilityWatch(path)
        config = position_estimator_config(
            watch.config, path, flow, settings, "replay", frames_topic=topic
        )
        stream = position_stream(settings, config, watch, LabelDetector([case]))
        return cls(case, topic, stream)

    def more_frames(
        self, settings: Settings, producer: MessageProducer, flow: str, seq: int
    ) -> None:
        """Two more frames, from ``seq``."""
        cases = [self.case, self.case]
        store_frames(settings, producer, self.frames_topic, cases, prefix=flow, first_seq=seq)


def until(predicate: Callable[[], bool], what: str, limit_s: float = 60) -> None:
    """Poll ``predicate`` until it holds (deadline ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"not within {limit_s:.0f} s: {what}"
        time.sleep(0.5)


def test_health_fails_when_frames_wait_and_none_is_processed(
    stack_settings: Settings,
    producer: MessageProducer,
    flow: str,
    tmp_path: Path,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Field failure: after a broker restart a consumer stayed in its group and fetched
    nothing for 9 minutes; its loop came round, so /healthz said ok."""
    one = OneCamera.start(stack_settings, producer, flow, tmp_path, unique_name("frames"))
    stream = one.stream
    stream.config = replace(stream.config, stall_after_s=3.0)
    health, lag = frame_stream_health(stream, stack_settings)
    # The consumer is paused and resumed on the stream's own thread, inside its poll: called
    # from the test's thread, pause() waited up to ~2 min for the polling thread to let go.
    want = {"paused": False}
    now = {"paused": False}
    real_poll = stream.consumer.poll_batch

    def poll_batch(max_messages: int, timeout: float) -> list[Any]:
        raw = stream.consumer.raw
        if want["paused"] != now["paused"]:
            (raw.pause if want["paused"] else raw.resume)(raw.assignment())
            now["paused"] = want["paused"]
        return real_poll(max_messages, timeout)

    monkeypatch.setattr(stream.consumer, "poll_batch", poll_batch)

    try:
        with running(stream):
            until(lambda: lag.backlog() == 0 and stream.processed == 1, "first frame done")
            assert health.evaluate()[0]
            # The consumer stays in its group but fetches nothing any more.
            want["paused"] = True
            until(lambda: now["paused"], "consumer paused")
            one.more_frames(stack_settings, producer, flow, 2)
            until(lambda: not health.evaluate()[0], "/healthz fails")
            _, checks = health.evaluate()
            assert checks["loop"]["ok"], "the loop still comes round"
            assert not checks["progress"]["ok"]
            assert "stalled:" in str(checks["progress"]["detail"])
            want["paused"] = False
            until(lambda: stream.processed == 3 and health.evaluate()[0], "recovers")
    finally:
        lag.stop()


@pytest.mark.slow
def test_a_running_service_resumes_after_the_broker_is_killed_and_restarted(
    embedded_stack: EmbeddedInfra,
    stack_settings: Settings,
    flow: str,
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> None:
    """Field failure: after a broker restart plate-ocr processed nothing for ~9 minutes."""
    producer = MessageProducer(stack_settings.kafka, client_id=unique_name("p"))
    one = OneCamera.start(stack_settings, producer, flow, tmp_path, unique_name("frames"))
    stream = one.stream
    try:
        with running(stream):
            until(lambda: stream.processed == 1, "first frame done")
            embedded_stack.stop("kafka", force=True)
            embedded_stack.start("kafka")
            one.more_frames(stack_settings, producer, flow, 2)
            restarted = time.monotonic()
            until(lambda: stream.processed >= 3, "frames after the restart processed", 90)
            print(f"resumed {time.monotonic() - restarted:.1f} s after the broker restart")
    finally:
        producer.close(5)
