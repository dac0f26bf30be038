"""Fusion-state storage: changelog volume per design, and how long a restart takes to restore.

Part 1 (no broker): a suite case's modelled estimates run through the fusion core; the state
is stored as the old design did (the whole state per accepted estimate) and as it is now
(changed keyed records per checkpoint). Prints records and bytes per second and per day.

Part 2 (``--restore``, embedded broker and S3 on free ports): a changelog as the current
design writes it over ``--hours`` of that case (its checkpoints repeated), and one as the old
design wrote it over ``--legacy-minutes``, are each restored by a real state-estimator worker;
the time from start to its first heartbeat is printed, next to an empty changelog's (start-up
and group join alone).

The embedded broker (Tansu) neither compacts nor deletes by retention (measured: the low
watermark of a ``compact`` topic stays 0), so a restart reads every record ever written;
Apache Kafka compacts the changelog to one record per key.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

DAY_S = 86_400.0


@dataclass(frozen=True)
class Volume:
    """Changelog writes of one design over a run."""

    design: str
    records: int
    bytes: int
    seconds: float

    def line(self) -> str:
        per_s = self.records / self.seconds
        kb_s = self.bytes / self.seconds / 1000
        return (
            f"{self.design:<34} {per_s:8.1f} rec/s {kb_s:9.1f} KB/s   per day: "
            f"{per_s * DAY_S / 1e6:6.2f} M records, {kb_s * DAY_S / 1e6:7.2f} GB"
        )


@dataclass
class Measured:
    """Both designs' changelogs of one case, as (key, value) records in write order."""

    facility_yaml: str
    facility_id: str
    legacy: list[tuple[bytes, bytes]]
    checkpoints: list[tuple[bytes, bytes | None]]
    seconds: float
    cameras: int
    estimates: int


def measure(case_name: str, checkpoint_s: float) -> Measured:
    """Run the case's estimates through the core and record what each design writes."""
    from services.evaluation.fusion_eval import DetectorModel, modelled_run
    from services.evaluation.suite import FPS, case_inputs, cases
    from services.state_estimator.fusion import FusionConfig, FusionCore, FusionState, records

    found = [c for c in cases("all") if c.name == case_name]
    if not found:
        raise click.BadParameter(
            f"no suite case {case_name!r}; `depotwatch eval suite --help` lists the sets",
            param_hint="--case",
        )
    case = found[0]
    facility, scenario = case_inputs(case)
    if case.depot_seed is None:
        facility_yaml = Path("facility.yaml").read_text()
    else:
        from services.simulator.generated_depot import generate_depot_data

        facility_yaml = yaml.safe_dump(generate_depot_data(case.depot_seed)[0])
    run = modelled_run(facility, scenario, case.seed, DetectorModel(), fps=FPS)  # type: ignore[arg-type]
    flow = facility.flows.get("prod")
    tuning = flow.state_estimator if flow is not None else None
    core = FusionCore(FusionConfig.from_facility(facility, "prod", tuning))
    fid = facility.facility_id
    state = FusionState()
    legacy: list[tuple[bytes, bytes]] = []
    checkpoints: list[tuple[bytes, bytes | None]] = []
    written: dict[str, bytes] = {}
    last = None
    for at, estimate in run.arrivals:
        state, accepted = core.apply(state, estimate)
        if not accepted:
            continue
        legacy.append((fid.encode(), state.model_dump_json().encode()))
        if last is None or (at - last).total_seconds() >= checkpoint_s:
            parts = records.split(state)
            for key, value in records.diff(written, parts).items():
                checkpoints.append((f"{fid}/{key}".encode(), value))
            written, last = parts, at
    seconds = (run.arrivals[-1][0] - run.arrivals[0][0]).total_seconds()
    return Measured(
        facility_yaml=facility_yaml,
        facility_id=fid,
        legacy=legacy,
        checkpoints=checkpoints,
        seconds=seconds,
        cameras=len(facility.cameras),
        estimates=len(run.arrivals),
    )


def volumes(m: Measured, checkpoint_s: float) -> list[Volume]:
    """Both designs' write rates."""
    return [
        Volume(
            "whole state per estimate (old)",
            len(m.legacy),
            sum(len(v) for _, v in m.legacy),
            m.seconds,
        ),
        Volume(
            f"changed records every {checkpoint_s:g} s (now)",
            len(m.checkpoints),
            sum(len(v or b"") for _, v in m.checkpoints),
            m.seconds,
        ),
    ]


