"""The dashboard's web server (aiohttp): the page, server-sent events, frame images, metrics.

Browsers open ``/`` and keep one ``/events`` stream open: a ``snapshot`` event first, then
``state`` / ``frame`` / ``detections`` / ``compare`` / ``accuracy`` events as messages arrive.
No page polls. Messages come from :class:`~services.dashboard.feed.KafkaFeed` (a thread) and
are applied to :class:`~services.dashboard.core.DashboardState` on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas.base import Message
from schemas.estimates import PositionEstimate
from schemas.facility import ConfigError, FacilityConfig, load_facility
from schemas.facility_state import FacilityState
from schemas.frames import FrameRef
from schemas.ground_truth import GroundTruth
from services.dashboard.config import DashboardSettings
from services.dashboard.core import DashboardState, Event

log = logging.getLogger(__name__)

TOKEN_COOKIE = "depotwatch_token"
STATIC = resources.files("services.dashboard") / "static"
FrameLoader = Callable[[str, str], bytes]
"""(bucket, key) -> JPEG bytes; blocking, run in a worker thread."""


class FacilityCollector(Collector):
    """Prometheus view of what the dashboard knows: locomotives, camera health, accuracy."""

    def __init__(self, state: DashboardState) -> None:
        self._state = state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Gauges computed from the latest facility states at scrape time."""
        st = self._state
        locos = GaugeMetricFamily(
            "depotwatch_facility_locomotives",
            "Locomotives on a track, as a flow sees it",
            labels=["flow", "track"],
        )
        cams = GaugeMetricFamily(
            "depotwatch_facility_camera_ok",
            "1 when the flow's state estimator hears from the camera, 0 when stale or disabled",
            labels=["flow", "camera"],
        )
        age = GaugeMetricFamily(
            "depotwatch_facility_state_age_seconds",
            "Seconds since the event time of the flow's latest facility state",
            labels=["flow"],
        )
        for flow, fs in sorted(st.states.items()):
            counts = {t.id: 0 for t in st.config.tracks}
            for ts in fs.tracks:
                counts[ts.track_id] = counts.get(ts.track_id, 0) + len(ts.locomotives)
            for track, n in sorted(counts.items()):
                locos.add_metric([flow, track], n)
            for cam in fs.cameras:
                cams.add_metric([flow, cam.camera_id], 1.0 if cam.status == "ok" else 0.0)
        for flow, seconds in sorted(st.state_age_s(datetime.now(UTC)).items()):
            age.add_metric([flow], seconds)
        yield from (locos, cams, age)
        comparison = st.comparison()
        if comparison is not None:
            agree = GaugeMetricFamily(
                "depotwatch_flow_agreement_ratio",
                "Share of locomotives two flows agree on (position and identity)",
                labels=["flow_a", "flow_b"],
            )
            agree.add_metric(comparison["flows"], comparison["agreement"])
            yield agree
        acc = st.accuracy()
        if acc:
            detected = GaugeMetricFamily(
                "depotwatch_accuracy_detected_ratio",
                "Share of the simulator's locomotives the flow reports",
                labels=["flow"],
            )
            error = GaugeMetricFamily(
                "depotwatch_accuracy_position_error_meters",
                "Mean absolute end-position error of matched locomotives",
                labels=["flow"],
            )
            plates = GaugeMetricFamily(
                "depotwatch_accuracy_plate_ratio",
                "Share of matched locomotives with the right plate",
                labels=["flow"],
            )
            for flow, a in acc.items():
                detected.add_metric([flow], a["detected"])
                if a["position_error_m"] is not None:
                    error.add_metric([flow], a["position_error_m"])
                if a["plates"] is not None:
                    plates.add_metric([flow], a["plates"])
            yield from (detected, error, plates)


