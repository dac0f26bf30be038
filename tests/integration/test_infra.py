"""The embedded SeaweedFS + Tansu stack, for real: topics, bucket, restarts, the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from message_samples import frame_ref

from schemas import FrameRef
from schemas.topics import TopicSpec, topics_for
from services.benchmarks.faults import wait_until
from services.benchmarks.ingest_rig import scrape
from services.benchmarks.pipeline import s3_requests
from services.infra import EmbeddedInfra, InfraError, initialise, settings_on_free_ports
from services.infra.cli import infra
from services.infra.processes import pid_alive, port_answers
from services.runtime.kafka import MessageConsumer, MessageProducer, TopicAdmin
from services.runtime.settings import Settings
from services.runtime.storage import ObjectStore, StorageError

REPO = Path(__file__).resolve().parents[2]


def test_stack_answers_with_every_topic(embedded_stack: EmbeddedInfra) -> None:
    status = embedded_stack.status()
    assert status.healthy, status
    assert all(c.pid for c in status.components)
    have = TopicAdmin(embedded_stack.client_settings.kafka).existing()
    for spec in topics_for(embedded_stack.flows):
        assert have.get(spec.name) == spec.partitions, spec.name
    assert status.topics is not None
    assert status.topics >= len(topics_for(embedded_stack.flows))


def test_topics_have_their_cleanup_and_retention(stack_settings: Settings) -> None:
    admin = TopicAdmin(stack_settings.kafka)
    assert admin.topic_config("facility-state.prod.v1")["cleanup.policy"] == "compact"
    assert admin.topic_config("facility-state.dev.v1")["cleanup.policy"] == "compact"
    assert admin.topic_config("facility-state.prod.v1")["min.compaction.lag.ms"] == str(
        24 * 3600 * 1000
    )
    frames = admin.topic_config("frames.v1")
    assert frames["cleanup.policy"] == "delete"
    assert frames["retention.ms"] == str(24 * 3600 * 1000)
    assert admin.topic_config("positions.dev.v1")["retention.ms"] == str(168 * 3600 * 1000)


def test_frames_bucket_expires_frames(stack_settings: Settings) -> None:
    store = ObjectStore(stack_settings.s3)
    assert store.ping()[0]
    assert store.expiry_days() == stack_settings.s3.frame_retention_days


def test_seaweedfs_counts_requests_per_bucket_for_the_sizing_benchmark(
    embedded_stack: EmbeddedInfra, stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    port = embedded_stack.infra.weed_metrics_port
    before = scrape(port)
    assert before, f"SeaweedFS exports no metrics on port {port}"
    store = ObjectStore(stack_settings.s3)
    for i in range(3):
        store.put(unique_name("metrics") + f"/{i}.jpg", b"jpeg bytes")
    where = (stack_settings.s3.bucket, "PUT")

    def puts() -> bool:  # recorded just after each request is answered
        return s3_requests(before, scrape(port)).get(where, (0.0, 0.0))[0] >= 3

    assert wait_until(puts, 5) is not None, s3_requests(before, scrape(port))


def test_up_again_reuses_the_running_processes(embedded_stack: EmbeddedInfra) -> None:
    before = [c.pid for c in embedded_stack.status().components]
    lines: list[str] = []
    again = EmbeddedInfra(embedded_stack.settings, embedded_stack.flows, progress=lines.append)
    report = again.up()
    assert report.topics_created == []
    assert not report.bucket_created
    assert [c.pid for c in embedded_stack.status().components] == before
    assert any("SeaweedFS S3 already running" in line and "reusing" in line for line in lines)
    assert any("Tansu broker already running" in line for line in lines)
    assert any("Redis already running" in line for line in lines)


def test_init_creates_topics_of_a_new_flow_on_a_running_stack(stack_settings: Settings) -> None:
    lines: list[str] = []
    report = initialise(stack_settings, ["prod", "qa"], progress=lines.append)
    assert sorted(report.topics_created) == [
        "facility-state.qa.v1",
        "identities.qa.v1",
        "positions.qa.v1",
    ]
    assert report.expiry_problem is None
    assert lines[-1] == f"topics: 3 created, {report.topics_total - 3} already present"


def test_cli_init_only_creates_bucket_and_topics(stack_settings: Settings, tmp_path: Path) -> None:
    # `infra init` is for external Kafka/S3: it must start nothing and touch no data dir.
    env = {
        "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": stack_settings.kafka.bootstrap_servers,
        "DEPOTWATCH_S3__ENDPOINT": stack_settings.s3.endpoint,
        "DEPOTWATCH_INFRA__DATA_DIR": str(tmp_path / "unused"),
    }
    result = CliRunner().invoke(infra, ["init", "--config", str(REPO / "facility.yaml")], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"initialising Kafka {stack_settings.kafka.bootstrap_servers} and S3 "
        f"{stack_settings.s3.endpoint}",
        f"bucket {stack_settings.s3.bucket} present, frames expire after 7 days",
        "topics: 0 created, 10 already present",
    ]
    assert not (tmp_path / "unused").exists()


def test_broker_port_taken_names_the_variable(
    embedded_stack: EmbeddedInfra, tmp_path: Path
) -> None:
    # A second stack that shares the running S3 but wants a broker port someone else holds.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        infra = embedded_stack.infra.model_copy(update={"data_dir": tmp_path, "kafka_port": port})
        other = EmbeddedInfra(embedded_stack.settings.model_copy(update={"infra": infra}))
        with pytest.raises(InfraError, match=rf"port {port} \(Tansu broker.*KAFKA_PORT"):
            other.start("kafka")


def test_messages_survive_a_broker_restart(
    embedded_stack: EmbeddedInfra, stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("durable")
    TopicAdmin(stack_settings.kafka).ensure([TopicSpec(topic, FrameRef, 3)])
    producer = MessageProducer(stack_settings.kafka, client_id="restart-test")
    sent = [frame_ref(seq=i, camera_id=f"cam-{i % 4}") for i in range(200)]
    for message in sent:
        producer.publish(message, topic=topic)
    assert producer.flush(15) == 0
    old_pid = embedded_stack.status().components[1].pid

    embedded_stack.restart_broker()

    status = embedded_stack.status()
    assert status.healthy
    assert status.components[1].pid != old_pid
    assert old_pid is not None
    assert not pid_alive(old_pid)
    consumer = MessageConsumer(
        stack_settings.kafka,
        group_id=unique_name("after-restart"),
        topics={topic: FrameRef},
        service="restart-test",
        dead_letters=producer,
    )
    got: list[FrameRef] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < len(sent) and time.monotonic() < deadline:
            got.extend(r.message for r in consumer.poll_batch(100, 0.5))
    finally:
        consumer.close()
        producer.close(5)
    assert sorted(got, key=lambda m: m.seq) == sent


def test_s3_crash_and_restart_keeps_objects_and_the_broker_recovers(
    embedded_stack: EmbeddedInfra, stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    store = ObjectStore(stack_settings.s3, timeout_s=2.0, retries=0)
    key = unique_name("crash") + "/frame.jpg"
    store.put(key, b"jpeg bytes")
    topic = unique_name("after-crash")
    TopicAdmin(stack_settings.kafka).ensure([TopicSpec(topic, FrameRef, 1)])

    assert embedded_stack.stop("s3", force=True).startswith("killed SeaweedFS S3")
    assert not embedded_stack.status().components[0].answering
    with pytest.raises(StorageError):
        store.get(key)
    embedded_stack.start("s3")

    assert store.get(key) == b"jpeg bytes"
    producer = MessageProducer(stack_settings.kafka, client_id="crash-test")
    try:
        assert producer.publish_and_wait(frame_ref(seq=1), topic=topic, timeout=60) == (0, 0)
    finally:
        producer.close(5)
    assert embedded_stack.status().healthy


def _cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "infra", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_cli_up_twice_status_down_leaves_nothing_running(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPOTWATCH_")}
    for name, value in settings.infra.model_dump().items():
        if name.endswith("_port"):
            env[f"DEPOTWATCH_INFRA__{name.upper()}"] = str(value)
    env["DEPOTWATCH_INFRA__DATA_DIR"] = str(tmp_path / "data")
    env["DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers
    env["DEPOTWATCH_S3__ENDPOINT"] = settings.s3.endpoint
    config = ["--config", str(REPO / "facility.yaml")]
    stack = EmbeddedInfra(settings)
    try:
        first = _cli(["up", *config], env, timeout=120)
        assert first.returncode == 0, first.stderr + first.stdout
        assert "starting SeaweedFS S3" in first.stdout
        assert "topics: 10 created, 0 already present" in first.stdout
        assert first.stdout.rstrip().splitlines()[-1].startswith("ready: ")

        second = _cli(["up", *config], env, timeout=60)
        assert second.returncode == 0, second.stderr + second.stdout
        assert "reusing" in second.stdout
        assert "topics: 0 created, 10 already present" in second.stdout

        status = _cli(["status"], env, timeout=30)
        assert status.returncode == 0, status.stdout
        assert "topics: 10" in status.stdout
        pids = [c.pid for c in stack.status().components]
        assert all(pids)
    finally:
        down = _cli(["down"], env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "stopped Tansu broker" in down.stdout
    assert "SeaweedFS S3" in down.stdout
    assert "stopped Redis" in down.stdout
    for pid in pids:
        assert pid is not None
        assert not pid_alive(pid)
    for port in (settings.infra.kafka_port, settings.infra.s3_port, settings.infra.redis_port):
        assert not port_answers("127.0.0.1", port)
    after = _cli(["status"], env, timeout=30)
    assert after.returncode == 1
    assert "NOT answering" in after.stdout


@pytest.mark.integration
def test_down_takes_seconds_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    # Tansu drains for 5 s on SIGTERM and SeaweedFS's filer waits 15 s for its own S3 gateway:
    # down stops the broker with SIGINT and kills SeaweedFS after a short grace, which must
    # lose nothing either had acknowledged.
    settings = settings_on_free_ports(tmp_path / "data")
    stack = EmbeddedInfra(settings)
    stack.up()
    try:
        store = ObjectStore(settings.s3, timeout_s=5.0, retries=0)
        store.ensure_bucket()
        store.put("kept/frame.jpg", b"jpeg bytes")
        TopicAdmin(settings.kafka).ensure([TopicSpec("kept", FrameRef, 2)])
        producer = MessageProducer(settings.kafka, client_id="down-test")
        sent = [frame_ref(seq=i) for i in range(50)]
        try:
            for message in sent:
                producer.publish(message, topic="kept")
            assert producer.flush(15) == 0
        finally:
            producer.close(5)
        started = time.monotonic()
        lines = stack.down()
        took = time.monotonic() - started
        assert took < 10, lines
        assert any(line.startswith("stopped Tansu broker") for line in lines), lines
        assert any(line.startswith("stopped SeaweedFS S3") for line in lines), lines

        stack.up()
        assert store.get("kept/frame.jpg") == b"jpeg bytes"
        dead_letters = MessageProducer(settings.kafka, client_id="down-test-dead-letters")
        consumer = MessageConsumer(
            settings.kafka,
            group_id="after-down",
            topics={"kept": FrameRef},
            service="down-test",
            dead_letters=dead_letters,
        )
        got: list[FrameRef] = []
        deadline = time.monotonic() + 60
        try:
            while len(got) < len(sent) and time.monotonic() < deadline:
                got.extend(r.message for r in consumer.poll_batch(100, 0.5))
        finally:
            consumer.close()
            dead_letters.close(5)
        assert sorted(got, key=lambda m: m.seq) == sent
    finally:
        stack.down()
