"""compare, live: two flows' facility-state topics on the real broker -> Prometheus gauges."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from compare_builders import state
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from schemas.base import encode
from schemas.facility_state import FacilityState
from schemas.topics import topics_for
from services.evaluation.compare import AgreementSummary, SnapshotComparison, run_live
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
