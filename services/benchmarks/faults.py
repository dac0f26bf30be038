"""Faults: the whole pipeline under ``depotwatch up``, one fault at a time, recovery measured.

Runs ``depotwatch up --flow prod`` (simulated cameras, embedded broker and S3 on free ports, in
a temporary data directory), waits until the facility state is fresh, then applies each fault
and measures:

- ``back``: seconds from the fault until the faulted process runs again (a new pid under the
  supervisor, or the embedded broker/S3 restarted by ``up``; for a stop, its resumption);
- ``fresh``: seconds from the end of the fault until a facility-state message carries a frame
  captured after it (the state consumers see has recovered);
- ``locos``: locomotives in the last state before the fault and in that first fresh state
  after it (a double count after a crash would show as more after than before);
- ``lost``, ``dup``, ``no obj``: over the frames captured from the fault until the state was
  fresh again, read back from ``frames.v1``: frames a capture numbered that never got a
  FrameRef (gaps in a camera's sequence; a capture killed numbers nothing while it is down, so
  frames it never saw are not counted), FrameRefs of a frame already referenced (at-least-once
  re-sends), and FrameRefs whose object is not in S3 (must be 0: claim-check).

The table is printed at the end. Live-mode estimators skip to each camera's newest frame by
design, so frames an estimator skipped are not losses here; at-least-once processing of every
stored frame is covered by the replay-mode service tests.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import click
import yaml
from confluent_kafka import KafkaException

from schemas.base import MessageDecodeError, decode
from schemas.facility_state import FacilityState
from schemas.frames import FrameRef
from services.benchmarks.estimator_bench import absolute_weights
from services.infra import EmbeddedInfra, settings_on_free_ports
from services.infra.embedded import COMPONENTS, PORT_FIELDS, env_var
from services.infra.processes import free_port, spawn, stop_child
from services.runtime.settings import KafkaSettings
from services.runtime.storage import ObjectStore, StorageError
from services.runtime.topic_reader import TopicMissingError, read_range, tail

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
LEDGER_SETTLE_S = 5.0
"""After recovery, refs still buffered (an S3 outage) get this long to arrive before counting."""
FRESH_S = 10.0
"""A state whose newest frame is younger than this counts as fresh."""


@dataclass(frozen=True)
class Fault:
    """One fault: what it hits and how."""

    name: str
    target: str
    """Supervised service name prefix (``state-estimator/``) or ``infra:s3`` / ``infra:kafka``."""
    how: str
    """``kill`` (SIGKILL, then the supervisor restarts it) or ``stop:<seconds>`` (SIGSTOP)."""


FAULTS: tuple[Fault, ...] = (
    Fault("kill -9 one camera's capture", "capture/", "kill"),
    Fault("kill -9 aggregator", "aggregator", "kill"),
    Fault("kill -9 position estimator", "position-estimator/", "kill"),
    Fault("kill -9 plate-ocr", "plate-ocr/", "kill"),
    Fault("kill -9 state estimator", "state-estimator/", "kill"),
    Fault("slow consumer: state estimator stopped 20 s", "state-estimator/", "stop:20"),
    Fault("kill -9 broker", "infra:kafka", "kill"),
    Fault("S3 unresponsive 30 s", "infra:s3", "stop:30"),
    Fault("kill -9 S3", "infra:s3", "kill"),
)


@dataclass
class Outcome:
    """What one fault did."""

    fault: Fault
    back_s: float | None
    fresh_s: float | None
    locos_before: int | None
    locos_after: int | None
    ledger: RefLedger | None = None

    def row(self) -> str:
        def num(x: float | None) -> str:
            return "never" if x is None else f"{x:.1f}"

        recovered = "yes" if self.fresh_s is not None and self.back_s is not None else "NO"
        counts = f"{self.locos_before} -> {self.locos_after}"
        led = self.ledger
        ledger = (
            f"{led.refs:>6} {led.lost:>6} {led.duplicates:>5} {led.missing_objects:>6}"
            if led is not None
            else f"{'-':>6} {'-':>6} {'-':>5} {'-':>6}"
        )
        return (
            f"{self.fault.name:<46} {recovered:>9} {num(self.back_s):>8} "
            f"{num(self.fresh_s):>9} {counts:>12} {ledger}"
        )


HEADER = (
    f"{'fault':<46} {'recovered':>9} {'back s':>8} {'fresh s':>9} {'locos':>12} "
    f"{'refs':>6} {'lost':>6} {'dup':>5} {'no obj':>6}"
)

RUN_JUMP = 10_000
"""A jump this large in a camera's sequence is a capture restart (numbering restarts at the
wall clock in ms, see ``SequenceNumbers``), not lost frames."""


@dataclass(frozen=True)
class RefLedger:
    """What ``frames.v1`` holds for the frames captured in a window."""

    refs: int
    lost: int
    """Sequence numbers missing inside a capture run (numbered, never referenced)."""
    duplicates: int
    """FrameRefs of a (camera, seq) referenced before."""
    missing_objects: int = 0
    """FrameRefs whose object is not in the store."""


def ref_ledger(frames: Iterable[tuple[str, int]], missing_objects: int = 0) -> RefLedger:
    """Lost and duplicated frames from the (camera, seq) of every FrameRef in a window."""
    by_camera: dict[str, list[int]] = {}
    n = 0
    for camera_id, seq in frames:
        by_camera.setdefault(camera_id, []).append(seq)
        n += 1
    lost = duplicates = 0
    for seqs in by_camera.values():
        unique = sorted(set(seqs))
        duplicates += len(seqs) - len(unique)
        lost += sum(b - a - 1 for a, b in pairwise(unique) if 1 < b - a < RUN_JUMP)
    return RefLedger(n, lost, duplicates, missing_objects)


def frames_ledger(pipe: Pipeline, since: datetime, until: datetime) -> RefLedger:
    """The ledger of frames captured in [since, until], read back from ``frames.v1`` now."""
    settings = pipe.infra.client_settings
    records = read_range(settings.kafka, FrameRef.topic_name(), since, datetime.now(UTC))
    refs = []
    for record in records:
        try:
            ref = decode(FrameRef, record.value)
        except MessageDecodeError:
            continue
        if since <= ref.captured_at <= until:
            refs.append(ref)
    store = ObjectStore(settings.s3)
    missing = sum(1 for b, k in {(r.bucket, r.key) for r in refs} if not store.exists(k, bucket=b))
    return ref_ledger(((r.camera_id, r.seq) for r in refs), missing)


class StateWatch:
    """Tails facility-state; remembers when fresh data arrived."""

    def __init__(self, bootstrap: str, flow: str) -> None:
        self._kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self._topic = FacilityState.topic_name(flow)
        self.data_at: list[tuple[float, datetime, int]] = []
        """(monotonic receive time, newest frame in the state, locomotives)."""
        self.states: deque[tuple[float, FacilityState]] = deque(maxlen=5000)
        """The latest states with their receive time (double-count checks)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:

        for record in tail(self._kafka, [self._topic], self._stop.is_set, purpose="bench-faults"):
            try:
                state = decode(FacilityState, record.value)
            except MessageDecodeError:
                continue
            self.states.append((time.monotonic(), state))
            frames = [c.last_frame_at for c in state.cameras if c.last_frame_at]
            if frames:
                self.data_at.append((time.monotonic(), max(frames), state.locomotive_count))

    def fresh_since(self, after: datetime) -> tuple[float, int] | None:
        """(receive time, locomotives) of the first state whose newest frame is after ``after``."""
        for received, data_at, locos in list(self.data_at):
            if data_at > after:
                return received, locos
        return None

    def states_since(self, since: float) -> list[FacilityState]:
        """States received at or after the monotonic time ``since``."""
        return [state for received, state in list(self.states) if received >= since]

    def is_fresh(self) -> bool:
        """The newest state carries a frame younger than :data:`FRESH_S`."""
        if not self.data_at:
            return False
        return (datetime.now(UTC) - self.data_at[-1][1]).total_seconds() < FRESH_S

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def double_counts(state: FacilityState, tolerance_m: float = 1.0) -> list[str]:
    """Locomotives that overlap another on the same track by more than ``tolerance_m``: the
    same locomotive counted twice (bodies cannot overlap)."""
    found = []
    for track in state.tracks:
        spans = sorted(
            (min(lo.head_m, lo.tail_m), max(lo.head_m, lo.tail_m), lo.locomotive_id)
            for lo in track.locomotives
        )
        for (_, hi, a), (lo2, _, b) in pairwise(spans):
            if hi - lo2 > tolerance_m:
                found.append(f"{track.track_id}: {a} and {b} overlap by {hi - lo2:.1f} m")
    return found


