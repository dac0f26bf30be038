"""Soak: the whole pipeline for N minutes; memory, lag, drops and state age sampled throughout.

Runs ``depotwatch up --flow prod`` as ``bench faults`` does (simulated cameras, embedded broker
and S3 on free ports, a temporary data directory) and samples every ``--every-s``:

- RSS of every supervised process and of the embedded broker and S3 (``/proc/<pid>/status``);
- consumer-group lag (high watermark - committed offset) per group;
- the supervisor's drop counters;
- the facility state's age (wall clock - its newest frame).

At the end it prints, per process, RSS after warm-up and at the end (growth %), the largest lag
per group and the largest state age, each against the goal: RSS growth < 10% after warm-up,
lag bounded (not growing over the second half), state age never above 10 s.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import click

from services.benchmarks.faults import Pipeline, StateWatch, finish, wait_until
from services.infra.log_cleaner import broker_store, partition_batches
from services.runtime.consumer_lag import ConsumerLagMonitor
from services.runtime.storage import StorageError

RSS_GROWTH_GOAL = 0.10
STATE_AGE_GOAL_S = 10.0


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Samples:
    """Everything sampled during a soak."""

    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    lag: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    state_age: list[tuple[float, float]] = field(default_factory=list)
    drops: dict[str, float] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    batches: list[tuple[float, str, int]] = field(default_factory=list)
    """(at, topic, batch objects) of the broker's largest partition (its reads slow with it)."""


def sample(
    pipe: Pipeline, watch: StateWatch, lag_rows: list[tuple[str, int]], at: float, out: Samples
) -> None:
    """One round of samples at ``at`` seconds into the soak."""
    for svc in pipe.services():
        if svc.get("pid"):
            size = rss_bytes(int(svc["pid"]))
            if size is not None:
                out.rss.setdefault(svc["name"], []).append((at, size))
        if svc.get("drops") is not None:
            out.drops[svc["name"]] = float(svc["drops"])
        out.restarts[svc["name"]] = int(svc.get("restarts", 0))
    for c in pipe.infra.status().components:
        if c.pid is not None and c.running:
            size = rss_bytes(c.pid)
            if size is not None:
                out.rss.setdefault(c.label, []).append((at, size))
    for group, lag in lag_rows:
        out.lag.setdefault(group, []).append((at, lag))
    if watch.data_at:
        out.state_age.append((at, (datetime.now(UTC) - watch.data_at[-1][1]).total_seconds()))


def largest_partition(pipe: Pipeline, at: float, out: Samples) -> tuple[str, int]:
    """The broker's largest partition now (topic, batch objects); ("?", -1) if unreadable."""
    try:
        sizes = partition_batches(broker_store(pipe.infra.client_settings))
    except StorageError:
        return "?", -1
    if not sizes:
        return "-", 0
    (topic, _), count = max(sizes.items(), key=lambda kv: kv[1])
    out.batches.append((at, topic, count))
    return topic, count


