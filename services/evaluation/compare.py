"""Agreement between two flows' facility states, or between a flow and simulator ground truth.

Pure part (no Kafka): :func:`compare_states` / :func:`compare_to_truth` score one snapshot,
:class:`AgreementSummary` aggregates many. Adapters, on ``services.runtime.topic_reader``:
:func:`read_range` decodes a topic over a time window; :func:`run_live` follows two topics and
keeps Prometheus gauges current; :func:`compare_command` is ``depotwatch compare A B``.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from prometheus_client import Gauge

from schemas.base import Message, MessageDecodeError, decode
from schemas.facility import ConfigError, load_facility
from schemas.facility_state import FacilityState
from schemas.ground_truth import GroundTruth
from services.runtime import topic_reader
from services.runtime.logs import configure_logging
from services.runtime.matching import SAME_LOCOMOTIVE_M, match_locomotives
from services.runtime.observability import Health, ObservabilityServer
from services.runtime.settings import KafkaSettings, load_settings
from services.runtime.shutdown import ShutdownSignal
from services.runtime.stats import percentile

log = logging.getLogger(__name__)

GATE_TOLERANCE_M = 0.3
"""A locomotive with at most this much of its body inside the depot (passing a gate, or
standing in it) may be counted in or out: it is the end-position goal (median 0.3 m), and no
camera-based count resolves a body 0.1 m past the gate line. Applied to both sides, and only
where track lengths are known (scoring against ground truth)."""

GROUND_TRUTH = "ground-truth"
"""The pseudo-flow name that means "the simulator's ground-truth.v1"."""


# --------------------------------------------------------------------------- pure scoring


@dataclass(frozen=True)
class Placed:
    """A locomotive reduced to what is compared."""

    track_id: str
    head_m: float
    tail_m: float
    plate: str | None
    model: str | None
    head_inside: bool = True
    tail_inside: bool = True
    """False for a true end beyond the track's end (outside the depot, unobservable)."""
    legible: bool = False
    """Truth only: some camera has read this plate correctly so far."""
    inside_m: float | None = None
    """How much of the body stands inside the depot (None: track length unknown)."""

    @property
    def borderline(self) -> bool:
        """At most ``GATE_TOLERANCE_M`` inside the depot: it may be counted either way."""
        return self.inside_m is not None and self.inside_m <= GATE_TOLERANCE_M

    @property
    def centre(self) -> float:
        """Midpoint along the track."""
        return (self.head_m + self.tail_m) / 2


@dataclass(frozen=True)
class SnapshotComparison:
    """How one snapshot of B agrees with one of A (A is the reference: prod or ground truth)."""

    counts: dict[str, tuple[int, int]]
    """track_id -> (count in A, count in B)."""
    end_errors_m: list[float]
    """|head_a - head_b| and |tail_a - tail_b| of every matched locomotive."""
    identity_matches: int
    identity_total: int
    """Matched locomotives whose plate agrees / matched locomotives A knows the plate of."""
    identity_unknown: int = 0
    """Of ``identity_total``: B shows no plate."""
    identity_wrong: int = 0
    """Of ``identity_total``: B shows a different plate."""
    legible_total: int = 0
    legible_identified: int = 0
    """Matched locomotives whose plate was legible so far / of those, B shows the right plate."""
    borderline: dict[str, tuple[int, int]] = field(default_factory=dict)
    """track_id -> (of A's count, of B's count) the locomotives at most ``GATE_TOLERANCE_M``
    inside the depot, which may be counted either way."""

    def track_agrees(self, track_id: str) -> bool:
        """The track holds the same number of locomotives in A and B, give or take the
        borderline ones (see ``GATE_TOLERANCE_M``)."""
        a, b = self.counts.get(track_id, (0, 0))
        loose_a, loose_b = self.borderline.get(track_id, (0, 0))
        return _counts_agree(a, b, loose_a, loose_b)

    @property
    def counts_agree(self) -> bool:
        """Every track holds the same number of locomotives in A and B (see track_agrees)."""
        return all(self.track_agrees(t) for t in self.counts)


