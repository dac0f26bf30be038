"""Retention for the embedded broker, which keeps every batch for ever and reads slower for it.

Tansu (0.6, S3 storage) stores each produced batch as one object
``clusters/<cluster>/topics/<topic>/partitions/<partition:010>/records/<offset:020>.batch`` and,
on **every fetch**, lists all objects of the partition before it reads the wanted ones. It
ignores ``retention.ms``, never compacts, and answers DeleteRecords with a panic (``todo!()``).
So a partition only grows, and every read of it gets slower with its size; measured on this
machine (2026-12-03) with aiokafka, 600-byte records, one batch each:

    2,000 batches in the partition   ~1,000 records/s
    20,000 batches                   244-325 records/s (from the end / from the start)

(``depotwatch bench broker --batches 2000,20000 --read 1000``; after this cleaner purged the
19,000 a group had read: ~1,000 records/s again.)

The state estimator funnels every estimate of a flow through one one-partition topic
(``<app id>-estimates``), the largest partition of the system: after 10-20 minutes of four
cameras its fuse agent read slower than estimates arrived, fell behind for good, and a
restart did not help (the partition stayed as large). That was the soak's "state estimator
stalls under load and does not recover".

:class:`BrokerLogCleaner` does for the embedded broker what Kafka's own retention does, from
the outside, deleting batch objects:

- **consumed** topics (the state estimators' internal topics, read by one group only): batches
  whose records that group has all committed; Kafka Streams purges its repartition topics the
  same way (with DeleteRecords, which this broker lacks);
- **delete-policy** topics with ``retention.ms`` (frames, estimates): batches older than that,
  and all but the newest ``infra.broker_max_batches`` of a partition (Kafka's
  ``retention.bytes``, counted in batches: a partition's size is its read cost here);
- of those, the **estimates** topics (positions, identities), which only live consumers read
  (nothing reads them by time range): also what every live consumer group of the partition
  has committed past, but for the newest ``infra.broker_read_tail`` batches. A group whose
  commit has not moved for ``infra.broker_stale_group_s`` while it had more to read is gone
  and holds nothing back. These partitions grew by every estimate, and the state estimator's
  fetches list each of them several times a second; now they hold the tail plus what is
  unread;
- the **facility-state** topics (compacted, one key: the facility id): all but the newest
  ``infra.broker_max_batches`` batches, which hold what compaction keeps and a tail of history.

The newest batch of a partition is never deleted (the broker answers ListOffsets from its
listing: latest and earliest come from the objects' write times), and other compacted topics
(the fusion changelogs: many keys, inside the batches) are left alone. A fetch that lands on
a deleted offset gets the next batch that is still there, silently (Kafka would answer
OFFSET_OUT_OF_RANGE and the client's ``auto.offset.reset`` would decide), so what the size
cap cuts ahead of a lagging group is counted per group
(``depotwatch_broker_unread_batches_deleted_total``) and logged. A reader at the cut while it
happens may get one failed fetch (the broker listed a batch that is gone when it reads it)
and retries. Against a real Kafka cluster none of this runs: Kafka enforces its retention
itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from prometheus_client import Counter, Gauge

from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility_state import FacilityState
from schemas.topics import TopicSpec, topics_for
from services.runtime.kafka import TopicAdmin
from services.runtime.settings import Settings, load_settings
from services.runtime.storage import ListedObject, ObjectStore
from services.state_estimator.config import StateEstimatorServiceSettings

log = logging.getLogger(__name__)

BATCHES_DELETED = Counter(
    "depotwatch_broker_batches_deleted_total",
    "Batch objects the embedded broker's log cleaner deleted",
    ["topic", "reason"],
)
LAST_PASS = Gauge(
    "depotwatch_broker_cleaner_last_pass_timestamp_seconds",
    "When the embedded broker's log cleaner last finished a pass",
)
UNREAD_DELETED = Counter(
    "depotwatch_broker_unread_batches_deleted_total",
    "Batches the size cap (or the read tail, for a stale group) deleted before a consumer group"
    " had read them",
    ["topic", "group"],
)
CLEANER_ERRORS = Counter(
    "depotwatch_broker_cleaner_errors_total",
    "Errors in the embedded broker's log cleaner passes (broker or S3 unreachable)",
)
PARTITION_BATCHES = Gauge(
    "depotwatch_broker_partition_batches_max",
    "Batch objects in the embedded broker's largest partition of a topic (each fetch lists them)",
    ["topic"],
)


@dataclass(frozen=True)
class Batch:
    """One batch object of the broker: its first offset and when it was written."""

    key: str
    base_offset: int
    written: float
    """Unix time the object was written."""


@dataclass(frozen=True)
class Rule:
    """What may go from one topic's partitions."""

    retention_s: float | None = None
    """Batches older than this go (delete-policy topics with ``retention.ms``)."""
    consumed_by: str | None = None
    """Batches this consumer group has committed past go (topics only that group reads)."""
    max_batches: int | None = None
    """Only the newest this many batches stay (the embedded broker's ``retention.bytes``:
    every fetch lists all of a partition's batches, so its size is its read cost)."""
    read_tail: int | None = None
    """Batches that every live reader group has committed past go, except the newest this
    many of them (topics only read live, as they arrive: the estimates)."""


