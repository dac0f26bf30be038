"""compare, live: two flows' facility-state topics on the real broker -> Prometheus gauges."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from compare_builders import state, truth
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from schemas.base import encode
from schemas.facility_state import FacilityState
from schemas.topics import topics_for
from services.evaluation.compare import (
    AgreementSummary,
    SnapshotComparison,
    compare_command,
    run_live,
)
from services.runtime.kafka import TopicAdmin
from services.runtime.settings import Settings


def test_live_compare_exports_agreement_metrics(stack_settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    a, b = f"a{tag}", f"b{tag}"
    TopicAdmin(stack_settings.kafka).ensure(topics_for([a, b]))
    seen: list[SnapshotComparison] = []
    done = threading.Event()

    def on_snapshot(one: SnapshotComparison, total: AgreementSummary) -> None:
        seen.append(one)
        if len(seen) >= 3:
            done.set()

    result: list[AgreementSummary] = []
    worker = threading.Thread(
        target=lambda: result.append(
            run_live(stack_settings.kafka, a, b, on_snapshot, done.is_set, max_skew_s=5)
        )
    )
    worker.start()
    producer = Producer(stack_settings.kafka.client_config())
    deadline = time.monotonic() + 60
    i = 0
    try:
        # Keep publishing until the live reader (which starts at the end of the topics) has
        # joined and compared a few pairs.
        while not done.is_set() and time.monotonic() < deadline:
            ref = state(i, a, T1=[(2.0, 18.97, "TEM2-0001")], T3=[(20.0, 37.22, "ChME3-0002")])
            cand = state(i + 0.1, b, T1=[(2.4, 19.07, "TEM2-0001")])
            for msg in (ref, cand):
                producer.produce(
                    FacilityState.topic_name(msg.flow), value=encode(msg), key=msg.kafka_key()
                )
            producer.flush(10)
            i += 1
            done.wait(0.3)
    finally:
        done.set()
        worker.join(30)
    assert not worker.is_alive()
    assert len(seen) >= 3
    assert seen[-1].counts == {"T1": (1, 1), "T2": (0, 0), "T3": (1, 0)}

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"a": a, "b": b, **labels})

    assert sample("depotwatch_compare_count_agreement", track="T1") == 1.0
    assert sample("depotwatch_compare_count_agreement", track="T3") == 0.0
    assert sample("depotwatch_compare_position_difference_m") == pytest.approx(0.25)
    assert sample("depotwatch_compare_identity_agreement") == 1.0
    assert sample("depotwatch_compare_count_agreement_rate") == 0.0
    assert result[0].snapshots == len(seen)


def test_compare_command_scores_a_time_range(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:8]
    a, b = f"a{tag}", f"b{tag}"
    TopicAdmin(stack_settings.kafka).ensure(topics_for([a, b]))
    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "facility.yaml").read_text())
    data["flows"] = {a: {}, b: {}}
    config = tmp_path / "facility.yaml"
    config.write_text(yaml.safe_dump(data))
    start = datetime.now(UTC) - timedelta(seconds=1)
    producer = Producer(stack_settings.kafka.client_config())
    for i in range(5):
        ref = state(i, a, T1=[(2.0, 18.97, "TEM2-0001")])
        cand = state(i + 0.1, b, T1=[(2.0, 18.97, "TEM2-0001")], T2=[(3.0, 20.0, None)] * (i % 2))
        for msg in (ref, cand):
            producer.produce(
                FacilityState.topic_name(msg.flow), value=encode(msg), key=msg.kafka_key()
            )
    assert producer.flush(10) == 0
    monkeypatch.setenv(
        "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS", stack_settings.kafka.bootstrap_servers
    )
    monkeypatch.setenv("DEPOTWATCH_LOG_FORMAT", "console")
    result = CliRunner().invoke(
        compare_command,
        [a, b, "--config", str(config), "--from", start.isoformat(), "--to", "now"],
    )
    assert result.exit_code == 0, result.output
    assert "snapshots compared:          5" in result.output
    assert "count per track agrees:      60.0% (T1 100.0%, T2 60.0%, T3 100.0%)" in result.output
    assert "identity agrees:             100.0% (5/5; unknown 0.0%, wrong 0.0%)" in result.output
    bad = CliRunner().invoke(compare_command, [a, "qa", "--config", str(config), "--from", "-1m"])
    assert bad.exit_code != 0
    assert "unknown flow 'qa'" in bad.output


def test_eval_pipeline_prints_figures_against_the_goals(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.evaluation.cli import pipeline_command

    flow = f"e{uuid.uuid4().hex[:8]}"
    TopicAdmin(stack_settings.kafka).ensure(topics_for([flow]))
    start = datetime.now(UTC) - timedelta(seconds=1)
    producer = Producer(stack_settings.kafka.client_config())
    now = datetime.now(UTC)
    for i in range(10):
        at = now + timedelta(seconds=i)
        t = truth(0, ("T1", 2.0, 18.97, "TEM2-0001")).model_copy(update={"at": at})
        s = state(0, flow, T1=[(2.1, 19.07, "TEM2-0001")]).model_copy(
            update={"as_of": at + timedelta(milliseconds=100)}
        )
        producer.produce("ground-truth.v1", value=encode(t), key=t.kafka_key())
        producer.produce(
            FacilityState.topic_name(flow),
            value=encode(s),
            key=s.kafka_key(),
            headers=[("reason", b"change")],
        )
    assert producer.flush(10) == 0
    kafka = stack_settings.kafka.bootstrap_servers
    monkeypatch.setenv("DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS", kafka)
    result = CliRunner().invoke(
        pipeline_command,
        ["--flow", flow, "--from", start.isoformat(), "--to", "now", "--warmup", "0"],
    )
    assert result.exit_code == 0, result.output
    assert "[PASS] count per track correct: 100.0%" in result.output
    assert "[PASS] head/tail error median: 0.10 m" in result.output
    assert "[PASS] identity correct: 100.0%" in result.output
    assert "capture -> state latency" in result.output