def _counts_agree(a: int, b: int, loose_a: int, loose_b: int) -> bool:
    """Counts ``a`` and ``b`` agree when each side may leave out its borderline ones."""
    return a - loose_a <= b and b - loose_b <= a


def placed_counts_agree(a: Sequence[Placed], b: Sequence[Placed]) -> bool:
    """Two sides' locomotives of one track are as many, give or take the borderline ones."""
    return _counts_agree(len(a), len(b), sum(p.borderline for p in a), sum(p.borderline for p in b))


def placed_from_state(state: FacilityState) -> list[Placed]:
    """The locomotives of a facility state."""
    return [
        Placed(t.track_id, loco.head_m, loco.tail_m, loco.plate, loco.model)
        for t in state.tracks
        for loco in t.locomotives
    ]


def _inside_m(head_m: float, tail_m: float, length: float | None) -> float | None:
    if length is None:
        return None
    return max(0.0, min(length, max(head_m, tail_m)) - max(0.0, min(head_m, tail_m)))


def with_inside(placed: Sequence[Placed], track_lengths: Mapping[str, float]) -> list[Placed]:
    """``placed`` with how much of each body stands inside the depot filled in."""
    return [
        replace(p, inside_m=_inside_m(p.head_m, p.tail_m, track_lengths.get(p.track_id)))
        for p in placed
    ]


def placed_from_truth(
    truth: GroundTruth,
    track_lengths: Mapping[str, float] | None = None,
    observable: AbstractSet[str] | None = None,
    legible: AbstractSet[str] = frozenset(),
) -> list[Placed]:
    """The locomotives the simulator placed.

    With ``track_lengths``, ends beyond the track's end (outside the depot) are left out of
    the position error, and a locomotive whose cab (and so its plate) stands outside has no
    plate to be read: it is left out of the identity score, not counted as wrong. With
    ``observable``, only those locomotives are kept (no camera has seen the others yet);
    ``legible`` marks those whose plate some camera has read correctly so far.
    """
    out = []
    for x in truth.locomotives:
        if observable is not None and x.locomotive_id not in observable:
            continue
        length = (track_lengths or {}).get(x.track_id)
        head_in = length is None or 0.0 <= x.head_m <= length
        tail_in = length is None or 0.0 <= x.tail_m <= length
        plate = x.plate if head_in else None
        seen_plate = x.locomotive_id in legible
        inside = _inside_m(x.head_m, x.tail_m, length)
        out.append(
            Placed(
                x.track_id, x.head_m, x.tail_m, plate, x.model, head_in, tail_in, seen_plate, inside
            )
        )
    return out


def compare_placed(
    a: Sequence[Placed],
    b: Sequence[Placed],
    tracks: Sequence[str],
    match_m: float = SAME_LOCOMOTIVE_M,
) -> SnapshotComparison:
    """Pair B's locomotives with A's (the one matcher, `services.runtime.matching`) and score."""
    counts = {t: (0, 0) for t in tracks}
    borderline: dict[str, tuple[int, int]] = {}
    errors: list[float] = []
    id_ok = id_total = id_unknown = id_wrong = legible_total = legible_ok = 0
    for track in sorted(set(tracks) | {p.track_id for p in (*a, *b)}):
        in_a = [p for p in a if p.track_id == track]
        in_b = [p for p in b if p.track_id == track]
        counts[track] = (len(in_a), len(in_b))
        borderline[track] = (sum(p.borderline for p in in_a), sum(p.borderline for p in in_b))
        matched = match_locomotives(
            [(p.track_id, p.head_m, p.tail_m) for p in in_a],
            [(p.track_id, p.head_m, p.tail_m) for p in in_b],
            match_m,
        )
        for i, j in matched.pairs:
            pa, pb = in_a[i], in_b[j]
            if pa.head_inside:
                errors.append(abs(pa.head_m - pb.head_m))
            if pa.tail_inside:
                errors.append(abs(pa.tail_m - pb.tail_m))
            if pa.plate is not None:
                id_total += 1
                id_ok += int(pa.plate == pb.plate)
                id_unknown += int(pb.plate is None)
                id_wrong += int(pb.plate is not None and pb.plate != pa.plate)
                if pa.legible:
                    legible_total += 1
                    legible_ok += int(pa.plate == pb.plate)
    return SnapshotComparison(
        counts, errors, id_ok, id_total, id_unknown, id_wrong, legible_total, legible_ok, borderline
    )