def doomed(
    batches: Sequence[Batch],
    rule: Rule,
    now: float,
    committed: int | None,
    read_by_all: int | None = None,
) -> list[tuple[Batch, str]]:
    """The batches of one partition that ``rule`` deletes, each with its reason.

    ``batches`` in any order; ``committed``: the consuming group's committed offset (the next
    record it will read), None when it has none; ``read_by_all``: the lowest committed offset
    of the partition's live reader groups, None when it has none. A batch counts as consumed
    (read) only when the next batch starts at or below that offset (its records are contiguous
    up to there), and the newest batch always stays.
    """
    ordered = sorted(batches, key=lambda b: b.base_offset)
    out: list[tuple[Batch, str]] = []
    over = len(ordered) - rule.max_batches if rule.max_batches is not None else 0
    read_over = 0
    if rule.read_tail is not None and read_by_all is not None:
        read = sum(1 for following in ordered[1:] if following.base_offset <= read_by_all)
        read_over = read - rule.read_tail
    for index, (batch, following) in enumerate(pairwise(ordered)):
        if (
            rule.consumed_by is not None
            and committed is not None
            and following.base_offset <= committed
        ):
            out.append((batch, "consumed"))
            continue
        if rule.retention_s is not None and batch.written < now - rule.retention_s:
            out.append((batch, "retention"))
        elif index < over:
            out.append((batch, "size"))
        elif index < read_over:
            out.append((batch, "read"))
    return out


def unread_cut(
    batches: Sequence[Batch], cut: Iterable[Batch], commits: Mapping[str, int]
) -> dict[str, int]:
    """How many of the ``cut`` batches of one partition each group had not read yet.

    ``commits``: group -> committed offset (the next record it reads). A batch runs up to the
    next batch's base offset, so it is unread by a group whose commit is below that."""
    bases = sorted(b.base_offset for b in batches)
    after = dict(pairwise(bases))
    out: dict[str, int] = {}
    for batch in cut:
        end = after.get(batch.base_offset)
        if end is None:  # the newest batch is never cut
            continue
        for group, committed in commits.items():
            if committed < end:
                out[group] = out.get(group, 0) + 1
    return out


