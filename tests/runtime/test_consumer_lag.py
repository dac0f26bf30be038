"""Consumer lag: group names -> (service, flow), committed offsets -> lag."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.runtime.consumer_lag import GroupLag, LagCollector, group_lag, parse_group


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("position-estimator.prod", ("position-estimator", "prod")),
        ("plate-ocr.dev", ("plate-ocr", "dev")),
        ("depotwatch.position-estimator.prod", ("position-estimator", "prod")),
        ("depotwatch-state-estimator-prod", ("state-estimator", "prod")),
        ("depotwatch-state-estimator-canary-2", ("state-estimator", "canary-2")),
        ("depotwatch-aggregator", ("aggregator", "")),
    ],
)
def test_parse_group(group: str, expected: tuple[str, str]) -> None:
    assert parse_group(group, flows=["prod", "dev", "canary-2"]) == expected


def test_group_lag_sums_partitions_per_topic_and_skips_unknown_watermarks() -> None:
    committed = {("frames.v1", 0): 10, ("frames.v1", 1): 5, ("frames.v1", 2): 7, ("x", 0): 1}
    high = {("frames.v1", 0): 12, ("frames.v1", 1): 5, ("x", 0): 4}
    rows = group_lag("position-estimator.prod", committed, high)
    assert rows == [
        GroupLag("position-estimator.prod", "position-estimator", "prod", "frames.v1", 2, 2),
        GroupLag("position-estimator.prod", "position-estimator", "prod", "x", 3, 1),
    ]


def test_committed_beyond_watermark_is_no_negative_lag() -> None:
    (row,) = group_lag("a.prod", {("t", 0): 9}, {("t", 0): 7})
    assert row.lag == 0


def test_collector_exports_lag_and_health() -> None:
    collector = LagCollector()
    collector.rows = [GroupLag("a.prod", "a", "prod", "frames.v1", 3, 1)]
    collector.ok = True
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    labels = 'flow="prod",group="a.prod",service="a",topic="frames.v1"'
    assert f"depotwatch_consumer_lag_messages{{{labels}}} 3.0" in text
    assert "depotwatch_consumer_lag_up 1.0" in text


def test_a_services_backlog_counts_only_the_topic_it_reads() -> None:
    """plate-ocr.<flow> read frames.v1 before it read positions: the old topic's offsets stay
    in the group and grow stale; they are not work it has to do."""
    import time

    from services.runtime.consumer_lag import ConsumerLagMonitor
    from services.runtime.settings import KafkaSettings

    monitor = ConsumerLagMonitor.of_group(KafkaSettings(), "plate-ocr.prod")
    monitor.collector.rows = [
        GroupLag("plate-ocr.prod", "plate-ocr", "prod", "frames.v1", 900, 3),
        GroupLag("plate-ocr.prod", "plate-ocr", "prod", "positions.prod.v1", 2, 3),
    ]
    monitor.collector.ok, monitor.collector.updated_at = True, time.time()
    assert monitor.backlog() == 902
    assert monitor.backlog({"positions.prod.v1"}) == 2