def compare_states(a: FacilityState, b: FacilityState) -> SnapshotComparison:
    """Agreement of flow B's state with flow A's."""
    tracks = [t.track_id for t in a.tracks]
    return compare_placed(placed_from_state(a), placed_from_state(b), tracks)


def compare_to_truth(
    truth: GroundTruth,
    state: FacilityState,
    track_lengths: Mapping[str, float] | None = None,
    observable: AbstractSet[str] | None = None,
    legible: AbstractSet[str] = frozenset(),
) -> SnapshotComparison:
    """Accuracy of a flow's state against the simulator's ground truth (see placed_from_truth)."""
    tracks = [t.track_id for t in state.tracks]
    truth_placed = placed_from_truth(truth, track_lengths, observable, legible)
    got = placed_from_state(state)
    if track_lengths is not None:
        got = with_inside(got, track_lengths)
    return compare_placed(truth_placed, got, tracks)


@dataclass
class AgreementSummary:
    """Many snapshot comparisons aggregated."""

    snapshots: int = 0
    counts_agree: int = 0
    track_counts_agree: dict[str, int] = field(default_factory=dict)
    end_errors_m: list[float] = field(default_factory=list)
    identity_matches: int = 0
    identity_total: int = 0
    identity_unknown: int = 0
    identity_wrong: int = 0
    legible_total: int = 0
    legible_identified: int = 0

    def add(self, c: SnapshotComparison) -> None:
        """Fold one snapshot in."""
        self.snapshots += 1
        self.counts_agree += int(c.counts_agree)
        for track in c.counts:
            agrees = int(c.track_agrees(track))
            self.track_counts_agree[track] = self.track_counts_agree.get(track, 0) + agrees
        self.end_errors_m += c.end_errors_m
        self.identity_matches += c.identity_matches
        self.identity_total += c.identity_total
        self.identity_unknown += c.identity_unknown
        self.identity_wrong += c.identity_wrong
        self.legible_total += c.legible_total
        self.legible_identified += c.legible_identified

    @property
    def count_rate(self) -> float | None:
        """Fraction of snapshots in which every track's count agrees."""
        return self.counts_agree / self.snapshots if self.snapshots else None

    @property
    def identity_rate(self) -> float | None:
        """Fraction of matched locomotives whose plate agrees."""
        return self.identity_matches / self.identity_total if self.identity_total else None

    @property
    def unknown_rate(self) -> float | None:
        """Fraction of matched locomotives whose plate the state does not show."""
        return self.identity_unknown / self.identity_total if self.identity_total else None

    @property
    def wrong_rate(self) -> float | None:
        """Fraction of matched locomotives shown with another locomotive's plate."""
        return self.identity_wrong / self.identity_total if self.identity_total else None

    @property
    def identified_when_legible(self) -> float | None:
        """Fraction of matched locomotives with a legible-so-far plate that show it right."""
        return self.legible_identified / self.legible_total if self.legible_total else None

    @property
    def median_error_m(self) -> float | None:
        """Median head/tail position difference."""
        return statistics.median(self.end_errors_m) if self.end_errors_m else None

    @property
    def p95_error_m(self) -> float | None:
        """95th percentile head/tail position difference."""
        return percentile(self.end_errors_m, 0.95)

    def lines(self) -> list[str]:
        """A human-readable report."""

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        def metres(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.2f} m"

        per_track = ", ".join(
            f"{t} {pct(n / self.snapshots if self.snapshots else None)}"
            for t, n in sorted(self.track_counts_agree.items())
        )
        return [
            f"snapshots compared:          {self.snapshots}",
            f"count per track agrees:      {pct(self.count_rate)} ({per_track})",
            f"head/tail difference median: {metres(self.median_error_m)}, "
            f"p95 {metres(self.p95_error_m)} ({len(self.end_errors_m)} ends)",
            f"identity agrees:             {pct(self.identity_rate)} "
            f"({self.identity_matches}/{self.identity_total}; unknown {pct(self.unknown_rate)}, "
            f"wrong {pct(self.wrong_rate)})",
        ]

    def figures(self) -> dict[str, Any]:
        """The figures of :meth:`lines` as plain values (a job's summary, JSON)."""

        def rounded(x: float | None, digits: int = 4) -> float | None:
            return None if x is None else round(x, digits)

        return {
            "snapshots": self.snapshots,
            "count_rate": rounded(self.count_rate),
            "track_count_rate": {
                t: rounded(n / self.snapshots if self.snapshots else None)
                for t, n in sorted(self.track_counts_agree.items())
            },
            "median_error_m": rounded(self.median_error_m, 3),
            "p95_error_m": rounded(self.p95_error_m, 3),
            "ends": len(self.end_errors_m),
            "identity_rate": rounded(self.identity_rate),
            "identity_unknown_rate": rounded(self.unknown_rate),
            "identity_wrong_rate": rounded(self.wrong_rate),
            "identified_when_legible": rounded(self.identified_when_legible),
        }


