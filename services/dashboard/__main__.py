"""``depotwatch dashboard``: the built-in live web page of the depot."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click
from aiohttp import web

from schemas.facility import ConfigError, load_facility
from services.dashboard.config import DashboardSettings
from services.dashboard.feed import KafkaFeed
from services.dashboard.server import DashboardServer
from services.runtime.consumer_lag import ConsumerLagMonitor
from services.runtime.logs import configure_logging
from services.runtime.settings import load_settings
from services.runtime.storage import ObjectStore

log = logging.getLogger("services.dashboard")


async def serve(
    server: DashboardServer, host: str, port: int, ready: asyncio.Event | None = None
) -> None:
    """Serve until SIGTERM/SIGINT (or cancellation); logs the bound URL."""

    # No access log: request lines would carry ?token= and every browser's SSE reconnects.
    runner = web.AppRunner(
        server.app(), handle_signals=False, shutdown_timeout=2.0, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({exc.strerror}); pass --port with a free port "
            "or set DEPOTWATCH_DASHBOARD_PORT"
        ) from None
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info(
        "dashboard listening",
        extra={
            "url": f"http://{host}:{bound}/",
            "token_required": server.settings.token is not None,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


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
    """Serve the live dashboard: depot plan, flows, camera tiles, accuracy.

    The access token, if any, comes from DEPOTWATCH_DASHBOARD_TOKEN (never a flag, so it does
    not show in the process list).
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
    server = DashboardServer(cfg, dash, frame_loader=load_frame, config_path=Path(path))
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