def rules_for(
    specs: Iterable[TopicSpec],
    consumed_by: Mapping[str, str],
    max_batches: int | None = None,
    single_key: Iterable[str] = (),
    read_live: Iterable[str] = (),
    read_tail: int | None = None,
) -> dict[str, Rule]:
    """Rules from the topic catalogue and the topics only one group reads (``consumed_by``:
    topic -> group).

    Delete-policy topics with ``retention.ms`` (the streams: frames, estimates) lose what is
    older, and all but their newest ``max_batches`` batches a partition. Topics without it
    (dead letters, ground truth) and compacted topics get no rule; a consumed topic is never
    cut by size (its unread records are the state estimator's work still to do).

    ``single_key`` names compacted topics whose records all carry one key (the facility
    state): their newest batch holds what compaction would keep, so they get the size cap too,
    which leaves that and a tail of history.

    ``read_live`` names streams that nothing reads by time range, only live consumers as the
    records arrive (the estimates): with ``read_tail``, what all their live groups have read
    goes too, but for the newest ``read_tail`` batches a partition."""
    rules: dict[str, Rule] = {}
    one_key = set(single_key)
    live = set(read_live)
    for spec in specs:
        if spec.config.get("cleanup.policy", "delete") != "delete":
            if spec.name in one_key and max_batches is not None:
                rules[spec.name] = Rule(max_batches=max_batches)
            continue
        ms = spec.config.get("retention.ms")
        if ms is not None and int(ms) > 0:
            rules[spec.name] = Rule(
                retention_s=int(ms) / 1000.0,
                max_batches=max_batches,
                read_tail=read_tail if spec.name in live else None,
            )
    for topic, group in consumed_by.items():
        rules[topic] = Rule(retention_s=rules.get(topic, Rule()).retention_s, consumed_by=group)
    return rules


def parse_batch_key(key: str, prefix: str) -> tuple[int, int] | None:
    """(partition, base offset) of ``<prefix>partitions/<p>/records/<offset>.batch``."""
    rest = key[len(prefix) :].split("/")
    if len(rest) != 4 or rest[0] != "partitions" or rest[2] != "records":
        return None
    if not rest[3].endswith(".batch"):
        return None
    try:
        return int(rest[1]), int(rest[3][: -len(".batch")])
    except ValueError:
        return None


@dataclass
class CleanReport:
    """What one pass did."""

    deleted: dict[str, int] = field(default_factory=dict)
    """Batch objects deleted, per topic."""
    largest: dict[str, int] = field(default_factory=dict)
    """Batch objects left in the largest partition, per topic."""
    unread: dict[tuple[str, str], int] = field(default_factory=dict)
    """(topic, group) -> batches the size cap cut before that group read them."""
    errors: list[str] = field(default_factory=list)