# --------------------------------------------------------------------------- pairing in time


S = TypeVar("S")


def pair_in_time(
    reference: Sequence[tuple[datetime, S]],
    candidates: Sequence[FacilityState],
    max_skew_s: float,
) -> Iterator[tuple[S, FacilityState]]:
    """For each candidate state, the latest reference item at or before its ``as_of``.

    Items further than ``max_skew_s`` before it are too old to compare and are skipped.
    """
    ref = sorted(reference, key=lambda r: r[0])
    i = -1
    for state in sorted(candidates, key=lambda s: s.as_of):
        while i + 1 < len(ref) and ref[i + 1][0] <= state.as_of:
            i += 1
        if i < 0:
            continue
        at, item = ref[i]
        if (state.as_of - at).total_seconds() <= max_skew_s:
            yield item, state


def summarise(
    reference: Sequence[FacilityState] | Sequence[GroundTruth],
    states: Sequence[FacilityState],
    max_skew_s: float = 2.0,
    warmup_s: float = 0.0,
    track_lengths: Mapping[str, float] | None = None,
    observability: Mapping[int, tuple[AbstractSet[str], AbstractSet[str]]] | None = None,
) -> AgreementSummary:
    """Compare every state of B with the reference (flow A's states or ground truth).

    ``track_lengths`` (ground truth only) leaves plates outside the depot out of the
    identity score. ``observability`` (ground truth only) maps a truth tick to (observable so
    far, plate legible so far): unobservable locomotives are left out of the comparison.
    """
    summary = AgreementSummary()
    refs: list[tuple[datetime, Any]] = [
        (r.at if isinstance(r, GroundTruth) else r.as_of, r) for r in reference
    ]
    if not refs:
        return summary
    start = min(at for at, _ in refs) + timedelta(seconds=warmup_s)
    for ref, state in pair_in_time(refs, [s for s in states if s.as_of >= start], max_skew_s):
        if isinstance(ref, GroundTruth):
            seen, legible = (
                observability[ref.tick] if observability is not None else (None, frozenset())
            )
            summary.add(compare_to_truth(ref, state, track_lengths, seen, legible))
        else:
            summary.add(compare_states(ref, state))
    return summary


# --------------------------------------------------------------------------- Kafka adapters