class Broadcaster:
    """Fan-out of events to connected browsers through bounded per-client queues."""

    def __init__(self, queue_size: int) -> None:
        self._clients: set[asyncio.Queue[Event]] = set()
        self._size = queue_size
        self.dropped = 0

    def subscribe(self) -> asyncio.Queue[Event]:
        """A new client's queue."""
        q: asyncio.Queue[Event] = asyncio.Queue(self._size)
        self._clients.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        """Forget a client that went away."""
        self._clients.discard(q)

    def publish(self, events: Iterable[Event]) -> None:
        """Queue events for every client; a slow client loses its oldest events, not the page."""
        for event in events:
            for q in self._clients:
                if q.full():
                    q.get_nowait()
                    self.dropped += 1
                q.put_nowait(event)

    def __len__(self) -> int:
        return len(self._clients)


class DashboardServer:
    """The aiohttp application and the state behind it."""

    def __init__(
        self,
        config: FacilityConfig,
        settings: DashboardSettings,
        frame_loader: FrameLoader | None = None,
        config_path: Path | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.state = DashboardState(config)
        self.settings = settings
        self.hub = Broadcaster(settings.client_queue)
        self._frame_loader = frame_loader
        self._frames: OrderedDict[str, bytes] = OrderedDict()
        self._config_path = config_path
        self._config_stamp = _file_stamp(config_path) if config_path else None
        self.registry = registry
        self._collector = FacilityCollector(self.state)
        registry.register(self._collector)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.messages = 0

    def close(self) -> None:
        """Unregister the metrics collector (tests build several servers in one process)."""
        self.registry.unregister(self._collector)

    # ---- messages in -------------------------------------------------------------------

    def apply(self, message: Message) -> None:
        """Apply one message and push the resulting events (call on the event loop)."""
        self.apply_batch([message])

    def apply_batch(self, messages: Sequence[Message]) -> None:
        """Apply messages in order, then push only the newest event per subject.

        Catching up on a backlog (a restart, a slow page) then costs the browser one redraw
        and one image fetch per camera, not one per message.
        """
        events: list[Event] = []
        for message in messages:
            self.messages += 1
            if isinstance(message, FacilityState):
                events += self.state.apply_state(message)
            elif isinstance(message, FrameRef):
                events += self.state.apply_frame(message)
            elif isinstance(message, PositionEstimate):
                events += self.state.apply_positions(message)
            elif isinstance(message, GroundTruth):
                events += self.state.apply_truth(message)
        self.hub.publish(coalesce(events))

    def apply_threadsafe(self, messages: Sequence[Message]) -> None:
        """Hand a batch of messages from the Kafka thread to the event loop."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.apply_batch, list(messages))

    # ---- access token -------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> tuple[bool, bool]:
        """(allowed, came with ?token= so the page should remember it in a cookie)."""
        if self.settings.token is None:
            return True, False
        expected = self.settings.token.get_secret_value().encode()
        offered = [
            (request.query.get("token"), True),
            (request.headers.get("Authorization", "").removeprefix("Bearer ").strip(), False),
            (request.cookies.get(TOKEN_COOKIE), False),
        ]
        for value, from_query in offered:
            # compare_digest: the time taken does not tell how much of a guess was right.
            if value and hmac.compare_digest(value.encode(), expected):
                return True, from_query
        return False, False

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        allowed, remember = self._authorised(request)
        if not allowed:
            return web.Response(
                status=401,
                text="this dashboard needs its access token: open /?token=TOKEN "
                "(the value of DEPOTWATCH_DASHBOARD_TOKEN)\n",
            )
        if remember and request.path == "/":
            # Trade the token in the URL for a cookie and drop it from the address bar, so it
            # does not linger in browser history or get copied along with a link.
            response: web.StreamResponse = web.Response(status=302, headers={"Location": "/"})
        else:
            response = await handler(request)
        if remember and self.settings.token is not None:
            response.set_cookie(
                TOKEN_COOKIE,
                self.settings.token.get_secret_value(),
                httponly=True,
                samesite="Strict",
            )
        return response

    # ---- handlers ----------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        """The page."""
        return web.Response(
            text=(STATIC / "index.html").read_text(), content_type="text/html", charset="utf-8"
        )

    async def static(self, request: web.Request) -> web.Response:
        """app.js / app.css from package data."""
        name = request.match_info["name"]
        types = {"app.js": "application/javascript", "app.css": "text/css"}
        if name not in types:
            raise web.HTTPNotFound(text=f"no static file {name}\n")
        return web.Response(
            text=(STATIC / name).read_text(), content_type=types[name], charset="utf-8"
        )

    async def snapshot(self, request: web.Request) -> web.Response:
        """Everything the page shows, as JSON (for scripts and tests)."""
        return web.json_response(self.state.snapshot())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: a snapshot, then every change as it happens."""
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        q = self.hub.subscribe()
        try:
            await resp.write(_sse({"type": "snapshot", "data": self.state.snapshot()}))
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), timeout=15.0)
                except TimeoutError:
                    # A comment line keeps proxies from closing an idle stream.
                    await resp.write(b": keep-alive\n\n")
                    continue
                await resp.write(_sse(event))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(q)
        return resp

    async def frame(self, request: web.Request) -> web.Response:
        """The latest stored frame of a camera (JPEG from the object store)."""
        camera_id = request.match_info["camera_id"]
        ref = self.state.frames.get(camera_id)
        if ref is None:
            raise web.HTTPNotFound(text=f"no frame from camera {camera_id} yet\n")
        if self._frame_loader is None:
            raise web.HTTPServiceUnavailable(text="no object store configured for frames\n")
        cache_key = f"{ref.bucket}/{ref.key}"
        data = self._frames.get(cache_key)
        if data is None:
            loader = self._frame_loader
            try:
                data = await asyncio.get_running_loop().run_in_executor(
                    None, loader, ref.bucket, ref.key
                )
            except Exception as exc:
                log.warning("frame not loaded", extra={"camera_id": camera_id, "error": str(exc)})
                raise web.HTTPBadGateway(text=f"frame {cache_key} not loaded: {exc}\n") from None
            self._frames[cache_key] = data
            while len(self._frames) > self.settings.frame_cache:
                self._frames.popitem(last=False)
        etag = hashlib.sha256(cache_key.encode()).hexdigest()[:16]
        return web.Response(
            body=data,
            content_type=ref.content_type,
            headers={"Cache-Control": "private, max-age=3600", "ETag": etag},
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus metrics."""
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        """Up, and how many browsers and messages."""
        return web.json_response(
            {
                "ok": True,
                "clients": len(self.hub),
                "messages": self.messages,
                "dropped": self.hub.dropped,
            }
        )

    # ---- config hot reload --------------------------------------------------------------

    def check_config(self) -> None:
        """Reload the facility config if its file changed; a broken file keeps the old one."""
        if self._config_path is None:
            return
        stamp = _file_stamp(self._config_path)
        if stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        try:
            cfg = load_facility(self._config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error(
                    "facility config rejected, keeping the running one",
                    extra={"problem": f"{exc.source}: {problem}"},
                )
            return
        log.info("facility config reloaded", extra={"cameras": len(cfg.cameras)})
        self.hub.publish(self.state.set_config(cfg))

    async def _watch_config(self, app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(1.0)
                self.check_config()

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    async def _bind_loop(self, app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/snapshot", self.snapshot)
        app.router.add_get("/events", self.events)
        app.router.add_get("/frames/{camera_id}.jpg", self.frame)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.on_startup.append(self._bind_loop)
        app.cleanup_ctx.append(self._watch_config)
        return app


def coalesce(events: Sequence[Event]) -> list[Event]:
    """The last event per subject (type + flow + camera), in the order of those last ones."""
    last: dict[tuple[str, object, object], int] = {}
    for i, e in enumerate(events):
        data = e["data"]
        last[(e["type"], data.get("flow"), data.get("camera_id"))] = i
    return [events[i] for i in sorted(last.values())]


def _sse(event: Event) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event['data'])}\n\n".encode()


def _file_stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