class BrokerLogCleaner:
    """Deletes the embedded broker's batch objects that its rules allow; call :meth:`clean`."""

    def __init__(
        self,
        store: ObjectStore,
        rules: Mapping[str, Rule],
        committed: Callable[[str], Mapping[tuple[str, int], int]],
        clock: Callable[[], float] = time.time,
        groups: Callable[[], Iterable[str]] | None = None,
        stale_group_s: float = 600.0,
    ) -> None:
        self.store = store
        """The broker's bucket."""
        self.rules = dict(rules)
        self.committed = committed
        self.groups = groups
        """Every consumer group, to count what the size cap cuts ahead of one and to know the
        live readers of ``read_tail`` topics (None: neither)."""
        self.clock = clock
        self.stale_group_s = stale_group_s
        """A group whose commit on a partition has not moved for this long while there was
        more to read is gone (a stopped flow, an old tool's group): it no longer holds back
        ``read_tail`` deletions: it loses all but the tail and what live groups have not read
        yet (counted in ``depotwatch_broker_unread_batches_deleted_total`` and logged). A group
        at the end of a partition is not stale, however long no batch comes."""
        self._clusters: list[str] = []
        self._moved: dict[tuple[str, int, str], tuple[int, float]] = {}
        """(topic, partition, group) -> (committed offset, when this cleaner saw it change)."""

    def clusters(self) -> list[str]:
        """The broker's cluster folders in its bucket (``clusters/<id>/``)."""
        if not self._clusters:
            self._clusters = [
                o.key
                for o in self.store.listing("clusters/", recursive=False)
                if o.key.endswith("/")
            ]
        return self._clusters

    def clean(self) -> CleanReport:
        """One pass over every topic with a rule; errors are reported, not raised."""
        report = CleanReport()
        now = self.clock()
        offsets: dict[str, Mapping[tuple[str, int], int]] = {}
        readers, complete = self._readers(report) if self._wants_readers() else ({}, False)
        for topic, rule in sorted(self.rules.items()):
            group = rule.consumed_by
            if group is not None and group not in offsets:
                try:
                    offsets[group] = self.committed(group)
                except Exception as exc:  # the broker may be restarting: retention still runs
                    report.errors.append(f"committed offsets of {group}: {exc}")
                    offsets[group] = {}
            try:
                for cluster in self.clusters():
                    self._clean_topic(
                        cluster,
                        topic,
                        rule,
                        now,
                        offsets.get(group or "", {}),
                        readers if complete or rule.read_tail is None else None,
                        report,
                    )
            except Exception as exc:  # S3 down or restarting: the next pass tries again
                report.errors.append(f"{topic}: {exc}")
        return report

    def _wants_readers(self) -> bool:
        """Whether a rule needs every group's commits (to count size cuts, or to know what
        all live groups read)."""
        return self.groups is not None and any(
            r.max_batches is not None or r.read_tail is not None for r in self.rules.values()
        )

    def read_by_all(
        self, topic: str, partition: int, commits: Mapping[str, int], newest: int, now: float
    ) -> int | None:
        """The lowest committed offset among the live reader groups of a partition (None when
        it has none), remembering when each group's commit last moved. ``newest``: base offset
        of the partition's newest batch; a group committed at or past it has nothing to move
        on to and is live."""
        live: list[int] = []
        for group, offset in commits.items():
            key = (topic, partition, group)
            seen = self._moved.get(key)
            if seen is None or seen[0] != offset or offset >= newest:
                # Moved, or caught up (nothing to move on to): its clock starts again.
                self._moved[key] = seen = (offset, now)
            if now - seen[1] <= self.stale_group_s:
                live.append(offset)
        return min(live) if live else None

    def _readers(self, report: CleanReport) -> tuple[dict[tuple[str, int], dict[str, int]], bool]:
        """(topic, partition) -> group -> committed offset, over every consumer group, and
        whether every group answered (when not, nobody can say what all live groups read)."""
        out: dict[tuple[str, int], dict[str, int]] = {}
        assert self.groups is not None
        try:
            for group in self.groups():
                for where, offset in self.committed(group).items():
                    out.setdefault(where, {})[group] = offset
        except Exception as exc:  # unknown readers: the cap still runs, uncounted
            report.errors.append(f"consumer groups: {exc}")
            return out, False
        listed = {(t, p, g) for (t, p), commits in out.items() for g in commits}
        self._moved = {k: v for k, v in self._moved.items() if k in listed}  # groups gone
        return out, True

    def _clean_topic(
        self,
        cluster: str,
        topic: str,
        rule: Rule,
        now: float,
        committed: Mapping[tuple[str, int], int],
        readers: Mapping[tuple[str, int], Mapping[str, int]] | None,
        report: CleanReport,
    ) -> None:
        """``readers``: every group's commits per partition; None when some group did not
        answer, and then nothing goes for having been read."""
        prefix = f"{cluster}topics/{topic}/"
        partitions: dict[int, list[Batch]] = {}
        for obj in self.store.listing(f"{prefix}partitions/"):
            parsed = parse_batch_key(obj.key, prefix)
            if parsed is not None:
                partitions.setdefault(parsed[0], []).append(_batch(obj, parsed[1]))
        if not partitions:
            return
        gone: list[tuple[Batch, str]] = []
        unread: dict[str, int] = {}
        for partition, batches in partitions.items():
            read = None
            if rule.read_tail is not None and readers is not None:
                newest = max(b.base_offset for b in batches)
                commits = readers.get((topic, partition), {})
                read = self.read_by_all(topic, partition, commits, newest, now)
            cut = doomed(batches, rule, now, committed.get((topic, partition)), read)
            gone += cut
            # A live group has read what "read" cuts; a stale one may not have.
            sized = [b for b, reason in cut if reason in ("size", "read")]
            if sized:
                for group, n in unread_cut(
                    batches, sized, (readers or {}).get((topic, partition), {})
                ).items():
                    unread[group] = unread.get(group, 0) + n
        self.store.delete([b.key for b, _ in gone])
        for group, n in unread.items():
            UNREAD_DELETED.labels(topic, group).inc(n)
            report.unread[(topic, group)] = report.unread.get((topic, group), 0) + n
        for reason in {r for _, r in gone}:
            BATCHES_DELETED.labels(topic, reason).inc(sum(1 for _, r in gone if r == reason))
        deleted = {b.key for b, _ in gone}
        largest = max(sum(1 for b in bs if b.key not in deleted) for bs in partitions.values())
        PARTITION_BATCHES.labels(topic).set(largest)
        report.deleted[topic] = report.deleted.get(topic, 0) + len(gone)
        report.largest[topic] = max(report.largest.get(topic, 0), largest)