M = TypeVar("M", bound=Message)


def read_range(
    kafka: KafkaSettings,
    topic: str,
    model: type[M],
    start: datetime,
    end: datetime,
    timeout_s: float = 30.0,
) -> list[M]:
    """Messages of ``topic`` in [start, end] by broker timestamp (undecodable ones skipped)."""
    try:
        return topic_reader.read_messages(kafka, topic, model, start, end, timeout_s)
    except topic_reader.TopicMissingError as exc:
        raise click.ClickException(
            f"{exc}; is the flow running (depotwatch run --flow ...)?"
        ) from None


COUNT_AGREEMENT = Gauge(
    "depotwatch_compare_count_agreement",
    "1 when both sides have the same locomotive count on the track, else 0",
    ["a", "b", "track"],
)
POSITION_DIFF = Gauge(
    "depotwatch_compare_position_difference_m",
    "Median head/tail position difference of matched locomotives, latest snapshot",
    ["a", "b"],
)
IDENTITY_AGREEMENT = Gauge(
    "depotwatch_compare_identity_agreement",
    "Fraction of matched locomotives whose plate agrees, latest snapshot",
    ["a", "b"],
)
SNAPSHOTS = Gauge("depotwatch_compare_snapshots", "Snapshots compared since start", ["a", "b"])
COUNT_RATE = Gauge(
    "depotwatch_compare_count_agreement_rate",
    "Fraction of snapshots with all track counts in agreement, since start",
    ["a", "b"],
)


def export_metrics(a: str, b: str, latest: SnapshotComparison, total: AgreementSummary) -> None:
    """Set the Prometheus gauges from the latest comparison and the running summary."""
    for track in latest.counts:
        COUNT_AGREEMENT.labels(a, b, track).set(int(latest.track_agrees(track)))
    if latest.end_errors_m:
        POSITION_DIFF.labels(a, b).set(statistics.median(latest.end_errors_m))
    if latest.identity_total:
        IDENTITY_AGREEMENT.labels(a, b).set(latest.identity_matches / latest.identity_total)
    SNAPSHOTS.labels(a, b).set(total.snapshots)
    if total.count_rate is not None:
        COUNT_RATE.labels(a, b).set(total.count_rate)


def run_live(
    kafka: KafkaSettings,
    a: str,
    b: str,
    on_snapshot: Callable[[SnapshotComparison, AgreementSummary], None],
    stop: Callable[[], bool],
    max_skew_s: float = 2.0,
) -> AgreementSummary:
    """Follow both topics from now on; compare each new B state with A's latest."""
    topic_a = topic_for(a)
    topic_b = topic_for(b)
    summary = AgreementSummary()
    history_a: list[tuple[datetime, Any]] = []
    records = topic_reader.tail(kafka, [topic_a, topic_b], stop, purpose=f"compare-{a}-{b}")
    with contextlib.closing(records):
        for record in records:
            try:
                if record.topic == topic_a:
                    ref: GroundTruth | FacilityState = (
                        decode(GroundTruth, record.value)
                        if a == GROUND_TRUTH
                        else decode(FacilityState, record.value)
                    )
                    at = ref.at if isinstance(ref, GroundTruth) else ref.as_of
                    history_a = [*history_a[-200:], (at, ref)]
                    continue
                state = decode(FacilityState, record.value)
            except MessageDecodeError as exc:
                log.warning("skipping undecodable message", extra={"reason": exc.reason})
                continue
            for ref, st in pair_in_time(history_a, [state], max_skew_s):
                one = (
                    compare_to_truth(ref, st)
                    if isinstance(ref, GroundTruth)
                    else compare_states(ref, st)
                )
                summary.add(one)
                export_metrics(a, b, one, summary)
                on_snapshot(one, summary)
    return summary


