"""``depotwatch worker``: a Celery worker that runs jobs and advertises its capacity.

It consumes the queue of each kind it accepts (``--kind``), and their ``.gpu`` queues too when
it has a GPU. Jobs run on a
thread pool of ``--slots`` threads in this one process (detection and decoding release the
GIL), so a worker killed with SIGKILL takes its jobs with it and nothing keeps running in the
background: the job store's lease expires and another worker resumes the job from its
checkpoint once Redis hands the unacknowledged message on. Every ``heartbeat_s`` the worker
writes what it has (cores, memory, GPU, slots, running jobs, kinds) to the job store, which
``GET /api/v1/workers`` lists.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import click
import redis
from celery import Celery
from celery.signals import worker_shutting_down
from kombu.exceptions import OperationalError as KombuOperationalError
from prometheus_client import Gauge

from schemas.base import utc_now
from schemas.jobs import JOB_KINDS, GpuInfo, JobKind, WorkerInfo, queues_for
from services.jobs.engine import RUN_JOB, StatusPublisher, celery_app, submit
from services.jobs.kinds import kind_runners
from services.jobs.runner import run_job
from services.jobs.store import JobStore
from services.runtime.logs import configure_logging
from services.runtime.observability import Health, ObservabilityServer, with_grace
from services.runtime.settings import Settings, load_settings

log = logging.getLogger(__name__)

RUNNING = Gauge("depotwatch_worker_running_jobs", "Jobs this worker runs now")


def detect_gpu() -> GpuInfo | None:
    """The first CUDA device, if torch is installed and sees one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return GpuInfo(name=props.name, memory_gb=round(props.total_memory / 2**30, 1))


def memory_gb() -> float:
    """Physical memory of this machine."""
    import psutil

    return round(psutil.virtual_memory().total / 2**30, 1)


class Worker:
    """One worker process: the Celery app with the job task, and its heartbeat."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        slots: int,
        kinds: list[JobKind],
        gpu: GpuInfo | None,
        store: JobStore | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.slots = slots
        self.kinds = kinds
        self.gpu = gpu
        self.queues = queues_for(kinds, gpu is not None)
        self.publisher = StatusPublisher(settings, f"depotwatch-worker-{name}")
        self.store = store or JobStore.from_url(
            settings.jobs.redis_url.get_secret_value(),
            keep_days=settings.jobs.keep_days,
            publish=self.publisher,
        )
        self.running: set[str] = set()
        self.last_beat: float | None = None
        self.stopping = threading.Event()
        self.started_at = utc_now()
        self.app: Celery = celery_app(settings.jobs)
        self._register()

    def info(self) -> WorkerInfo:
        """What the heartbeat says about this worker now."""
        return WorkerInfo(
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            cpu_cores=os.cpu_count() or 1,
            memory_gb=memory_gb(),
            gpu=self.gpu,
            slots=self.slots,
            running=sorted(self.running),
            kinds=self.kinds,
            queues=self.queues,
            started_at=self.started_at,
            heartbeat_at=utc_now(),
        )

    def _register(self) -> None:
        runners = kind_runners(self.kinds)
        settings, store, app = self.settings, self.store, self.app

        @app.task(name=RUN_JOB, bind=True, max_retries=None)
        def run(task: object, job_id: str) -> str:
            try:
                outcome = run_job(
                    job_id, store, settings, self.name, runners, self.stopping, self.running
                )
            except (redis.RedisError, KombuOperationalError) as exc:
                # The job store failed mid-way: this message must not be acked as done.
                log.warning("job store unreachable; retrying", extra={"job": job_id})
                raise task.retry(countdown=settings.jobs.lease_s, exc=exc) from None  # type: ignore[attr-defined]
            if outcome == "busy":
                # Delivered again while another worker holds the job's lease: look again
                # when that lease would have ended if its worker died.
                raise task.retry(countdown=settings.jobs.lease_s)  # type: ignore[attr-defined]
            if outcome in ("requeue", "lost"):
                # Handed back, or this worker could not keep its lease: a new message, so
                # whoever can claim it next does (an extra copy is told busy or finished).
                submit(app, store.get(job_id))
            return outcome

    def _heartbeat(self, stop: threading.Event) -> None:
        interval = self.settings.jobs.heartbeat_s
        while True:
            try:
                self.store.heartbeat(self.info(), ttl_s=3 * interval)
                self.last_beat = time.monotonic()
                RUNNING.set(len(self.running))
                self.restore_unacked()
            except Exception as exc:
                log.warning("worker heartbeat not written", extra={"error": str(exc)})
            if stop.wait(interval):
                return

    def restore_unacked(self) -> None:
        """Put jobs whose worker died unacknowledged (older than the visibility timeout) back
        in their queues.

        Kombu's Redis transport does this itself only on every 10th of its 10-second checks
        (and once when a worker starts): measured here, a dead worker's job waited 82 s for a
        busy survivor. The restore is kombu's own (under its Redis mutex), just called on
        every heartbeat."""
        with self.app.connection_for_write() as conn:
            conn.default_channel.qos.restore_visible(num=100, interval=1)

    def heartbeat_check(self) -> tuple[bool, str]:
        """Healthy while heartbeats reach the job store: otherwise the API lists no such
        worker and its jobs' leases lapse."""
        limit = 3 * self.settings.jobs.heartbeat_s
        if self.last_beat is None:
            return False, "no heartbeat written yet (job store unreachable?)"
        age = time.monotonic() - self.last_beat
        if age > limit:
            return (
                False,
                f"last heartbeat {age:.0f}s ago (limit {limit:.0f}s): job store unreachable",
            )
        return True, f"{len(self.running)}/{self.slots} slot(s) busy"

    def run(self) -> None:
        """Serve jobs until SIGTERM/SIGINT (running jobs are handed back to the queue)."""
        health = Health()
        health.add(
            "job engine", with_grace(self.heartbeat_check, 10 * self.settings.jobs.heartbeat_s)
        )
        server = ObservabilityServer(health, self.settings.http_host, self.settings.http_port)
        server.start()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), name="heartbeat", daemon=True)
        beat.start()

        def on_shutdown(**_: object) -> None:
            self.stopping.set()

        worker_shutting_down.connect(on_shutdown, weak=False)
        try:
            worker = self.app.Worker(
                hostname=self.name,
                pool_cls="threads",
                concurrency=self.slots,
                queues=self.queues,
                without_mingle=True,
                without_gossip=True,
                loglevel=self.settings.log_level,
            )
            worker.start()
        finally:
            stop.set()
            beat.join(timeout=5.0)
            self.store.forget_worker(self.name)
            self.publisher.close()
            server.stop()