def _batch(obj: ListedObject, base_offset: int) -> Batch:
    return Batch(obj.key, base_offset, obj.modified.timestamp())


class CleanerThread:
    """Runs a cleaner every ``interval_s`` in a daemon thread until :meth:`stop`."""

    def __init__(self, cleaner: BrokerLogCleaner, interval_s: float = 30.0) -> None:
        self.cleaner = cleaner
        self.interval_s = interval_s
        self.last: CleanReport | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-log-cleaner", daemon=True)

    def start(self) -> CleanerThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                report = self.cleaner.clean()
            except Exception:  # never let the thread die: the partitions would grow again
                log.exception("broker log cleaner pass failed")
                continue
            self.last = report
            if not report.errors:
                LAST_PASS.set(time.time())
            if any(report.deleted.values()):
                log.info(
                    "broker log cleaned",
                    extra={"deleted": report.deleted, "largest_partition": report.largest},
                )
            for (topic, group), n in report.unread.items():
                log.warning(
                    "broker log cleaner cut %d batches of %s that consumer group %s had not read"
                    " (it is over DEPOTWATCH_INFRA__BROKER_MAX_BATCHES batches behind, or its"
                    " commit on an estimates topic has not moved for"
                    " DEPOTWATCH_INFRA__BROKER_STALE_GROUP_S: let it catch up, raise those"
                    " settings, or delete the group if it is gone)",
                    n,
                    topic,
                    group,
                )
            CLEANER_ERRORS.inc(len(report.errors))
            for error in report.errors:
                log.warning("broker log cleaner: %s", error)


def embedded_cleaner(settings: Settings, flows: Iterable[str]) -> BrokerLogCleaner:
    """The cleaner of the embedded broker of ``settings`` (client settings of the embedded
    stack) for ``flows``: the catalogue's retention, and each flow's state-estimator internal
    topic purged behind its group."""
    se = load_settings(StateEstimatorServiceSettings)
    flows = sorted(set(flows))
    specs = topics_for(flows, settings.topics.layout())
    rules = rules_for(
        specs,
        {se.internal_topic(f): se.app_id(f) for f in flows},
        max_batches=settings.infra.broker_max_batches,
        single_key=[FacilityState.topic_name(f) for f in flows],
        read_live=[t for f in flows for t in estimate_topics(f)],
        read_tail=settings.infra.broker_read_tail,
    )
    admin = TopicAdmin(settings.kafka)
    return BrokerLogCleaner(
        broker_store(settings),
        rules,
        admin.committed,
        groups=admin.groups,
        stale_group_s=settings.infra.broker_stale_group_s,
    )


def estimate_topics(flow: str) -> list[str]:
    """A flow's estimates topics: consumed live (plate reader, state estimator, dashboard),
    never read by time range (replay and comparisons read frames, truth and states)."""
    return [PositionEstimate.topic_name(flow), IdentityEstimate.topic_name(flow)]


def broker_store(settings: Settings) -> ObjectStore:
    """The object store holding the embedded broker's log (its own bucket on the same S3)."""
    return ObjectStore(settings.s3.model_copy(update={"bucket": settings.infra.broker_bucket}))


def partition_batches(store: ObjectStore) -> dict[tuple[str, int], int]:
    """Batch objects per (topic, partition) in the broker's bucket (each fetch lists them)."""
    out: dict[tuple[str, int], int] = {}
    for key in store.keys("clusters/"):
        parts = key.split("/")
        # clusters/<cluster>/topics/<topic>/partitions/<p>/records/<offset>.batch
        if len(parts) == 8 and parts[2] == "topics" and parts[7].endswith(".batch"):
            try:
                where = (parts[3], int(parts[5]))
            except ValueError:
                continue
            out[where] = out.get(where, 0) + 1
    return out
