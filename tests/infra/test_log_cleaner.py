"""The embedded broker's log cleaner: which batches go (plain values), and against the real
Tansu + SeaweedFS that the deleted batches are gone while every reader still gets the rest."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY

from schemas.base import Message
from schemas.facility_state import FacilityState
from schemas.topics import TopicSpec, topics_for
from services.infra.log_cleaner import (
    Batch,
    BrokerLogCleaner,
    CleanerThread,
    Rule,
    broker_store,
    doomed,
    embedded_cleaner,
    parse_batch_key,
    partition_batches,
    rules_for,
    unread_cut,
)
from services.runtime.kafka import TopicAdmin
from services.runtime.settings import Settings
from services.runtime.storage import ListedObject
from services.state_estimator.config import StateEstimatorServiceSettings

NOW = 1_000_000.0


def batches(*offsets: int, written: float = NOW) -> list[Batch]:
    return [Batch(f"k{o}", o, written) for o in offsets]


def gone(out: list[tuple[Batch, str]]) -> list[int]:
    return sorted(b.base_offset for b, _ in out)


# ---- which batches go


def test_consumed_batches_go_up_to_the_one_holding_the_committed_offset() -> None:
    rule = Rule(consumed_by="g")
    # Batches of 1, 1, 3 and 2 records: 0, 1, 2-4, 5-6; the group will read 3 next.
    out = doomed(batches(5, 0, 2, 1), rule, NOW, committed=3)
    assert gone(out) == [0, 1]  # batch 2 still holds records 3 and 4
    assert {r for _, r in out} == {"consumed"}
    assert gone(doomed(batches(0, 1, 2, 5), rule, NOW, committed=5)) == [0, 1, 2]


def test_the_newest_batch_stays_even_when_consumed_or_expired() -> None:
    assert gone(doomed(batches(0, 1, 2), Rule(consumed_by="g"), NOW, committed=99)) == [0, 1]
    assert gone(doomed(batches(0, 1, written=0.0), Rule(retention_s=10), NOW, None)) == [0]
    assert doomed(batches(7), Rule(consumed_by="g", retention_s=1), NOW, committed=99) == []


def test_without_a_commit_nothing_is_consumed() -> None:
    assert doomed(batches(0, 1, 2), Rule(consumed_by="g"), NOW, committed=None) == []
    assert doomed(batches(0, 1, 2), Rule(consumed_by="g"), NOW, committed=0) == []


def test_retention_deletes_by_age_only() -> None:
    old, young = batches(0, 1, written=NOW - 100), batches(2, 3, written=NOW - 5)
    out = doomed(old + young, Rule(retention_s=60), NOW, committed=None)
    assert gone(out) == [0, 1]
    assert {r for _, r in out} == {"retention"}
    # A consumed rule ignores other groups' positions: no commit, only age.
    assert gone(doomed(old + young, Rule(60, "g"), NOW, committed=None)) == [0, 1]


def test_a_size_cap_keeps_only_the_newest_batches() -> None:
    young = batches(9, 3, 5, 7, 1, written=NOW - 5)
    out = doomed(young, Rule(retention_s=60, max_batches=2), NOW, committed=None)
    assert gone(out) == [1, 3, 5]  # 7 and 9 stay
    assert {r for _, r in out} == {"size"}
    # Age first: an expired batch is retention, whatever the cap.
    out = doomed(batches(0, written=0.0) + young, Rule(60, max_batches=2), NOW, None)
    assert [(b.base_offset, r) for b, r in sorted(out, key=lambda x: x[0].base_offset)] == [
        (0, "retention"),
        (1, "size"),
        (3, "size"),
        (5, "size"),
    ]
    assert doomed(young, Rule(max_batches=5), NOW, None) == []
    assert gone(doomed(young, Rule(max_batches=1), NOW, None)) == [1, 3, 5, 7]


def test_the_size_cap_cuts_only_the_time_retained_streams() -> None:
    specs = [
        TopicSpec("frames", Message, 6, {"cleanup.policy": "delete", "retention.ms": "7200000"}),
        TopicSpec("internal", Message, 1, {"cleanup.policy": "delete"}),
        TopicSpec("deadletter", Message, 1, {"cleanup.policy": "delete"}),
        TopicSpec("state", Message, 1, {"cleanup.policy": "compact", "retention.ms": "1000"}),
    ]
    rules = rules_for(specs, {"internal": "se-group"}, max_batches=100)
    assert rules == {
        "frames": Rule(retention_s=7200.0, max_batches=100),
        "internal": Rule(consumed_by="se-group"),  # unread estimates are work still to do
    }  # dead letters (no retention.ms) and compacted topics: never
    # A compacted topic of one key (the facility state): its newest batches are what
    # compaction keeps, so it is capped too; the changelogs (many keys) are not.
    one_key = rules_for(specs, {}, max_batches=100, single_key=["state"])
    assert one_key["state"] == Rule(max_batches=100)


def test_what_every_live_reader_has_read_goes_but_for_a_tail() -> None:
    # Batches 0-9, one record each; the slowest live group reads 7 next: 0-6 are read.
    ten = batches(*range(10))
    out = doomed(ten, Rule(retention_s=3600, read_tail=2), NOW, None, read_by_all=7)
    assert gone(out) == [0, 1, 2, 3, 4]  # 5 and 6 are the tail; 7-9 unread
    assert {r for _, r in out} == {"read"}
    # No live reader known: nothing is taken for read; no read_tail rule: the offset is moot.
    assert doomed(ten, Rule(retention_s=3600, read_tail=2), NOW, None, read_by_all=None) == []
    assert doomed(ten, Rule(retention_s=3600), NOW, None, read_by_all=7) == []
    # A batch still holding unread records is not read: batches 0, 3 (3-5), 6; commit 4.
    assert gone(doomed(batches(0, 3, 6), Rule(read_tail=0), NOW, None, read_by_all=4)) == [0]
    # The newest batch stays even when all is read; age and the cap come first.
    assert gone(doomed(ten, Rule(read_tail=0), NOW, None, read_by_all=99)) == list(range(9))
    old = batches(0, 1, written=0.0) + batches(2, 3, 4)
    out = doomed(old, Rule(retention_s=60, read_tail=1), NOW, None, read_by_all=4)
    assert sorted((b.base_offset, r) for b, r in out) == [
        (0, "retention"),
        (1, "retention"),
        (2, "read"),
    ]  # 0-3 are read; 3 is the tail, 4 the newest


def test_a_group_whose_commit_stopped_moving_is_no_longer_a_reader() -> None:
    clock = [NOW]
    cleaner = BrokerLogCleaner(
        store=None,  # type: ignore[arg-type]  # only the reader bookkeeping is used
        rules={},
        committed=lambda group: {},
        clock=lambda: clock[0],
        stale_group_s=600,
    )

    def slowest(commits: dict[str, int], newest: int = 50) -> int | None:
        return cleaner.read_by_all("t", 0, commits, newest=newest, now=clock[0])

    assert slowest({"fuse": 40, "old-tool": 3}) == 3  # unknown so far: both count
    clock[0] += 599
    assert slowest({"fuse": 45, "old-tool": 3}) == 3
    clock[0] += 2  # old-tool has not moved for 601 s with more to read: gone
    assert slowest({"fuse": 48, "old-tool": 3}) == 48
    clock[0] += 100
    assert slowest({"fuse": 50, "old-tool": 3}) == 50
    clock[0] += 700  # fuse sat at the end for 700 s: nothing to move on to, still live ...
    assert slowest({"fuse": 50, "old-tool": 3}) == 50
    clock[0] += 30  # ... and when a batch comes after the lull, it is live while it reads it
    assert slowest({"fuse": 50, "old-tool": 3}, newest=51) == 50
    assert slowest({"old-tool": 3}) is None
    clock[0] += 1
    assert slowest({"old-tool": 4}) == 4  # it moved again: a reader again


class FakeBrokerBucket:
    """The broker's bucket, holding one partition's batch objects."""

    def __init__(self, topic: str, offsets: range) -> None:
        self.prefix = f"clusters/c/topics/{topic}/partitions/0000000000/records/"
        self.objects = [
            ListedObject(f"{self.prefix}{o:020d}.batch", datetime.fromtimestamp(NOW, UTC), 9)
            for o in offsets
        ]

    def listing(self, prefix: str = "", recursive: bool = True) -> list[ListedObject]:
        if not recursive:
            return [ListedObject("clusters/c/", datetime.fromtimestamp(NOW, UTC), 0)]
        return [o for o in self.objects if o.key.startswith(prefix)]

    def delete(self, keys: list[str]) -> int:
        self.objects = [o for o in self.objects if o.key not in keys]
        return len(keys)


def test_nothing_goes_for_having_been_read_when_a_group_does_not_answer() -> None:
    """A group the broker could not say the commits of may be a live reader that is behind:
    what the others read stays until every group answers (the size cap still runs)."""
    rule = Rule(retention_s=3600, max_batches=8, read_tail=2)
    answers = {"fuse": {("positions", 0): 9}, "plates": {("positions", 0): 9}}

    def committed(group: str) -> dict[tuple[str, int], int]:
        if group == "plates" and broken[0]:
            raise RuntimeError("timed out")
        return answers[group]

    broken = [True]
    bucket = FakeBrokerBucket("positions", range(10))
    cleaner = BrokerLogCleaner(
        bucket,  # type: ignore[arg-type]
        {"positions": rule},
        committed,
        clock=lambda: NOW,
        groups=lambda: ["fuse", "plates"],
    )
    report = cleaner.clean()
    assert report.errors == ["consumer groups: timed out"]
    assert report.deleted == {"positions": 2}  # the size cap only: 0 and 1
    broken[0] = False
    assert cleaner.clean().deleted == {"positions": 5}  # 2-6 read by both; 7, 8 the tail


def test_only_the_named_live_streams_get_the_read_tail() -> None:
    retained = {"cleanup.policy": "delete", "retention.ms": "7200000"}
    specs = [
        TopicSpec("frames", Message, 6, retained),
        TopicSpec("positions", Message, 6, retained),
        TopicSpec("state", Message, 1, {"cleanup.policy": "compact"}),
    ]
    rules = rules_for(
        specs, {}, max_batches=100, single_key=["state"], read_live=["positions"], read_tail=5
    )
    assert rules == {
        "frames": Rule(retention_s=7200.0, max_batches=100),  # replay reads it by time
        "positions": Rule(retention_s=7200.0, max_batches=100, read_tail=5),
        "state": Rule(max_batches=100),
    }


def test_batches_cut_before_a_group_read_them_are_counted_per_group() -> None:
    # Batches 0, 1, 2-4, 5 (the newest); the cap cuts 0, 1 and 2-4.
    all_ = batches(0, 1, 2, 5)
    cut = [b for b in all_ if b.base_offset < 5]
    commits = {"live": 5, "lagging": 3, "mid": 1, "at-start": 0}
    # "lagging" had read 0-2 of batch 2-4: that batch is unread in part, and counts.
    assert unread_cut(all_, cut, commits) == {"lagging": 1, "mid": 2, "at-start": 3}
    assert unread_cut(all_, all_, {"g": 0}) == {"g": 3}  # the newest is never counted


def test_rules_come_from_the_catalogue_and_compacted_topics_get_none() -> None:
    specs = [
        TopicSpec("frames", Message, 6, {"cleanup.policy": "delete", "retention.ms": "7200000"}),
        TopicSpec("state", Message, 1, {"cleanup.policy": "compact", "retention.ms": "1000"}),
        TopicSpec("dead", Message, 1, {"cleanup.policy": "delete"}),
        TopicSpec("internal", Message, 1, {"cleanup.policy": "delete"}),
    ]
    rules = rules_for(specs, {"internal": "se-group"})
    assert rules == {"frames": Rule(retention_s=7200.0), "internal": Rule(consumed_by="se-group")}


def test_the_cleaner_purges_each_flows_state_estimator_internal_topic_behind_its_group(
    stack_settings: Settings,
) -> None:
    se = StateEstimatorServiceSettings()
    cleaner = embedded_cleaner(stack_settings, ["prod", "dev1"])
    for flow in ("prod", "dev1"):
        # The same names the state estimator itself uses (its app id is its consumer group).
        assert cleaner.rules[se.internal_topic(flow)] == Rule(consumed_by=se.app_id(flow))
    for spec in topics_for(["prod", "dev1"], stack_settings.topics.layout()):
        if "retention.ms" in spec.config:
            assert cleaner.rules[spec.name].retention_s == int(spec.config["retention.ms"]) / 1e3
            assert cleaner.rules[spec.name].max_batches == stack_settings.infra.broker_max_batches
    cap = stack_settings.infra.broker_max_batches
    for flow in ("prod", "dev1"):
        assert cleaner.rules[FacilityState.topic_name(flow)] == Rule(max_batches=cap)
    assert not [t for t in cleaner.rules if t.endswith("-changelog")]  # many keys: untouched


def test_batch_keys_are_parsed_and_other_objects_ignored() -> None:
    prefix = "clusters/c/topics/t/"
    assert parse_batch_key(
        f"{prefix}partitions/0000000003/records/00000000000000000042.batch", prefix
    ) == (3, 42)
    assert parse_batch_key(f"{prefix}partitions/0000000003/watermark.json", prefix) is None
    assert parse_batch_key(f"{prefix}partitions/0000000003/records/x.batch", prefix) is None


# ---- against the real broker and S3


def produce_one_batch_each(settings: Settings, topic: str, n: int) -> None:
    producer = Producer({**settings.kafka.client_config(), "linger.ms": 0})
    for i in range(n):
        producer.produce(topic, value=f"r{i}".encode(), partition=0)
        assert producer.flush(10) == 0  # one batch per record, as a live producer often sends


def read_all(
    settings: Settings, topic: str, group: str | None, start: int | None, last: int
) -> list[int]:
    """Offsets read from ``start`` (or where ``group`` goes on from) until ``last``."""
    conf = {**settings.kafka.client_config(), "group.id": group or "log-cleaner-reader"}
    consumer = Consumer({**conf, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    if group is not None:  # where the group goes on from (assigned: no slow group join)
        start = consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    consumer.assign([TopicPartition(topic, 0, start or 0)])
    offsets: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and last not in offsets:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                offsets.append(int(msg.offset() or 0))
        return offsets
    finally:
        consumer.close()


def commit(settings: Settings, topic: str, group: str, offset: int) -> None:
    consumer = Consumer({**settings.kafka.client_config(), "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def hour_retained_stream(
    settings: Settings, topic: str, n: int, commits: dict[str, int]
) -> tuple[TopicSpec, TopicAdmin]:
    """A one-partition stream (retention 1 h) of ``n`` one-record batches, with each group of
    ``commits`` committed at its offset; its spec and an admin client."""
    spec = TopicSpec(topic, Message, 1, {"cleanup.policy": "delete", "retention.ms": "3600000"})
    admin = TopicAdmin(settings.kafka)
    admin.ensure([spec])
    produce_one_batch_each(settings, topic, n)
    for group, offset in commits.items():
        commit(settings, topic, group, offset)
    return spec, admin


def batch_objects(settings: Settings, topic: str) -> list[str]:
    return [
        k
        for k in broker_store(settings).keys("clusters/")
        if f"/topics/{topic}/" in k and k.endswith(".batch")
    ]


@pytest.mark.integration
def test_consumed_batches_are_deleted_and_the_group_reads_on_from_its_commit(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("internal"), unique_name("fuse")
    TopicAdmin(stack_settings.kafka).ensure(
        [TopicSpec(topic, Message, 1, {"cleanup.policy": "delete"})]
    )
    produce_one_batch_each(stack_settings, topic, 40)
    assert len(batch_objects(stack_settings, topic)) == 40
    commit(stack_settings, topic, group, 25)
    admin = TopicAdmin(stack_settings.kafka)
    cleaner = BrokerLogCleaner(
        broker_store(stack_settings), {topic: Rule(consumed_by=group)}, admin.committed
    )

    report = cleaner.clean()

    assert report.errors == []
    assert report.deleted == {topic: 25}
    assert report.largest == {topic: 15}
    assert len(batch_objects(stack_settings, topic)) == 15
    assert partition_batches(broker_store(stack_settings))[(topic, 0)] == 15
    # The group goes on from its commit and misses nothing; a reader from the start gets what
    # is left, as after Kafka's own retention; the broker keeps appending after it.
    assert read_all(stack_settings, topic, group, None, 39) == list(range(25, 40))
    assert read_all(stack_settings, topic, None, 0, 39) == list(range(25, 40))
    produce_one_batch_each(stack_settings, topic, 2)
    assert read_all(stack_settings, topic, group, None, 41) == list(range(25, 42))
    assert cleaner.clean().deleted == {topic: 0}  # nothing newly committed


@pytest.mark.integration
def test_expired_batches_are_deleted_and_the_newest_stays(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("frames")
    spec = TopicSpec(topic, Message, 1, {"cleanup.policy": "delete", "retention.ms": "60000"})
    TopicAdmin(stack_settings.kafka).ensure([spec])
    produce_one_batch_each(stack_settings, topic, 5)
    rules = rules_for([spec], {})
    admin = TopicAdmin(stack_settings.kafka)
    store = broker_store(stack_settings)
    assert BrokerLogCleaner(store, rules, admin.committed).clean().deleted == {topic: 0}

    later = BrokerLogCleaner(store, rules, admin.committed, clock=lambda: time.time() + 120)
    assert later.clean().deleted == {topic: 4}
    assert read_all(stack_settings, topic, None, 0, 4) == [4]
    produce_one_batch_each(stack_settings, topic, 1)
    assert read_all(stack_settings, topic, None, 0, 5) == [4, 5]


@pytest.mark.integration
def test_the_size_cap_keeps_the_newest_batches_and_counts_what_a_lagging_group_loses(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic, lagging, live = unique_name("frames"), unique_name("lagging"), unique_name("live")
    spec, admin = hour_retained_stream(stack_settings, topic, 10, {lagging: 3, live: 9})
    cleaner = BrokerLogCleaner(
        broker_store(stack_settings),
        rules_for([spec], {}, max_batches=4),
        admin.committed,
        groups=admin.groups,
    )

    report = cleaner.clean()

    assert report.errors == []
    assert report.deleted == {topic: 6}
    assert report.unread == {(topic, lagging): 3}  # records 3, 4 and 5 it never got
    assert read_all(stack_settings, topic, None, 0, 9) == [6, 7, 8, 9]
    assert read_all(stack_settings, topic, live, None, 9) == [9]


@pytest.mark.integration
def test_what_live_groups_read_of_an_estimates_topic_goes_and_a_stale_group_is_counted(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic, fuse, gone_group = unique_name("positions"), unique_name("fuse"), unique_name("old")
    spec, admin = hour_retained_stream(stack_settings, topic, 10, {fuse: 6, gone_group: 2})
    clock = [time.time()]
    cleaner = BrokerLogCleaner(
        broker_store(stack_settings),
        rules_for([spec], {}, max_batches=1000, read_live=[topic], read_tail=2),
        admin.committed,
        clock=lambda: clock[0],
        groups=admin.groups,
        stale_group_s=600,
    )

    # Both groups are readers while their commits may still move: the slower one read 0-1.
    report = cleaner.clean()
    assert report.errors == []
    assert report.deleted == {topic: 0}  # 0 and 1 are the tail
    commit(stack_settings, topic, fuse, 8)  # the live group moves on; the other never does
    clock[0] += 601
    report = cleaner.clean()

    assert report.errors == []
    assert report.deleted == {topic: 6}  # 0-5: fuse read 0-7; 6 and 7 are the tail
    assert report.unread == {(topic, gone_group): 4}  # records 2-5 it never got
    assert read_all(stack_settings, topic, fuse, None, 9) == [8, 9]
    assert read_all(stack_settings, topic, None, 0, 9) == [6, 7, 8, 9]


@pytest.mark.integration
def test_retention_still_runs_while_the_broker_cannot_say_what_was_committed(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    def broker_down(group: str) -> dict[tuple[str, int], int]:
        raise RuntimeError("broker unreachable")

    topic = unique_name("internal")
    spec = TopicSpec(topic, Message, 1, {"cleanup.policy": "delete", "retention.ms": "60000"})
    TopicAdmin(stack_settings.kafka).ensure([spec])
    produce_one_batch_each(stack_settings, topic, 5)
    rules = {topic: Rule(retention_s=60.0, consumed_by="g")}
    store = broker_store(stack_settings)
    cleaner = BrokerLogCleaner(store, rules, broker_down, clock=lambda: time.time() + 120)
    report = cleaner.clean()
    assert report.errors == ["committed offsets of g: broker unreachable"]
    assert report.deleted == {topic: 4}


def test_a_pass_with_the_object_store_down_reports_and_the_thread_goes_on() -> None:
    class DownStore:
        def listing(self, prefix: str, recursive: bool = True) -> list[object]:
            raise OSError("connection refused")

    cleaner = BrokerLogCleaner(DownStore(), {"t": Rule(retention_s=1.0)}, lambda g: {})  # type: ignore[arg-type]
    assert cleaner.clean().errors == ["t: connection refused"]
    errors_before = sample("depotwatch_broker_cleaner_errors_total")
    last_pass_before = sample("depotwatch_broker_cleaner_last_pass_timestamp_seconds")
    thread = CleanerThread(cleaner, interval_s=0.01).start()
    deadline = time.monotonic() + 10
    while thread.last is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    thread.stop()
    assert thread.last.errors == ["t: connection refused"]
    # A failed pass is counted and does not pass for a good one on /metrics.
    assert sample("depotwatch_broker_cleaner_errors_total") > errors_before
    assert sample("depotwatch_broker_cleaner_last_pass_timestamp_seconds") == last_pass_before


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0
