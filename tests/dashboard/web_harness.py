"""The web application served by uvicorn on a free port, in the test's own event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from dashboard_builders import facility
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from schemas.facility import FacilityConfig, load_facility
from services.dashboard.__main__ import serve
from services.dashboard.config import DashboardSettings
from services.dashboard.jobs_api import JobsBackend
from services.dashboard.server import DashboardServer, HistoryReader
from services.runtime.capture_settings import CaptureSettings

JPEG = b"\xff\xd8\xff\xe0fake-jpeg"
Client = httpx.AsyncClient


def run(
    test: Callable[[Client, DashboardServer], Awaitable[None]],
    token: str | None = None,
    config_path: Path | None = None,
    config: FacilityConfig | None = None,
    history_reader: HistoryReader | None = None,
    jobs: JobsBackend | None = None,
    capture: CaptureSettings | None = None,
    **settings: object,
) -> None:
    """Serve the app on 127.0.0.1 (free port) in this event loop; ``test`` gets a client.

    The facility is ``config``, else the file at ``config_path``, else the repository's."""

    def loader(bucket: str, key: str) -> bytes:
        return JPEG

    dash = DashboardSettings(token=SecretStr(token) if token else None, **settings)  # type: ignore[arg-type]
    server = DashboardServer(
        config or (load_facility(config_path) if config_path else facility()),
        dash,
        loader,
        config_path=config_path,
        registry=CollectorRegistry(),
        history_reader=history_reader,
        jobs=jobs,
        capture=capture,
    )

    async def main() -> None:
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(server, "127.0.0.1", 0, bound.set_result, stop))
        port = await asyncio.wait_for(bound, 10)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                await test(client, server)
        finally:
            stop.set()
            await asyncio.wait_for(serving, 10)

    try:
        asyncio.run(main())
    finally:
        server.close()
