"""REST API latency: the latest facility state under N concurrent clients, beside bare FastAPI.

The web application runs in a child process (uvicorn, its token gate on, a facility state of
the shipped depot with two locomotives per track); ``--clients`` asyncio clients (one
keep-alive connection each, loopback only) ask for the latest state as soon as answered (or
``--pace`` seconds later), for ``--duration`` seconds after a warm-up. Then the same load
against a bare FastAPI app in a child process that returns the same ``FacilityState`` model
from one route, no middleware: the floor for this work on this machine. Prints p50/p95/p99/max
latency and requests/s of both. Issue 14's goal: p95 <= 50 ms at 50 clients.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from services.runtime.stats import percentile

TOKEN = "bench-api-token"


def _state(config_path: Path) -> Any:
    from schemas.facility import load_facility
    from schemas.facility_state import CameraHealth, FacilityState, LocomotiveState, TrackState

    cfg = load_facility(config_path)
    now = datetime.now(UTC)
    tracks = []
    for t in cfg.tracks:
        locos = [
            LocomotiveState(
                locomotive_id=f"{t.id}-{i}",
                head_m=5.0 + 20 * i + 17,
                tail_m=5.0 + 20 * i,
                model="TEM2",
                plate=f"TEM2-{i:04d}",
                confidence=0.9,
                cameras=[c.id for c in cfg.cameras[:2]],
                last_seen=now,
            )
            for i in range(2)
        ]
        tracks.append(TrackState(track_id=t.id, locomotives=locos))
    cameras = [CameraHealth(camera_id=c.id, status="ok", last_frame_at=now) for c in cfg.cameras]
    return FacilityState(
        facility_id=cfg.facility_id, flow="prod", as_of=now, tracks=tracks, cameras=cameras
    )


def _serve_ours(config_path: str, ports: Any) -> None:
    import logging

    from prometheus_client import CollectorRegistry
    from pydantic import SecretStr

    from schemas.facility import load_facility
    from services.dashboard.__main__ import serve
    from services.dashboard.config import DashboardSettings
    from services.dashboard.server import DashboardServer

    logging.disable(logging.INFO)
    path = Path(config_path)
    server = DashboardServer(
        load_facility(path),
        DashboardSettings(token=SecretStr(TOKEN)),
        config_path=path,
        registry=CollectorRegistry(),
    )
    server.apply(_state(path))
    asyncio.run(serve(server, "127.0.0.1", 0, ports.put))


def _serve_bare(config_path: str, ports: Any) -> None:
    import logging

    from fastapi import FastAPI

    from schemas.facility_state import FacilityState
    from services.dashboard.__main__ import serve_app

    logging.disable(logging.INFO)
    state = _state(Path(config_path))
    app = FastAPI()

    @app.get("/api/v1/flows/prod/state", response_model=FacilityState)
    async def latest() -> FacilityState:
        return state

    asyncio.run(serve_app(app, "127.0.0.1", 0, ports.put))


async def _load(
    host: str, port: int, path: str, clients: int, warmup_s: float, duration_s: float, pace_s: float
) -> dict[str, float]:
    """``clients`` keep-alive connections, each asking again when answered (after ``pace_s``).

    A bare asyncio HTTP/1.1 client: on a 2-core machine the load generator shares the CPU with
    the server, and httpx's own per-request cost would be most of what is measured."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    end = measure_from + duration_s

    async def one_client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (now := time.perf_counter()) < end:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                took = time.perf_counter() - now
                if now >= measure_from:
                    if head.startswith(b"HTTP/1.1 200"):
                        latencies.append(took)
                    else:
                        errors += 1
                if pace_s > 0:
                    await asyncio.sleep(pace_s)
        finally:
            writer.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    if not latencies:
        raise click.ClickException("no request was answered with 200; see the errors above")

    def q(p: float) -> float:
        return 1000 * (percentile(latencies, p) or 0.0)

    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / duration_s,
        "p50": q(0.50),
        "p95": q(0.95),
        "p99": q(0.99),
        "max": max(latencies) * 1000,
    }


def _run(
    target: Any, config_path: Path, clients: int, warmup: float, duration: float, pace: float
) -> Any:
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    proc = ctx.Process(target=target, args=(str(config_path), ports), daemon=True)
    proc.start()
    try:
        port = ports.get(timeout=60)
        path = "/api/v1/flows/prod/state"
        return asyncio.run(_load("127.0.0.1", port, path, clients, warmup, duration, pace))
    finally:
        proc.terminate()
        proc.join(15)


@click.command("api")
@click.option("--clients", type=int, default=50, show_default=True, help="Concurrent clients.")
@click.option("--duration", type=float, default=15.0, show_default=True, help="Seconds measured.")
@click.option("--warmup", type=float, default=3.0, show_default=True, help="Seconds not counted.")
@click.option(
    "--pace",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds a client waits after each answer (0: ask again at once, the saturation case; "
    "1: a dashboard polling every second).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=Path("facility.yaml"),
    show_default=True,
    help="Facility whose state is served.",
)
def bench_command(
    clients: int, duration: float, warmup: float, pace: float, config_path: Path
) -> None:
    """REST API latency under concurrent clients, beside bare FastAPI doing the same work."""
    if clients < 1 or duration <= 0 or pace < 0:
        raise click.BadParameter("--clients must be >= 1, --duration > 0 and --pace >= 0")
    click.echo(
        f"GET latest facility state, {clients} concurrent clients, each asking again "
        + (f"{pace:g} s after its answer" if pace else "as soon as answered")
        + f", {duration:.0f} s (+{warmup:.0f} s warm-up), loopback; server in its own process"
    )
    click.echo(f"{'':28} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, target in (
        ("depotwatch api", _serve_ours),
        ("bare FastAPI, same model", _serve_bare),
    ):
        r = _run(target, config_path, clients, warmup, duration, pace)
        click.echo(
            f"{name:28} {r['rps']:8.0f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} "
            f"{r['max']:8.1f}" + (f"  ({r['errors']:.0f} errors)" if r["errors"] else "")
        )
    click.echo("goal (issue 14): p95 <= 50 ms at 50 clients")