@click.command("worker")
@click.option(
    "--slots",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Jobs run at once (each video job keeps about one core busy).",
)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(JOB_KINDS),
    multiple=True,
    help="Job kinds to accept (repeatable; default: all).",
)
@click.option(
    "--gpu/--no-gpu",
    "use_gpu",
    default=None,
    help="Take jobs that need a GPU (default: when torch sees a CUDA device).",
)
@click.option("--name", default=None, help="Worker name (default: worker-<random>@<host>).")
def worker_command(
    slots: int, kinds: tuple[JobKind, ...], use_gpu: bool | None, name: str | None
) -> None:
    """Run jobs (video, replay, score, train) sent to /api/v1/jobs.

    Connects to the job engine at DEPOTWATCH_JOBS__REDIS_URL (the embedded Redis of `infra
    up` by default) and to Kafka and S3 like every service. Stop it with Ctrl-C: a running job
    goes back to the queue and another worker resumes it from its last checkpoint.
    """
    settings = load_settings()
    configure_logging("worker", settings.log_level, settings.log_format)
    gpu = _gpu(use_gpu)
    worker = Worker(
        settings,
        name or f"worker-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
        slots,
        list(kinds or JOB_KINDS),
        gpu,
    )
    try:
        worker.store.ping()
    except Exception as exc:
        raise click.ClickException(
            f"{exc}; start it with `depotwatch infra up` or set DEPOTWATCH_JOBS__REDIS_URL"
        ) from None
    click.echo(
        f"worker {worker.name}: {slots} slot(s), queues {', '.join(worker.queues)}, "
        f"kinds {', '.join(worker.kinds)}" + (f", GPU {gpu.name}" if gpu else "")
    )
    worker.run()


def _gpu(use_gpu: bool | None) -> GpuInfo | None:
    if use_gpu is False:
        return None
    found = detect_gpu()
    if use_gpu and found is None:
        raise click.ClickException(
            "--gpu given but torch sees no CUDA device; check the driver or drop --gpu"
        )
    return found