def restore_seconds(
    settings_env: dict[str, str],
    bootstrap: str,
    config: Path,
    flow: str,
    log_path: Path,
    fill: list[tuple[bytes, bytes | None]],
    timeout_s: float,
) -> float:
    """Fill a fresh flow's changelog with ``fill``, start a worker, time its first heartbeat."""
    from confluent_kafka import Producer

    from schemas.facility import load_facility
    from schemas.facility_state import FacilityState
    from services.infra.processes import spawn, stop_child
    from services.runtime.kafka import KafkaSettings, TopicAdmin
    from services.runtime.settings import load_settings
    from services.runtime.topic_reader import tail
    from services.state_estimator.app import StateEstimatorApp

    settings = load_settings()
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    settings = settings.model_copy(update={"kafka": kafka})
    app = StateEstimatorApp(load_facility(config), flow, settings)
    TopicAdmin(kafka).ensure(app.topic_specs())
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i, (key, value) in enumerate(fill):
        while True:
            try:
                producer.produce(app.changelog_topic, key=key, value=value, partition=0)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(300):
        raise click.ClickException("the broker did not take the changelog within 300 s")
    started = time.monotonic()
    proc = spawn(
        [sys.executable, "-m", "services.state_estimator", "--flow", flow, "--config", str(config)],
        log_path,
        Path.cwd(),
        settings_env,
    )
    try:

        def give_up() -> bool:
            return time.monotonic() - started >= timeout_s or proc.poll() is not None

        topic = FacilityState.topic_name(flow)
        heartbeats = tail(kafka, [topic], give_up, purpose="bench-state-store")
        with contextlib.closing(heartbeats):
            for _ in heartbeats:
                return time.monotonic() - started
        if proc.poll() is not None:
            raise click.ClickException(f"the worker exited; see {log_path}")
        raise click.ClickException(f"no heartbeat within {timeout_s:.0f}s; see {log_path}")
    finally:
        stop_child(proc, 20)


@click.command("state-store")
@click.option(
    "--case",
    "case_name",
    default="gen-d201-s1",
    show_default=True,
    help="Suite case whose estimates drive the fusion (18 cameras by default).",
)
@click.option(
    "--checkpoint-s",
    type=float,
    default=5.0,
    show_default=True,
    help="Checkpoint interval (DEPOTWATCH_STATE_ESTIMATOR__CHECKPOINT_INTERVAL_S).",
)
@click.option(
    "--restore/--no-restore",
    default=True,
    show_default=True,
    help="Also time real restores on the embedded broker (about 2-4 minutes).",
)
@click.option(
    "--hours",
    type=float,
    default=1.0,
    show_default=True,
    help="Run length whose changelog (current design) the restore reads.",
)
@click.option(
    "--legacy-minutes",
    type=float,
    default=2.0,
    show_default=True,
    help="Run length whose changelog (old design) the restore reads.",
)
def bench_command(
    case_name: str, checkpoint_s: float, restore: bool, hours: float, legacy_minutes: float
) -> None:
    """Fusion-state changelog volume (old vs now) and worker restore time."""
    click.echo(f"case {case_name}: running the fusion core over its modelled estimates ...")
    m = measure(case_name, checkpoint_s)
    click.echo(
        f"{m.cameras} cameras, {m.estimates} estimates over {m.seconds:.0f} s of event time\n"
    )
    for v in volumes(m, checkpoint_s):
        click.echo(v.line())
    if not restore:
        return
    from services.infra import EmbeddedInfra, settings_on_free_ports

    work = Path(tempfile.mkdtemp(prefix="depotwatch-bench-state-"))
    config = work / "facility.yaml"
    config.write_text(m.facility_yaml)
    click.echo(f"\nstarting an embedded broker and S3 in {work} ...")
    stack = EmbeddedInfra(settings_on_free_ports(work / "infra"), flows=())
    stack.up()
    ok = False
    try:
        client = stack.client_settings
        env = {
            **os.environ,
            "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": client.kafka.bootstrap_servers,
            "DEPOTWATCH_S3__ENDPOINT": client.s3.endpoint,
            "DEPOTWATCH_LOG_LEVEL": "WARNING",
            "DEPOTWATCH_STATE_ESTIMATOR__DATA_DIR": str(work / "faust"),
        }
        repeat_now = max(1, round(hours * 3600 / m.seconds))
        repeat_old = max(1, round(legacy_minutes * 60 / m.seconds))
        old: list[tuple[bytes, bytes | None]] = list(
            m.legacy * repeat_old
            if legacy_minutes * 60 >= m.seconds
            else m.legacy[: int(len(m.legacy) * legacy_minutes * 60 / m.seconds)]
        )
        runs: list[tuple[str, list[tuple[bytes, bytes | None]]]] = [
            ("empty changelog (start-up only)", []),
            (f"now: {hours:g} h of checkpoints", m.checkpoints * repeat_now),
            (f"old: {legacy_minutes:g} min of whole states", old),
        ]
        click.echo(f"{'changelog':<36} {'records':>9} {'MB':>8} {'to first heartbeat':>19}")
        for i, (name, fill) in enumerate(runs):
            flow = f"bench{i}"
            data = yaml.safe_load(m.facility_yaml)
            data["flows"] = {flow: data["flows"]["prod"]}
            config.write_text(yaml.safe_dump(data))
            seconds = restore_seconds(
                env,
                client.kafka.bootstrap_servers,
                config,
                flow,
                work / f"worker-{flow}.log",
                fill,
                timeout_s=600,
            )
            mb = sum(len(v or b"") for _, v in fill) / 1e6
            click.echo(f"{name:<36} {len(fill):>9} {mb:>8.1f} {seconds:>17.1f} s")
        ok = True
    finally:
        stack.down()
        from services.benchmarks.faults import finish

        finish(work, ok, click.echo)
