"""The Faust app around the fusion core: one app (one consumer group) per flow.

Dataflow inside the app::

    positions.<pf>.v1 ─┐ (6 partitions, key camera_id)
    identities.<if>.v1 ┴─> agent ``route``: validate (dead-letter bad ones), forward raw bytes
                            └─> <app_id>-estimates (1 partition, key facility_id)
                                 └─> agent ``fuse``: FusionCore.apply_* (state in memory)
                                      ├─> facility-state.<flow>.v1 on change; timer: heartbeat
                                      └─> checkpoint (timer): changed records -> Table ``fusion``
                                          (changelog <app_id>-fusion-changelog, 1 partition)

Fusion is facility-wide (one locomotive spans several cameras, hence several input
partitions), so estimates are funnelled through a one-partition topic, and the table's keys
(``<facility>/meta``, ``<facility>/cameras``, ``<facility>/track/<id>``, see
``fusion.records``) all live in one changelog partition.

State is checkpointed, not written per estimate: every ``checkpoint_interval_s`` the records
that changed are written to the table, and only then are the estimates they cover
acknowledged. Faust flushes the producer (changelog writes included) before it commits an
offset, so after a crash the worker restores the last checkpoint and is handed again every
estimate after it (at-least-once); the camera clocks in the records make those idempotent.
(On the embedded Tansu broker Faust's restore is partial; the worker reads the changelog to its
real end itself: :meth:`StateEstimatorApp._changelog_latest`, README "Kafka clients".)
``pf``/``if`` are the flow's ``positions_from`` / ``identities_from`` (mixed flows) or the
flow itself.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import faust
from faust.stores.memory import Store as MemoryStore
from prometheus_client import Counter, Gauge, Histogram

from schemas.base import Message, MessageDecodeError, decode, encode, kafka_time, utc_now
from schemas.deadletter import DeadLetter
from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility import FacilityConfig
from schemas.facility_state import FacilityState, UpdateTimes
from schemas.topics import TopicSpec, topics_for
from services.runtime.facility_watch import FacilityWatch
from services.runtime.kafka import DEAD_LETTERED, note_unknown_fields
from services.runtime.settings import KafkaSettings, Settings
from services.runtime.task_dump import install_task_dump
from services.runtime.topic_reader import latest_per_key
from services.state_estimator.config import StateEstimatorServiceSettings
from services.state_estimator.fusion import (
    FusionConfig,
    FusionCore,
    FusionState,
    content_signature,
    records,
)

log = logging.getLogger(__name__)

ESTIMATES = Counter(
    "depotwatch_state_estimates_total",
    "Estimates folded into the facility state, by outcome",
    ["flow", "kind", "outcome"],
)
UPDATES = Counter(
    "depotwatch_state_updates_total", "Facility-state messages published", ["flow", "reason"]
)
LATENCY = Histogram(
    "depotwatch_state_capture_to_update_seconds",
    "Frame capture time to the facility-state update it caused",
    ["flow"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
LOCOMOTIVES = Gauge(
    "depotwatch_state_locomotives", "Locomotives per track in the facility state", ["flow", "track"]
)
STAGE_SECONDS = Histogram(
    "depotwatch_state_update_stage_seconds",
    "Where one facility-state change's latency went, by stage (ingest: capture -> stored; "
    "estimate: stored -> estimated; deliver: -> taken in by the state estimator; fuse: -> fused)",
    ["flow", "kind", "stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
STAGE_CLOCK_SKEW = Counter(
    "depotwatch_state_stage_clock_skew_total",
    "Stages of a facility-state change that came out negative: the two hosts' clocks disagree "
    "by at least that much (the stage is recorded as 0 s; sync the clocks, e.g. chrony)",
    ["flow", "stage"],
)
RESTORE_FALLBACKS = Counter(
    "depotwatch_state_restore_fallbacks_total",
    "Restarts that could not read the changelog to its end and kept Faust's restore",
    ["flow"],
)
CHECKPOINT_RECORDS = Counter(
    "depotwatch_state_checkpoint_records_total",
    "Fusion-state records written to the table's changelog",
    ["flow"],
)
CHECKPOINT_BYTES = Counter(
    "depotwatch_state_checkpoint_bytes_total",
    "Bytes of fusion-state records written to the table's changelog",
    ["flow"],
)

POSITION, IDENTITY = b"P", b"I"
"""Envelope marker on the internal topic: which model the forwarded payload is."""

TABLE_NAME = "fusion"


def update_times(
    estimate: PositionEstimate | IdentityEstimate,
    routed_at: datetime | None,
    fused_at: datetime | None = None,
) -> UpdateTimes:
    """When ``estimate`` passed each stage, for the change it caused (fused now by default)."""
    return UpdateTimes(
        kind="position" if isinstance(estimate, PositionEstimate) else "identity",
        camera_id=estimate.camera_id,
        captured_at=estimate.frame.captured_at,
        stored_at=estimate.frame.stored_at,
        estimated_at=estimate.estimated_at,
        routed_at=routed_at,
        fused_at=fused_at or utc_now(),
    )


def observe_stages(flow: str, times: UpdateTimes) -> None:
    """Record one change's latency: in total and by stage (by the kind of estimate that
    caused it: an identity passed through both estimators); count stages that came out
    negative (clock skew between hosts) instead of hiding them."""
    LATENCY.labels(flow).observe(max(0.0, (times.fused_at - times.captured_at).total_seconds()))
    for stage, seconds in times.stages(clamp=False).items():
        if seconds < 0:
            STAGE_CLOCK_SKEW.labels(flow, stage).inc()
        STAGE_SECONDS.labels(flow, times.kind, stage).observe(max(0.0, seconds))


def limit_fetch_wait(max_wait_ms: int) -> None:
    """Make Faust's consumers long-poll at most ``max_wait_ms`` (Faust hard-codes 1500 ms).

    Measured on the embedded Tansu broker: a fetch over several partitions is answered only
    after the full wait when the data arrives during it (aiokafka, 6 partitions: p50 1.31 s
    at 1500 ms, 0.011 s at 100 ms), and our app consumes 13 partitions in two hops. Against
    Apache Kafka a shorter wait only costs a few more idle fetch requests.
    """
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    original = getattr(thread, "_depotwatch_original_create", None)
    if original is None:
        original = thread._create_worker_consumer
        thread._depotwatch_original_create = original  # type: ignore[attr-defined]

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        # aiokafka reads this when the consumer starts and builds its fetcher.
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    thread._create_worker_consumer = create  # type: ignore[method-assign]


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Faust's broker credentials from the settings every librdkafka client uses.

    ``DEPOTWATCH_KAFKA__SECURITY_PROTOCOL`` SSL / SASL_PLAINTEXT / SASL_SSL, with
    ``SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), ``SASL_USERNAME``,
    ``SASL_PASSWORD`` (or the mounted secret file ``depotwatch_kafka__sasl_password``) and
    ``SSL_CA_LOCATION`` (system CAs when unset). None for PLAINTEXT.
    """
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_ca_location)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if not kafka.sasl_username or kafka.sasl_password is None:
        raise ValueError(
            f"{protocol} needs DEPOTWATCH_KAFKA__SASL_USERNAME and "
            "DEPOTWATCH_KAFKA__SASL_PASSWORD (or the secret file depotwatch_kafka__sasl_password)"
        )
    mechanism = (kafka.sasl_mechanism or "PLAIN").upper()
    allowed = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    if mechanism not in allowed:
        raise ValueError(
            f"DEPOTWATCH_KAFKA__SASL_MECHANISM={kafka.sasl_mechanism!r} is not supported by the "
            f"state estimator; use one of {', '.join(allowed)}"
        )
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password.get_secret_value(),
        mechanism=mechanism,
        ssl_context=context,
    )