def finish(work: Path, ok: bool, say: Callable[[str], None]) -> None:
    """Delete a bench's working directory (broker and S3 data: hundreds of MB) after a run
    that went through; keep it, logs included, after one that failed."""
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"logs and data kept in {work}")


def wait_until(predicate: Callable[[], bool], limit_s: float, step_s: float = 0.5) -> float | None:
    """Seconds until ``predicate`` held, or None after ``limit_s``."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(step_s)
    return None


class Pipeline:
    """``depotwatch up`` in a temporary directory, and where its processes are."""

    def __init__(
        self,
        work: Path,
        cameras: int,
        flow: str,
        config: dict[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        infra: Mapping[str, Any] | None = None,
    ) -> None:
        """The shipped facility with its first ``cameras`` simulated cameras and one flow, or
        ``config`` as given (its cameras' own sources, flows and weights) with ``extra_args``
        for ``up`` (e.g. ``--no-sim``); ``infra`` sets embedded-infra settings besides the
        ports (e.g. ``broker_max_batches``)."""
        self.work, self.flow = work, flow
        self.data = work / "data"
        settings = settings_on_free_ports(self.data)
        if infra:  # validated: a misspelt or out-of-range setting fails here, not in `up`
            merged = type(settings.infra).model_validate({**settings.infra.model_dump(), **infra})
            settings = settings.model_copy(update={"infra": merged})
        self.infra = EmbeddedInfra(settings)
        if config is None:
            config = yaml.safe_load((REPO / "facility.yaml").read_text())
            config["flows"] = {flow: config["flows"][flow]}
            absolute_weights(config, REPO)
            rtsp = free_port()
            for i, cam in enumerate(config["cameras"]):
                cam["enabled"] = i < cameras
                cam["source"] = cam["source"].replace(":8554/", f":{rtsp}/")
        self.config = work / "facility.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        # The caller's endpoints and ports must not leak into the stack under test; its topic
        # layout (partitions, retention: DEPOTWATCH_TOPICS__*) is what it asks to measure.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DEPOTWATCH_") or k.startswith("DEPOTWATCH_TOPICS__")
        }
        ports = [name for component in COMPONENTS for name in PORT_FIELDS[component]]
        for name in [*ports, *(infra or {})]:
            env[env_var(name)] = str(getattr(settings.infra, name))
        env["DEPOTWATCH_HTTP_PORT"] = "0"
        self.log = work / "up.log"
        self.proc = spawn(
            [
                sys.executable,
                "-m",
                "services.cli",
                "up",
                "--flow",
                flow,
                "--config",
                str(self.config),
                "--data-dir",
                str(self.data),
                "--no-dashboard",
                "--no-live",
                *extra_args,
            ],
            self.log,
            REPO,
            env,
        )

    @property
    def bootstrap(self) -> str:
        return self.infra.client_settings.kafka.bootstrap_servers

    def services(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads((self.data / "status.json").read_text())["services"])
        except (OSError, ValueError, KeyError):
            return []

    def pid(self, target: str) -> int | None:
        if target.startswith("infra:"):
            component = target.split(":", 1)[1]
            for c in self.infra.status().components:
                if c.component == component:
                    return c.pid if c.running else None
            return None
        for svc in self.services():
            if svc["name"].startswith(target) and svc["state"] == "up":
                return int(svc["pid"])
        return None

    def stop(self) -> None:
        stop_child(self.proc, 120)


def run_fault(pipe: Pipeline, watch: StateWatch, fault: Fault, limit_s: float) -> Outcome:
    """Apply one fault and measure the recovery."""
    pid = pipe.pid(fault.target)
    before = watch.data_at[-1][2] if watch.data_at else None
    if pid is None:
        return Outcome(fault, None, None, before, None)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    fault_end = started
    if fault.how == "kill":
        os.kill(pid, signal.SIGKILL)
        ended_at = datetime.now(UTC)
        back = wait_until(lambda: (p := pipe.pid(fault.target)) is not None and p != pid, limit_s)
    else:
        seconds = float(fault.how.split(":", 1)[1])
        os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(pid, signal.SIGCONT)
        ended_at = datetime.now(UTC)
        fault_end = time.monotonic()
        back = fault_end - started
    fresh_after = ended_at + timedelta(seconds=1)
    waited = wait_until(lambda: watch.fresh_since(fresh_after) is not None, limit_s)
    got = watch.fresh_since(fresh_after)
    fresh = None
    locos = None
    if waited is not None and got is not None:
        fresh = got[0] - fault_end
        locos = got[1]
    fresh_at = datetime.now(UTC)
    time.sleep(LEDGER_SETTLE_S)
    try:
        ledger: RefLedger | None = frames_ledger(pipe, started_at, fresh_at)
    except (TopicMissingError, StorageError, KafkaException) as exc:
        log.warning("frames ledger not measured", extra={"error": str(exc)})
        ledger = None
    return Outcome(fault, back, fresh, before, locos, ledger)


@click.command("faults")
@click.option(
    "--cameras",
    type=int,
    default=4,
    show_default=True,
    help="Simulated cameras enabled (the first N of facility.yaml).",
)
@click.option("--flow", default="prod", show_default=True)
@click.option("--only", multiple=True, help="Run only faults whose name contains this text.")
@click.option(
    "--limit-s",
    type=float,
    default=180.0,
    show_default=True,
    help="Give up on a recovery after this long.",
)
@click.option(
    "--warmup-s",
    type=float,
    default=300.0,
    show_default=True,
    help="Wait at most this long for the first fresh state.",
)
def bench_command(
    cameras: int, flow: str, only: tuple[str, ...], limit_s: float, warmup_s: float
) -> None:
    """Kill or stop each part of the pipeline in turn; print recovery times."""
    faults = [f for f in FAULTS if not only or any(o in f.name for o in only)]
    work = Path(tempfile.mkdtemp(prefix="depotwatch-bench-faults-"))
    click.echo(f"starting `depotwatch up --flow {flow}` with {cameras} cameras in {work} ...")
    pipe = Pipeline(work, cameras, flow)
    watch: StateWatch | None = None
    outcomes: list[Outcome] = []
    ok = False
    try:
        if wait_until(lambda: pipe.infra.status().healthy, 120) is None:
            raise click.ClickException(f"the embedded infra did not start; see {pipe.log}")
        watch = StateWatch(pipe.bootstrap, flow)
        w = watch
        if wait_until(w.is_fresh, warmup_s) is None:
            raise click.ClickException(
                f"no fresh facility state within {warmup_s:.0f}s; see {pipe.log}"
            )
        click.echo("pipeline fresh; applying faults one at a time")
        for fault in faults:
            if wait_until(w.is_fresh, limit_s) is None:
                click.echo(f"state not fresh before {fault.name!r}; continuing anyway")
            outcome = run_fault(pipe, w, fault, limit_s)
            click.echo(outcome.row())
            outcomes.append(outcome)
        ok = all(o.fresh_s is not None and o.back_s is not None for o in outcomes)
    finally:
        if watch is not None:
            watch.close()
        pipe.stop()
        finish(work, ok, click.echo)
    click.echo(f"\n{HEADER}")
    for outcome in outcomes:
        click.echo(outcome.row())
    missed = [o.fault.name for o in outcomes if o.fresh_s is None or o.back_s is None]
    if missed:
        click.echo(f"NOT recovered within {limit_s:.0f}s: {', '.join(missed)}")
