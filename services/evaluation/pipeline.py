"""End-to-end figures of a running pipeline (issue 6, item 5): accuracy and latency.

Reads a flow's ``facility-state.<flow>.v1`` and the simulator's ``ground-truth.v1`` (live for a
duration, or over a past time range) and prints, against the project's goals:

* locomotive count per track correct in >= 99% of state snapshots after warm-up,
* head/tail position error median <= 0.5 m and p95 <= 2 m,
* identity (plate) correct >= 97% of matched locomotives,
* latency frame capture -> facility-state update, p50 and p95 (goal p95 <= 1 s).

Latency is measured on "change" updates: broker timestamp of the facility-state record minus
its ``as_of`` (the capture time of the newest frame folded in). Where the time goes comes from
the stage times each change carries (``FacilityState.latency``): p50 / p95 of each stage
(ingest, estimate, deliver, fuse, publish; see ``UpdateTimes.stages``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.base import MessageDecodeError, decode
from schemas.facility_state import FacilityState
from schemas.ground_truth import GroundTruth
from services.evaluation.compare import AgreementSummary, summarise
from services.runtime.settings import KafkaSettings
from services.runtime.stats import percentile
from services.runtime.topic_reader import Stamped, read_range, tail

GOALS = {
    "count": 0.99,
    "median_m": 0.5,
    "p95_m": 2.0,
    "identity": 0.97,
    "latency_p95_s": 1.0,
}


@dataclass(frozen=True)
class PipelineFigures:
    """Accuracy against ground truth and capture-to-state latency."""

    accuracy: AgreementSummary
    latencies_s: list[float]
    states: int
    truths: int
    stages_s: Mapping[str, list[float]] = field(default_factory=dict)
    """Seconds per stage of each change that carried its stage times."""

    @property
    def latency_p50_s(self) -> float | None:
        """Median capture-to-update latency."""
        return percentile(self.latencies_s, 0.5)

    @property
    def latency_p95_s(self) -> float | None:
        """95th percentile capture-to-update latency."""
        return percentile(self.latencies_s, 0.95)

    def lines(self) -> list[str]:
        """The report, each figure with its goal and PASS/FAIL."""

        def verdict(ok: bool | None) -> str:
            return "n/a " if ok is None else ("PASS" if ok else "FAIL")

        a = self.accuracy
        count, ident = a.count_rate, a.identity_rate
        med, p95 = a.median_error_m, a.p95_error_m
        lp50, lp95 = self.latency_p50_s, self.latency_p95_s

        def fmt(x: float | None, unit: str, scale: float = 1.0) -> str:
            return "n/a" if x is None else f"{x * scale:.{1 if unit == '%' else 2}f}{unit}"

        return [
            f"states: {self.states}, ground-truth ticks: {self.truths}, "
            f"snapshots compared: {a.snapshots}",
            f"[{verdict(None if count is None else count >= GOALS['count'])}] "
            f"count per track correct: {fmt(count, '%', 100)} (goal >= 99%)",
            f"[{verdict(None if med is None else med <= GOALS['median_m'])}] "
            f"head/tail error median: {fmt(med, ' m')} (goal <= 0.5 m)",
            f"[{verdict(None if p95 is None else p95 <= GOALS['p95_m'])}] "
            f"head/tail error p95: {fmt(p95, ' m')} (goal <= 2 m)",
            f"[{verdict(None if ident is None else ident >= GOALS['identity'])}] "
            f"identity correct: {fmt(ident, '%', 100)} (goal >= 97%)",
            f"[{verdict(None if lp95 is None else lp95 <= GOALS['latency_p95_s'])}] "
            f"capture -> state latency p50 {fmt(lp50, ' s')}, p95 {fmt(lp95, ' s')} "
            f"(goal p95 <= 1 s, {len(self.latencies_s)} updates)",
            *self.stage_lines(),
        ]

    def stage_lines(self) -> list[str]:
        """Where the time goes: p50 / p95 seconds of each stage, in pipeline order."""
        if not self.stages_s:
            return ["where the time goes: n/a (no change carried its stage times)"]
        parts = [
            f"{name} {percentile(v, 0.5) or 0:.2f} / {percentile(v, 0.95) or 0:.2f}"
            for name, v in self.stages_s.items()
        ]
        n = max(len(v) for v in self.stages_s.values())
        return [f"where the time goes, p50 / p95 s ({n} changes): " + ", ".join(parts)]


def pipeline_figures(
    states: Sequence[Stamped],
    truths: Sequence[Stamped],
    warmup_s: float = 30.0,
    max_skew_s: float = 2.0,
    track_lengths: Mapping[str, float] | None = None,
) -> PipelineFigures:
    """Figures from raw facility-state and ground-truth records (pure)."""
    decoded: list[tuple[Stamped, FacilityState]] = []
    for record in states:
        try:
            decoded.append((record, decode(FacilityState, record.value)))
        except MessageDecodeError:
            continue
    truth: list[GroundTruth] = []
    for record in truths:
        try:
            truth.append(decode(GroundTruth, record.value))
        except MessageDecodeError:
            continue
    accuracy = summarise(truth, [s for _, s in decoded], max_skew_s, warmup_s, track_lengths)
    start = min((t.at for t in truth), default=None)
    changes = [
        (record, state)
        for record, state in decoded
        if record.headers.get("reason") == b"change"
        and (start is None or (state.as_of - start).total_seconds() >= warmup_s)
    ]
    latencies = [record.timestamp_ms / 1000 - state.as_of.timestamp() for record, state in changes]
    stages: dict[str, list[float]] = {}
    for record, state in changes:
        if state.latency is None:
            continue
        published = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
        for name, seconds in state.latency.stages(published).items():
            stages.setdefault(name, []).append(seconds)
    return PipelineFigures(accuracy, latencies, len(decoded), len(truth), stages)


def collect_live(
    kafka: KafkaSettings, topics: Sequence[str], duration_s: float
) -> dict[str, list[Stamped]]:
    """Records arriving on ``topics`` during the next ``duration_s`` seconds."""
    out: dict[str, list[Stamped]] = {t: [] for t in topics}
    deadline = time.monotonic() + duration_s
    for record in tail(kafka, topics, lambda: time.monotonic() >= deadline, purpose="eval"):
        out[record.topic].append(record)
    return out


def measure(
    kafka: KafkaSettings,
    flow: str,
    duration_s: float | None,
    start: datetime | None,
    end: datetime | None,
    warmup_s: float,
    track_lengths: Mapping[str, float] | None = None,
) -> PipelineFigures:
    """Collect (live or from a range) and compute the figures."""
    state_topic = FacilityState.topic_name(flow)
    truth_topic = GroundTruth.topic_name()
    if start is not None and end is not None:
        states = read_range(kafka, state_topic, start, end)
        truths = read_range(kafka, truth_topic, start, end)
    else:
        got = collect_live(kafka, [state_topic, truth_topic], duration_s or 300.0)
        states, truths = got[state_topic], got[truth_topic]
    return pipeline_figures(states, truths, warmup_s, track_lengths=track_lengths)