class FlowNotRunnableError(ValueError):
    """The flow has no state estimator configured."""


class StateEstimatorApp:
    """Builds and owns the Faust app of one flow."""

    def __init__(
        self,
        facility: FacilityConfig,
        flow: str,
        settings: Settings,
        service: StateEstimatorServiceSettings | None = None,
        config_path: Path | None = None,
    ) -> None:
        flow_cfg = facility.flow(flow)
        if flow_cfg.state_estimator is None:
            raise FlowNotRunnableError(
                f"flow {flow!r} has no state_estimator in the facility config; add "
                f"`state_estimator: {{}}` under flows.{flow}"
            )
        self.service = service or StateEstimatorServiceSettings()
        self.config_path = config_path
        self._watch = FacilityWatch(config_path) if config_path is not None else None
        self._camera_ids = {c.id for c in facility.cameras}
        # The same "<service>.<flow>" naming as the frame services (dead letters, metrics).
        self.service_name = f"state-estimator.{flow}"
        self.settings = settings
        self.flow = flow
        self.facility_id = facility.facility_id
        self.tuning = flow_cfg.state_estimator
        self.positions_flow = flow_cfg.positions_from or flow
        self.identities_flow = flow_cfg.identities_from or flow
        self.core = FusionCore(FusionConfig.from_facility(facility, flow, self.tuning))
        self.app_id = self.service.app_id(flow)
        self.positions_topic = PositionEstimate.topic_name(self.positions_flow)
        self.identities_topic = IdentityEstimate.topic_name(self.identities_flow)
        self.output_topic = FacilityState.topic_name(flow)
        self.internal_topic = self.service.internal_topic(flow)
        self.changelog_topic = f"{self.app_id}-{TABLE_NAME}-changelog"
        self._state: FusionState | None = None
        self._load_lock = asyncio.Lock()
        self._generation = 0
        """Bumped when the state is dropped; a changelog read of an older generation is void."""
        self._written: dict[str, bytes] = {}
        """Records as last written to the table (what the next checkpoint diffs against)."""
        self._unacked: list[tuple[Any, Any]] = []
        """(stream, event) of estimates applied since the last checkpoint."""
        self._dirty = False
        self._signature: str | None = None
        self._watermark_moved_at = time.monotonic()
        self.ready = False
        self.estimates_done = 0
        """Estimates the fuse agent has finished (accepted or ignored): progress for health."""
        self.newest_captured: datetime | None = None
        """Capture time of the newest frame whose estimate was fused: how far behind it is."""
        self.last_published = time.monotonic()
        self.owns_fusion = True
        """False on a worker that was not assigned the fusion partition (it publishes nothing)."""
        self.app = self._build()

    # ---- topics

    def topic_specs(self, settings: Settings | None = None) -> list[TopicSpec]:
        """Every topic this app reads or writes, to pre-create with matching partitions."""
        s = settings or self.settings
        flows = {self.flow, self.positions_flow, self.identities_flow}
        specs = topics_for(flows, s.topics.layout())
        specs += [
            TopicSpec(self.internal_topic, Message, 1, {"cleanup.policy": "delete"}),
            TopicSpec(self.changelog_topic, Message, 1, {"cleanup.policy": "compact"}),
        ]
        return specs

    # ---- Faust

    def _build(self) -> faust.App:
        limit_fetch_wait(self.service.fetch_max_wait_ms)
        kafka = self.settings.kafka
        # One directory per flow; Faust creates only the last path component itself.
        datadir = Path(self.service.data_dir) / self.app_id
        datadir.parent.mkdir(parents=True, exist_ok=True)
        broker = ";".join(f"kafka://{h.strip()}" for h in kafka.bootstrap_servers.split(","))
        app = faust.App(
            self.app_id,
            broker=broker,
            broker_credentials=faust_credentials(kafka),
            producer_linger=self.service.producer_linger_ms / 1000.0,
            store=self.service.store,
            datadir=str(datadir),
            processing_guarantee=self.service.processing_guarantee,
            topic_partitions=1,
            topic_replication_factor=1,
            table_standby_replicas=0,
            consumer_auto_offset_reset=self.service.auto_offset_reset,
            broker_session_timeout=kafka.session_timeout_ms / 1000,
            broker_heartbeat_interval=max(0.5, kafka.session_timeout_ms / 4000),
            stream_recovery_delay=0.0,
            # The fuse agent's estimates are acknowledged by the checkpoint timer, and Faust
            # stops timers before it waits for acknowledgements: waiting would hang every
            # stop (and a rebalance for up to a checkpoint). Redelivery is idempotent (camera
            # clocks), so what was fused since the last checkpoint is simply fused again.
            stream_wait_empty=False,
            web_enabled=False,
            autodiscover=False,
            # Payloads are our own JSON (schemas.encode/decode); Faust only moves bytes.
            key_serializer="raw",
            value_serializer="raw",
        )
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        inputs = app.topic(self.positions_topic, self.identities_topic, **raw)
        internal = app.topic(self.internal_topic, partitions=1, internal=True, **raw)
        output = app.topic(self.output_topic, **raw)
        dead_letters = app.topic(DeadLetter.topic_name(), **raw)
        # use_partitioner: the checkpoint timer writes outside stream iteration; with one
        # partition every key lands in partition 0 either way.
        table = app.Table(
            TABLE_NAME,
            partitions=1,
            default=None,
            key_type=bytes,
            value_type=bytes,
            use_partitioner=True,
        )
        fid = self.facility_id.encode()

        async def route(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                msg = event.message
                is_position = msg.topic == self.positions_topic
                model: type[Message] = PositionEstimate if is_position else IdentityEstimate
                kind = "position" if is_position else "identity"
                produced_at = kafka_time(int(msg.timestamp * 1000)) if msg.timestamp else None
                try:
                    estimate = decode(
                        model, event.value, produced_at, self.settings.kafka.max_clock_skew_s
                    )
                    self._check_camera(estimate)
                    note_unknown_fields(self.service_name, msg.topic, estimate)
                except MessageDecodeError as exc:
                    letter = DeadLetter.of(
                        topic=msg.topic,
                        partition=msg.partition,
                        offset=msg.offset,
                        key=event.key,
                        value=event.value,
                        reason=exc.reason,
                        service=self.service_name,
                    )
                    await dead_letters.send(key=letter.kafka_key(), value=encode(letter))
                    ESTIMATES.labels(self.flow, kind, "dead_lettered").inc()
                    DEAD_LETTERED.labels(self.service_name, msg.topic).inc()
                    log.warning(
                        "estimate dead-lettered",
                        extra={"flow": self.flow, "topic": msg.topic, "reason": exc.reason},
                    )
                    yield None
                    continue
                marker = POSITION if is_position else IDENTITY
                await internal.send(key=fid, value=marker + (event.value or b""))
                yield None

        async def fuse(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            # Acknowledged by the checkpoint that covers them, not when the next one arrives.
            manual = cast(Any, stream).noack()
            async for event in manual.events():
                self._unacked.append((manual, event))
                payload = event.value or b""
                state = await self._loaded(table)
                estimate: PositionEstimate | IdentityEstimate
                if payload[:1] == POSITION:
                    estimate = decode(PositionEstimate, payload[1:])
                    state, accepted = self.core.apply_position(state, estimate)
                    kind = "position"
                else:
                    estimate = decode(IdentityEstimate, payload[1:])
                    state, accepted = self.core.apply_identity(state, estimate)
                    kind = "identity"
                captured_at = estimate.frame.captured_at
                self.estimates_done += 1
                if self.newest_captured is None or captured_at > self.newest_captured:
                    self.newest_captured = captured_at
                if not accepted:
                    # Late, or a redelivery after a crash: idempotence at work.
                    ESTIMATES.labels(self.flow, kind, "ignored").inc()
                    yield None
                    continue
                ESTIMATES.labels(self.flow, kind, "accepted").inc()
                if self._state is None or state.watermark != self._state.watermark:
                    self._watermark_moved_at = time.monotonic()
                self._state, self._dirty = state, True
                rendered = self.core.render(state)
                signature = content_signature(rendered)
                if signature != self._signature:
                    self._signature = signature
                    routed = event.message.timestamp
                    times = update_times(
                        estimate, kafka_time(int(routed * 1000)) if routed else None
                    )
                    await self._publish(
                        output, rendered.model_copy(update={"latency": times}), "change"
                    )
                    observe_stages(self.flow, times)
                yield None

        async def checkpoint() -> None:
            if not self._recovered(app) or app.in_recovery:
                return
            if not self._assigned_fusion():
                # Lost in a rebalance this worker has not been told of yet: never write.
                self.drop_fusion_state("not assigned at checkpoint time")
                return
            await self.checkpoint(table)

        def revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
            # mode's signal: receiver(app, revoked_partitions, signal=...)
            self.partitions_revoked(args[0] if args else ())

        async def heartbeat() -> None:
            # Before the table is restored from its changelog there is nothing true to say.
            if not self.ready or not self._recovered(app) or app.in_recovery:
                return
            # With several workers for one flow only the owner of the one fusion partition
            # knows the state; the others would publish an empty facility.
            self.owns_fusion = self._assigned_fusion()
            if not self.owns_fusion:
                return
            state = await self._loaded(table)
            as_of = None
            if state.watermark is not None:
                # Event time moves on with the wall clock while no estimate arrives, so a
                # silent facility ages into "stale" even in a replay that has ended.
                idle = time.monotonic() - self._watermark_moved_at
                as_of = state.watermark + timedelta(seconds=idle)
            rendered = self.core.render(state, as_of or utc_now())
            await self._publish(output, rendered, "heartbeat")

        async def started() -> None:
            self.ready = True
            install_task_dump(asyncio.get_running_loop(), self.consumer_state)
            log.info(
                "state estimator running",
                extra={
                    "flow": self.flow,
                    "positions": self.positions_topic,
                    "identities": self.identities_topic,
                    "output": self.output_topic,
                    "guarantee": self.service.processing_guarantee,
                },
            )

        app.agent(inputs, name=f"{self.app_id}.route")(route)
        app.agent(internal, name=f"{self.app_id}.fuse", concurrency=1)(fuse)
        app.timer(self.tuning.heartbeat_s, name=f"{self.app_id}.heartbeat")(heartbeat)
        app.timer(self.service.checkpoint_interval_s, name=f"{self.app_id}.checkpoint")(checkpoint)
        app.task(started)
        app.on_partitions_revoked.connect(cast(Any, revoked))  # mode types the handler oddly
        return app

    def consumer_state(self) -> str:
        """Which partitions Faust's consumer has, fetches, holds paused or holds back because
        a stream's buffer is full (for the SIGUSR1 dump of a stalled worker)."""
        consumer: Any = self.app.consumer

        def names(tps: Any) -> list[str]:
            return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps or ())

        return (
            f"faust consumer: assigned {names(consumer.assignment())}; "
            f"active {names(consumer._active_partitions)}; "
            f"paused {names(consumer._paused_partitions)}; "
            f"buffer full {names(consumer._buffered_partitions)}; "
            f"flow active {consumer.flow_active}; in recovery {self.app.in_recovery}; "
            f"internal topic: {self._fetch_position()}"
        )

    def _fetch_position(self) -> str:
        """Where aiokafka fetches the internal topic from, and the end it was told."""
        try:
            from aiokafka import TopicPartition

            aio: Any = cast(Any, self.app.consumer)._thread._ensure_consumer()
            assignment = aio._fetcher._subscriptions.subscription.assignment
            tp_state = assignment.state_value(TopicPartition(self.internal_topic, 0))
            paused = tp_state.paused if tp_state is not None else None
            return (
                f"position {tp_state.position if tp_state else None}, "
                f"highwater {tp_state.highwater if tp_state else None}, paused {paused}"
            )
        except Exception as exc:  # internals of one aiokafka version; a diagnostic only
            return f"unknown ({exc!r})"

    # ---- ownership of the fusion partition

    def _assigned_fusion(self) -> bool:
        """Whether the one fusion (internal topic) partition is assigned to this worker."""
        return self.internal_topic in {tp.topic for tp in self.app.consumer.assignment()}

    def partitions_revoked(self, revoked: Iterable[Any]) -> None:
        """A rebalance took partitions away: if the fusion partition is among them, forget the
        state held in memory so that this worker never checkpoints it over the new owner's."""
        if any(tp.topic == self.internal_topic for tp in revoked):
            self.drop_fusion_state("fusion partition revoked")

    def drop_fusion_state(self, why: str) -> None:
        """Forget the in-memory state and the estimates not yet checkpointed.

        The next owner restores the last checkpoint and is handed those estimates again; if
        the partition comes back here, the state is read from the table anew (it may have
        moved on meanwhile) instead of resuming from this worker's stale copy.
        """
        self._generation += 1  # a changelog read begun before this must not be installed
        if self._state is None and not self._unacked:
            return
        log.info(
            "fusion state dropped",
            extra={"flow": self.flow, "reason": why, "not_checkpointed": len(self._unacked)},
        )
        self._state, self._written, self._dirty = None, {}, False
        self._unacked = []
        self._signature = None
        self.owns_fusion = False

    def _check_camera(self, estimate: Message) -> None:
        """Refuse an estimate from a camera the facility config does not list."""
        camera = getattr(estimate, "camera_id", None)
        self._refresh_facility()
        if camera not in self._camera_ids:
            raise MessageDecodeError(
                type(estimate),
                f"camera {camera!r} is not in the facility config "
                f"({self.config_path or 'as loaded'}); add it under cameras:",
            )

    def _refresh_facility(self) -> None:
        """Pick up facility edits (new cameras, calibration) without a restart."""
        if self._watch is None or not self._watch.refresh():
            return
        facility = self._watch.config
        try:
            flow_cfg = facility.flow(self.flow)
        except KeyError:
            log.error("flow removed from the facility config; keeping the last one")
            return
        self.core = FusionCore(
            FusionConfig.from_facility(facility, self.flow, flow_cfg.state_estimator)
        )
        self._camera_ids = {c.id for c in facility.cameras}

    def output_health(self) -> tuple[bool, str]:
        """Health: the facility state is published at least every few heartbeats."""
        if not self.ready:
            return False, "starting (restoring the fusion state)"
        if not self.owns_fusion:
            return True, "standby: another worker owns the fusion partition"
        age = time.monotonic() - self.last_published
        limit = 3 * self.tuning.heartbeat_s + 10
        return age < limit, f"last facility-state message {age:.0f}s ago (limit {limit:.0f}s)"

    @staticmethod
    def _recovered(app: faust.App) -> bool:
        recovery = getattr(app.tables, "recovery", None)
        return recovery is None or bool(recovery.completed.is_set())

    def _table_key(self, record: str) -> bytes:
        return f"{self.facility_id}/{record}".encode()

    async def _loaded(self, table: Any) -> FusionState:
        """The current state: kept in memory after the first read, which follows recovery.

        One read at a time (the fuse agent and the heartbeat both ask); a read begun before
        :meth:`drop_fusion_state` is thrown away and made again.
        """
        async with self._load_lock:
            while self._state is None:
                generation = self._generation
                latest = await asyncio.to_thread(self._changelog_latest)
                if generation == self._generation:
                    self._load(table, latest)
            return self._state

    def _changelog_latest(self) -> dict[bytes, bytes] | None:
        """The table as its changelog holds it at the end, or None if it cannot be read.

        Faust restores the table by reading the changelog up to ListOffsets(latest), which the
        embedded Tansu answers with the offset after the first record of the newest batch: a
        restarted worker got 1 of a checkpoint's records (measured: 'meta' only, every track
        lost, locomotives re-created under new ids). The fetches' own end is right.
        """
        try:
            return latest_per_key(
                self.settings.kafka,
                self.changelog_topic,
                0,
                timeout_s=self.service.restore_timeout_s,
            )
        except Exception as exc:  # the broker may be down: Faust's restore is the fallback
            # On the embedded broker that restore can lose records (see above): say so loudly.
            log.error(
                "changelog not read to its end; falling back to Faust's restore, which can be "
                "partial on the embedded broker",
                extra={"flow": self.flow, "error": str(exc)},
            )
            RESTORE_FALLBACKS.labels(self.flow).inc()
            return None

    def _load(self, table: Any, latest: dict[bytes, bytes] | None = None) -> FusionState:
        """Build the state from the changelog's ``latest`` values (else Faust's table), and
        make the table hold exactly them, so a later delete finds its key (Faust writes the
        tombstone only for a key it holds)."""
        data = getattr(table, "data", None)
        if latest is not None and isinstance(data, dict | MemoryStore):
            # The memory store (a dict): changed without writing the changelog. A RocksDB
            # store takes writes only inside an event: its table stays as Faust restored it
            # (a later delete of a record it lacks then writes no tombstone).
            for key in [k for k in data if k not in latest]:
                del data[key]
            for key, value in latest.items():
                data[key] = value
        source = latest if latest is not None else dict(table.items())
        prefix = f"{self.facility_id}/"
        stored = {
            k.decode()[len(prefix) :]: v
            for k, v in source.items()
            if isinstance(k, bytes) and k.decode(errors="replace").startswith(prefix)
        }
        legacy = source.get(self.facility_id.encode())
        if not stored and legacy is not None:
            # Written by a version that stored the whole state under the facility id.
            self._state = FusionState.model_validate_json(legacy)
            table.pop(self.facility_id.encode(), None)
            self._dirty = True
        else:
            self._state = records.join(stored)
            self._written = stored
        log.info(
            "fusion state restored",
            extra={
                "flow": self.flow,
                "records": len(stored),
                "locomotives": len(self._state.locomotives),
                "source": "changelog" if latest is not None else "faust table",
            },
        )
        return self._state

    async def checkpoint(self, table: Any) -> int:
        """Write the records that changed, then acknowledge the estimates they cover.

        Returns how many records were written.
        """
        written = 0
        if self._state is None:
            # Not loaded yet (the first read of the changelog is under way): the estimates
            # waiting are not fused, so they must not be acknowledged.
            return 0
        if self._dirty:
            parts = records.split(self._state)
            for key, value in records.diff(self._written, parts).items():
                if value is None:
                    table.pop(self._table_key(key), None)
                else:
                    table[self._table_key(key)] = value
                    CHECKPOINT_BYTES.labels(self.flow).inc(len(value))
                written += 1
            self._written, self._dirty = parts, False
            CHECKPOINT_RECORDS.labels(self.flow).inc(written)
        unacked, self._unacked = self._unacked, []
        for stream, event in unacked:
            await stream.ack(event)
        return written

    async def _publish(self, output: Any, state: FacilityState, reason: str) -> None:
        await output.send(
            key=state.kafka_key(),
            value=encode(state),
            headers=[("reason", reason.encode())],
        )
        UPDATES.labels(self.flow, reason).inc()
        self.last_published = time.monotonic()
        for track in state.tracks:
            LOCOMOTIVES.labels(self.flow, track.track_id).set(len(track.locomotives))
