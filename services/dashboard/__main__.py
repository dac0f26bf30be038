"""``depotwatch dashboard``: the built-in live web page of the depot."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import click
import uvicorn
from confluent_kafka import KafkaException
from starlette.types import ASGIApp

from schemas.facility import ConfigError, load_facility
from schemas.facility_state import FacilityState
from services.dashboard.config import DashboardSettings
from services.dashboard.feed import KafkaFeed
from services.dashboard.jobs_api import JobsBackend
from services.dashboard.server import DashboardServer, HistoryReader
from services.runtime import topic_reader
from services.runtime.consumer_lag import ConsumerLagMonitor
from services.runtime.logs import configure_logging
from services.runtime.settings import KafkaSettings, load_settings
from services.runtime.storage import ObjectStore

log = logging.getLogger("services.dashboard")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`serve` owns SIGTERM/SIGINT, so the
    command's clean-up (the Kafka feed) runs and the exit status is 0 on a stop."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(
    server: DashboardServer,
    host: str,
    port: int,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the dashboard's app until SIGTERM/SIGINT or ``stop`` is set; logs the bound URL
    and hands the bound port to ``on_ready`` (port 0 picks a free one)."""

    def ready(bound: int) -> None:
        log.info(
            "dashboard listening",
            extra={
                "url": f"http://{host}:{bound}/",
                "api_docs": f"http://{host}:{bound}/api/docs",
                "token_required": server.settings.token is not None,
            },
        )
        if on_ready is not None:
            on_ready(bound)

    await serve_app(server.app(), host, port, ready, stop)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket made with proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on
    such sockets' connections, and without it every response whose headers and body go out
    in two writes waits ~40 ms for the client's delayed ACK (Nagle)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_app(
    app: ASGIApp,
    host: str,
    port: int,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve an ASGI app with uvicorn until SIGTERM/SIGINT (main thread) or ``stop``."""
    try:
        sock = _listen(host, port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({exc.strerror}); pass --port with a free port "
            "or set DEPOTWATCH_DASHBOARD_PORT"
        ) from None
    bound = sock.getsockname()[1]
    # No access log: request lines would carry ?token= and every browser's SSE reconnects.
    # An open event stream is closed 2 s into a shutdown rather than waited for.
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    web = _Server(config)
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(web, "should_exit", True))
    task = asyncio.create_task(web.serve(sockets=[sock]))
    while not web.started and not task.done():
        await asyncio.sleep(0.05)
    # A failed start-up ends the process with uvicorn's status 3 (SystemExit), never 0.
    if on_ready is not None and web.started:
        on_ready(bound)
    stopper = asyncio.create_task(stop.wait()) if stop is not None else None
    try:
        if stopper is not None:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            web.should_exit = True
        await task
    finally:
        web.should_exit = True
        if stopper is not None:
            stopper.cancel()
        sock.close()


def kafka_history_reader(kafka: KafkaSettings) -> HistoryReader:
    """The API's state history, read from the flow's ``facility-state`` topic by time."""

    def read(flow: str, start: datetime, end: datetime) -> list[FacilityState]:
        topic = FacilityState.topic_name(flow)
        try:
            return topic_reader.read_messages(kafka, topic, FacilityState, start, end, timeout_s=20)
        except topic_reader.TopicMissingError as exc:
            raise LookupError(str(exc)) from None
        except KafkaException as exc:
            raise ConnectionError(f"Kafka: {exc}") from None

    return read


@click.command("dashboard")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Facility YAML (default: DEPOTWATCH_FACILITY_CONFIG or facility.yaml).",
)
@click.option("--host", default=None, help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8088; 0 picks a free one).")
def dashboard_command(config_path: Path | None, host: str | None, port: int | None) -> None:
    """Serve the live dashboard and the REST API (/api/v1, docs at /api/docs).

    The page shows the depot plan, flows, camera tiles and accuracy; the API reads the
    facility, cameras with health, flows and their latest state, and adds, changes, disables
    or removes cameras in the facility file. The access token, if any, comes from
    DEPOTWATCH_DASHBOARD_TOKEN (never a flag, so it does not show in the process list); without
    one the API refuses changes.
    """

    settings = load_settings()
    dash = load_settings(DashboardSettings)
    configure_logging("dashboard", settings.log_level, settings.log_format)
    path = config_path or settings.facility_config
    try:
        cfg = load_facility(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}", err=True)
        raise SystemExit(1) from None

    def load_frame(bucket: str, key: str) -> bytes:
        return store.get(key, bucket=bucket)

    store = ObjectStore(settings.s3, timeout_s=5.0)

    server = DashboardServer(
        cfg,
        dash,
        frame_loader=load_frame,
        config_path=Path(path),
        history_reader=kafka_history_reader(settings.kafka),
        jobs=JobsBackend.from_settings(settings),
    )
    lag = None
    if dash.lag_exporter:
        lag = ConsumerLagMonitor(settings.kafka, cfg.flows, group_pattern=dash.lag_groups).start()
        server.registry.register(lag.collector)
    feed = KafkaFeed(settings.kafka, cfg.flows, server.apply_threadsafe).start()
    try:
        asyncio.run(serve(server, host or dash.host, dash.port if port is None else port))
    finally:
        feed.stop()
        if lag is not None:
            lag.stop()
