"""The job engine: one Celery app on Redis, shared by the API (which sends) and the workers.

Celery moves job ids, never job data: the request, progress and result live in the job store
(:mod:`services.jobs.store`). Routing is by queue: one per kind (``video``, ``replay``, ...:
workers consume the kinds they accept) and ``<kind>.gpu`` for jobs that need a GPU (consumed
only by workers with one), so a GPU job waits in its queue until a GPU worker exists. Delivery is
at least once: ``acks_late`` (the message is acknowledged when the job ended, not when it
started), prefetch 1 per slot (a worker reserves no more jobs than it can run), and Redis
redelivers a message whose worker died after ``visibility_timeout_s``. The store's lease keeps
a second delivery from running a job twice.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from schemas.jobs import JobStatus
from services.runtime.kafka import MessageProducer
from services.runtime.settings import JobsSettings, Settings

log = logging.getLogger(__name__)

RUN_JOB = "depotwatch.run_job"
"""The one task: run the job whose id it carries."""


def celery_app(settings: JobsSettings) -> Celery:
    """The Celery app for ``settings`` (no result backend: results are in the job store)."""
    app = Celery("depotwatch", broker=settings.redis_url.get_secret_value(), set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="video",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Short socket timeouts: an API request must not hang on a dead Redis.
            "socket_timeout": 5.0,
            "socket_connect_timeout": 3.0,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Events let Flower (or `celery events`) watch the workers.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        enable_utc=True,
    )
    return app


def submit(app: Celery, job: JobStatus) -> None:
    """Queue ``job`` for the workers that serve its queue."""
    app.send_task(RUN_JOB, args=[job.id], queue=job.queue)


class StatusPublisher:
    """Publishes job statuses to ``jobs.v1`` (compacted, key: job id) without waiting.

    The job store is the source of truth; the topic lets the rest of the system follow jobs
    like everything else. A broker outage only delays it (librdkafka retries) and is logged.
    """

    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._producer: MessageProducer | None = None
        self._lock = threading.Lock()

    def __call__(self, job: JobStatus) -> None:
        with self._lock:
            try:
                if self._producer is None:
                    self._producer = MessageProducer(self.settings.kafka, self.client_id)
                self._producer.publish(job)
                self._producer.poll(0)
            except Exception as exc:
                log.warning("job status not published", extra={"job": job.id, "error": str(exc)})

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded), then close."""
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout)
                self._producer = None
