"""The live status table of ``depotwatch up``, from each child's Prometheus /metrics (pure).

Rates are counter deltas between two scrapes. Which counter is a stage's "rate" and which its
"drops" is declared here, next to the names the services define.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# stage -> (counter whose rate is shown, counter of dropped items or None)
STAGE_COUNTERS: dict[str, tuple[str, str | None]] = {
    "capture": ("depotwatch_capture_frames_out_total", "depotwatch_capture_frames_dropped_total"),
    "aggregator": (
        "depotwatch_aggregator_frames_out_total",
        "depotwatch_aggregator_frames_dropped_total",
    ),
    "estimator": ("depotwatch_estimates_published_total", "depotwatch_frames_skipped_total"),
    "state": ("depotwatch_state_updates_total", None),
    "dashboard": ("depotwatch_dashboard_messages_total", None),
}


def counter_totals(text: str) -> dict[str, float]:
    """Sum of every counter's samples (all labels) by metric name with ``_total``."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


@dataclass(frozen=True)
class Scrape:
    """Counter totals of one process at one time."""

    at: float
    totals: Mapping[str, float]


def rate(prev: Scrape | None, cur: Scrape | None, metric: str) -> float | None:
    """Per-second increase of ``metric`` between two scrapes (None when not computable).

    A counter that went down means the process restarted: the new value is the increase.
    """
    if prev is None or cur is None or metric not in cur.totals or cur.at <= prev.at:
        return None
    before = prev.totals.get(metric, 0.0)
    after = cur.totals[metric]
    delta = after - before if after >= before else after
    return delta / (cur.at - prev.at)


@dataclass(frozen=True)
class ServiceRow:
    """One line of the status table."""

    name: str
    state: str
    restarts: int
    rate: float | None
    drops: float | None
    pid: int | None


def format_table(rows: Sequence[ServiceRow], skipped: Sequence[str], header: str) -> str:
    """The compact status table shown in the terminal."""
    width = max([len(r.name) for r in rows] + [8])
    lines = [
        header,
        f"{'service':<{width}}  {'state':<10} {'restarts':>8} {'rate/s':>8} {'drops':>7}",
    ]
    for r in rows:
        rate_s = "-" if r.rate is None else f"{r.rate:.1f}"
        drops = "-" if r.drops is None else f"{r.drops:.0f}"
        lines.append(f"{r.name:<{width}}  {r.state:<10} {r.restarts:>8} {rate_s:>8} {drops:>7}")
    if skipped:
        lines.append(f"not installed here (skipped): {', '.join(skipped)}")
    return "\n".join(lines)