def report(s: Samples, warmup_s: float) -> list[str]:
    """The figures against their goals, one line each."""
    lines = [f"{'process':<28} {'RSS after warm-up':>18} {'RSS at end':>11} {'growth':>8}"]
    misses = []
    for name, points in sorted(s.rss.items()):
        after = [size for at, size in points if at >= warmup_s]
        if len(after) < 2:
            continue
        growth = after[-1] / after[0] - 1
        flag = "" if growth < RSS_GROWTH_GOAL else "  MISS"
        if flag:
            misses.append(f"RSS of {name} grew {growth:.0%}")
        lines.append(
            f"{name:<28} {after[0] / 1e6:>15.0f} MB {after[-1] / 1e6:>8.0f} MB {growth:>7.1%}{flag}"
        )
    lines.append(f"\n{'consumer group':<44} {'max lag':>8} {'end lag':>8}")
    for group, points in sorted(s.lag.items()):
        lags = [lag for at, lag in points if at >= warmup_s]
        if lags:
            lines.append(f"{group:<44} {max(lags):>8} {lags[-1]:>8}")
    ages = [age for at, age in s.state_age if at >= warmup_s]
    if ages:
        worst = max(ages)
        flag = "" if worst <= STATE_AGE_GOAL_S else "  MISS"
        if flag:
            misses.append(f"state age reached {worst:.1f} s")
        lines.append(
            f"\nstate age after warm-up: median {sorted(ages)[len(ages) // 2]:.1f} s, "
            f"max {worst:.1f} s (goal <= {STATE_AGE_GOAL_S:.0f} s){flag}"
        )
    else:
        misses.append("no facility state after warm-up")
    if s.drops:
        lines.append(
            "drops (frames skipped to stay live): "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(s.drops.items()))
        )
    if s.batches:
        at, topic, count = max(s.batches, key=lambda b: b[2])
        lines.append(
            f"largest broker partition: {count} batches ({topic}, at {at / 60:.0f} min; "
            f"{s.batches[-1][2]} at the end)"
        )
    restarted = {k: v for k, v in s.restarts.items() if v}
    lines.append(f"restarts: {restarted or 'none'}")
    lines.append("goals met" if not misses else "MISSED: " + "; ".join(misses))
    return lines


@click.command("soak")
@click.option("--minutes", type=float, default=60.0, show_default=True, help="Soak length.")
@click.option(
    "--cameras",
    type=int,
    default=8,
    show_default=True,
    help="Simulated cameras enabled (the first N of facility.yaml).",
)
@click.option(
    "--warmup-min",
    type=float,
    default=5.0,
    show_default=True,
    help="Minutes excluded from the growth and age figures.",
)
@click.option("--every-s", type=float, default=30.0, show_default=True, help="Sampling period.")
@click.option("--flow", default="prod", show_default=True)
def bench_command(
    minutes: float, cameras: int, warmup_min: float, every_s: float, flow: str
) -> None:
    """Run the pipeline for N minutes; RSS growth, lag, drops and state age."""

    work = Path(tempfile.mkdtemp(prefix="depotwatch-bench-soak-"))
    click.echo(f"starting `depotwatch up --flow {flow}` with {cameras} cameras in {work} ...")
    pipe = Pipeline(work, cameras, flow)
    watch: StateWatch | None = None
    lag: ConsumerLagMonitor | None = None
    samples = Samples()
    ok = False
    try:
        if wait_until(lambda: pipe.infra.status().healthy, 120) is None:
            raise click.ClickException(f"the embedded infra did not start; see {pipe.log}")
        watch = StateWatch(pipe.bootstrap, flow)
        lag = ConsumerLagMonitor(
            pipe.infra.client_settings.kafka, interval_s=every_s / 2, group_pattern="^depotwatch"
        ).start()
        started = time.monotonic()
        end = started + minutes * 60
        next_print = started
        while time.monotonic() < end:
            at = time.monotonic() - started
            rows = [(f"{r.group} {r.topic}", r.lag) for r in lag.collector.rows]
            sample(pipe, watch, rows, at, samples)
            if time.monotonic() >= next_print:
                age = samples.state_age[-1][1] if samples.state_age else float("nan")
                total = sum(size for pts in samples.rss.values() for _, size in pts[-1:])
                topic, count = largest_partition(pipe, at, samples)
                click.echo(
                    f"{at / 60:5.1f} min: RSS total {total / 1e6:.0f} MB, state age {age:.1f} s, "
                    f"largest broker partition {count} batches ({topic})"
                )
                next_print += 300
            time.sleep(every_s)
        ok = True
    finally:
        if lag is not None:
            lag.stop()
        if watch is not None:
            watch.close()
        pipe.stop()
        finish(work, ok, click.echo)
    click.echo("")
    for line in report(samples, warmup_min * 60):
        click.echo(line)