def topic_for(side: str) -> str:
    """The topic of a flow name, or ground-truth.v1."""
    if side == GROUND_TRUTH:
        return GroundTruth.topic_name()
    return FacilityState.topic_name(side)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO-8601 with offset (``2026-11-21T12:00:00Z``), ``now``, or relative ``-15m``/``-2h``."""
    now = now or datetime.now(UTC)
    t = text.strip()
    if t == "now":
        return now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if t.startswith("-") and t[-1:] in units and t[1:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(t[1:-1]) * units[t[-1]])
    try:
        parsed = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a time; use ISO-8601 like 2026-11-21T12:00:00Z, 'now' or '-15m'"
        ) from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no time zone; add Z or +00:00")
    return parsed.astimezone(UTC)


# --------------------------------------------------------------------------- command


@click.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--from", "start", default=None, help="Start of a time range (ISO-8601, -15m).")
@click.option("--to", "end", default=None, help="End of the time range (default: now).")
@click.option("--duration", type=float, default=None, help="Live: stop after this many seconds.")
@click.option("--warmup", type=float, default=0.0, show_default=True, help="Skip first seconds.")
@click.option("--max-skew", type=float, default=2.0, show_default=True, help="Pairing window, s.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
def compare_command(
    a: str,
    b: str,
    start: str | None,
    end: str | None,
    duration: float | None,
    warmup: float,
    max_skew: float,
    config_path: Path | None,
) -> None:
    """Agreement of flow B's facility state with A's (a flow, or `ground-truth`).

    `depotwatch compare prod dev` follows both live and serves Prometheus gauges on
    DEPOTWATCH_HTTP_PORT; with --from/--to it scores a past time range and exits.
    `depotwatch compare ground-truth prod` (or `prod ground-truth`) scores prod's accuracy.
    """

    settings = load_settings()
    configure_logging("compare", settings.log_level, settings.log_format)
    if b == GROUND_TRUTH:  # the reference always goes first
        a, b = b, a
    try:
        facility = load_facility(config_path or settings.facility_config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for side in (a, b):
        if side != GROUND_TRUTH and side not in facility.flows:
            raise click.ClickException(
                f"unknown flow {side!r}; use one of {sorted(facility.flows)} or {GROUND_TRUTH}"
            )
    if b == GROUND_TRUTH:
        raise click.ClickException("compare a flow with ground-truth, not ground-truth with itself")

    if start is not None:
        t0 = parse_time(start)
        t1 = parse_time(end) if end else datetime.now(UTC)
        if t1 <= t0:
            raise click.BadParameter("--to must be after --from")
        ref_model: type[Message] = GroundTruth if a == GROUND_TRUTH else FacilityState
        refs: Any = read_range(settings.kafka, topic_for(a), ref_model, t0, t1)
        states = read_range(settings.kafka, topic_for(b), FacilityState, t0, t1)
        summary = summarise(refs, states, max_skew, warmup)
        click.echo(f"{b} against {a}, {t0.isoformat()} .. {t1.isoformat()}")
        for line in summary.lines():
            click.echo(line)
        return

    shutdown = ShutdownSignal().install()
    server = ObservabilityServer(Health(), settings.http_host, settings.http_port).start()
    click.echo(f"comparing {b} against {a} live; metrics on {server.url}/metrics (Ctrl-C stops)")
    deadline = time.monotonic() + duration if duration else None
    last_print = [0.0]

    def show(one: SnapshotComparison, total: AgreementSummary) -> None:
        if time.monotonic() - last_print[0] >= 5.0:
            last_print[0] = time.monotonic()
            counts = " ".join(f"{t}:{x}/{y}" for t, (x, y) in sorted(one.counts.items()))
            click.echo(f"{datetime.now(UTC):%H:%M:%S} counts {counts} | " + total.lines()[2])

    try:
        summary = run_live(
            settings.kafka,
            a,
            b,
            show,
            lambda: shutdown.requested or (deadline is not None and time.monotonic() > deadline),
            max_skew,
        )
    finally:
        server.stop()
    for line in summary.lines():
        click.echo(line)
