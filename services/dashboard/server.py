"""The web application (FastAPI): the dashboard page, its server-sent events, frame images,
metrics, and the REST API under ``/api/v1`` with its OpenAPI document and offline docs.

Browsers open ``/`` and keep one ``/events`` stream open: a ``snapshot`` event first, then
``state`` / ``frame`` / ``detections`` / ``compare`` / ``accuracy`` events as messages arrive.
No page polls. Messages come from :class:`~services.dashboard.feed.KafkaFeed` (a thread) and
are applied to :class:`~services.dashboard.core.DashboardState` on the event loop; the API
answers from the same state (:mod:`services.dashboard.api`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as Message_

from schemas.api import Health
from schemas.base import Message
from schemas.estimates import PositionEstimate
from schemas.facility import ConfigError, FacilityConfig, load_facility
from schemas.facility_state import FacilityState
from schemas.frames import FrameRef
from schemas.ground_truth import GroundTruth
from services.dashboard.api import api_router, error_response, invalid_request, unparsable_body
from services.dashboard.config import DashboardSettings
from services.dashboard.config_edit import ConfigEditor
from services.dashboard.core import DashboardState, Event
from services.dashboard.jobs_api import JobsBackend, jobs_router
from services.dashboard.webrtc import WebRtcIngest, webrtc_router
from services.runtime.capture_settings import CaptureSettings
from services.runtime.facility_watch import file_stamp

log = logging.getLogger(__name__)

TOKEN_COOKIE = "depotwatch_token"
STATIC = resources.files("services.dashboard") / "static"
FrameLoader = Callable[[str, str], bytes]
"""(bucket, key) -> JPEG bytes; blocking, run in a worker thread."""
HistoryReader = Callable[[str, datetime, datetime], list[FacilityState]]
"""(flow, start, end) -> that flow's facility states in the range; blocking, run in a thread."""
DOCS_ASSETS = "/api/docs-assets"
"""Swagger UI's script and style, served from the installed package (no CDN)."""

READS_NEED_TOKEN = (
    "this dashboard needs its access token: open /?token=TOKEN "
    "(the value of DEPOTWATCH_DASHBOARD_TOKEN) or send Authorization: Bearer TOKEN"
)
CHANGES_NEED_BEARER = (
    "changes need the access token as a header: Authorization: Bearer TOKEN "
    "(the value of DEPOTWATCH_DASHBOARD_TOKEN)"
)
NO_TOKEN_FOR_CHANGES = (
    "changes are disabled: this server has no access token; set DEPOTWATCH_DASHBOARD_TOKEN "
    "and send it as Authorization: Bearer TOKEN"
)


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


class TokenGate:
    """ASGI middleware: who may read and who may change.

    With ``DEPOTWATCH_DASHBOARD_TOKEN`` set, reads (the page, its events, ``GET /api/...``)
    need the token as ``?token=``, ``Authorization: Bearer`` or the cookie the page sets, unless
    ``read_token_required`` is off. Changes (POST/PUT/PATCH/DELETE) always need it, and only
    as a bearer header: a cookie a browser sends by itself never changes the config. Without a
    token, changes are refused. ``/healthz`` and the docs' script files are open.
    """

    OPEN_PREFIXES = ("/healthz", f"{DOCS_ASSETS}/")

    def __init__(self, app: ASGIApp, settings: DashboardSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # no websocket routes
            return
        if scope["type"] != "http" or scope["path"].startswith(self.OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        token = self.settings.token
        expected = token.get_secret_value().encode() if token is not None else None
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else None
        api = scope["path"].startswith("/api/")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            if expected is None:
                await _refuse(scope, receive, send, 403, api, NO_TOKEN_FOR_CHANGES)
            elif _same(bearer, expected):
                await self.app(scope, receive, send)
            else:
                await _refuse(scope, receive, send, 401, api, CHANGES_NEED_BEARER)
            return
        if expected is None or not self.settings.read_token_required:
            await self.app(scope, receive, send)
            return
        from_query = _same(request.query_params.get("token"), expected)
        if not (
            from_query
            or _same(bearer, expected)
            or _same(request.cookies.get(TOKEN_COOKIE), expected)
        ):
            await _refuse(scope, receive, send, 401, api, READS_NEED_TOKEN)
            return
        if not from_query:
            await self.app(scope, receive, send)
            return
        cookie = _token_cookie(expected.decode())
        if scope["path"] == "/":
            # Trade the token in the URL for a cookie and drop it from the address bar, so it
            # does not linger in browser history or get copied along with a link.
            redirect = Response(status_code=302, headers={"Location": "/"})
            redirect.raw_headers.append((b"set-cookie", cookie))
            await redirect(scope, receive, send)
            return

        async def send_with_cookie(message: Message_) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"set-cookie", cookie)],
                }
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _same(offered: str | None, expected: bytes) -> bool:
    # compare_digest: the time taken does not tell how much of a guess was right.
    return bool(offered) and hmac.compare_digest(str(offered).encode(), expected)


def _token_cookie(token: str) -> bytes:
    r = Response()
    r.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
    return next(v for k, v in r.raw_headers if k == b"set-cookie")


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, api: bool, text: str
) -> None:
    response: Response = (
        error_response(status, text) if api else PlainTextResponse(text + "\n", status_code=status)
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    await response(scope, receive, send)


class DashboardServer:
    """The web application (page, events, REST API) and the state behind it."""

    def __init__(
        self,
        config: FacilityConfig,
        settings: DashboardSettings,
        frame_loader: FrameLoader | None = None,
        config_path: Path | None = None,
        registry: CollectorRegistry = REGISTRY,
        history_reader: HistoryReader | None = None,
        jobs: JobsBackend | None = None,
        capture: CaptureSettings | None = None,
    ) -> None:
        self.state = DashboardState(config)
        self.jobs = jobs
        self.webrtc = WebRtcIngest(
            lambda: self.state.config, capture or CaptureSettings(), settings.ice_servers
        )
        self.history_reader = history_reader
        self.settings = settings
        self.hub = Broadcaster(settings.client_queue)
        self._frame_loader = frame_loader
        self._frames: OrderedDict[str, bytes] = OrderedDict()
        self._config_path = config_path
        self._config_stamp = file_stamp(config_path)
        self.editor = ConfigEditor(config_path) if config_path else None
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

    # ---- page handlers -----------------------------------------------------------------

    async def index(self) -> HTMLResponse:
        """The page."""
        return HTMLResponse((STATIC / "index.html").read_text())

    async def webrtc_page(self) -> HTMLResponse:
        """The browser camera page: stream this device's camera, see its detections."""
        return HTMLResponse((STATIC / "webrtc.html").read_text())

    async def static(self, name: str) -> Response:
        """Scripts and styles from package data."""
        types = {
            "app.js": "application/javascript",
            "app.css": "text/css",
            "webrtc.js": "application/javascript",
        }
        if name not in types:
            return PlainTextResponse(f"no static file {name}\n", status_code=404)
        return Response((STATIC / name).read_text(), media_type=types[name])

    async def snapshot(self) -> JSONResponse:
        """Everything the page shows, as JSON (for scripts and tests)."""
        return JSONResponse(self.state.snapshot())

    async def events(self) -> StreamingResponse:
        """Server-sent events: a snapshot, then every change as it happens."""

        async def stream() -> AsyncIterator[bytes]:
            # Subscribed only once the response streams: one never sent leaks no queue.
            q = self.hub.subscribe()
            try:
                yield _sse({"type": "snapshot", "data": self.state.snapshot()})
                while True:
                    try:
                        event = await asyncio.wait_for(q.get(), timeout=15.0)
                    except TimeoutError:
                        # A comment line keeps proxies from closing an idle stream.
                        yield b": keep-alive\n\n"
                        continue
                    yield _sse(event)
            finally:
                self.hub.unsubscribe(q)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def frame(self, camera_id: str) -> Response:
        """The latest stored frame of a camera (JPEG from the object store)."""
        ref = self.state.frames.get(camera_id)
        if ref is None:
            return PlainTextResponse(f"no frame from camera {camera_id} yet\n", status_code=404)
        if self._frame_loader is None:
            return PlainTextResponse("no object store configured for frames\n", status_code=503)
        cache_key = f"{ref.bucket}/{ref.key}"
        data = self._frames.get(cache_key)
        if data is None:
            try:
                data = await run_in_threadpool(self._frame_loader, ref.bucket, ref.key)
            except Exception as exc:
                log.warning("frame not loaded", extra={"camera_id": camera_id, "error": str(exc)})
                return PlainTextResponse(f"frame {cache_key} not loaded: {exc}\n", status_code=502)
            self._frames[cache_key] = data
            while len(self._frames) > self.settings.frame_cache:
                self._frames.popitem(last=False)
        etag = hashlib.sha256(cache_key.encode()).hexdigest()[:16]
        return Response(
            data,
            media_type=ref.content_type,
            headers={"Cache-Control": "private, max-age=3600", "ETag": etag},
        )

    async def metrics(self) -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self) -> Health:
        """Up, and how many browsers and messages."""
        return Health(
            ok=True, clients=len(self.hub), messages=self.messages, dropped=self.hub.dropped
        )

    # ---- config hot reload --------------------------------------------------------------

    def check_config(self) -> None:
        """Reload the facility config if its file changed; a broken file keeps the old one."""
        if self._config_path is None:
            return
        stamp = file_stamp(self._config_path)
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

    def use_config(self, cfg: FacilityConfig) -> None:
        """A config this server just wrote (an API camera change): in use at once, and the
        file's new stamp noted so it is not reloaded again."""
        self._config_stamp = file_stamp(self._config_path)
        self.hub.publish(self.state.set_config(cfg))

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()

        async def watch() -> None:
            while True:
                await asyncio.sleep(1.0)
                self.check_config()

        task = asyncio.create_task(watch())
        try:
            yield
        finally:
            task.cancel()
            await self.webrtc.close()
            if self.jobs is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.jobs.close)

    def app(self) -> FastAPI:
        """The one web application: the page, its event stream, the REST API and its docs."""
        app = FastAPIOffline(
            title="depotwatch",
            summary="Live state of the depot, its cameras and flows.",
            version=_version(),
            lifespan=self._lifespan,
            separate_input_output_schemas=False,
            static_url=DOCS_ASSETS,
            docs_url="/api/docs",
            redoc_url=None,
            openapi_url="/api/openapi.json",
        )
        for path, handler in (
            ("/", self.index),
            ("/webrtc", self.webrtc_page),
            ("/static/{name}", self.static),
            ("/api/snapshot", self.snapshot),
            ("/events", self.events),
            ("/frames/{camera_id}.jpg", self.frame),
            ("/metrics", self.metrics),
        ):
            app.add_api_route(path, handler, include_in_schema=False)
        app.add_api_route(
            "/healthz", self.healthz, response_model=Health, tags=["health"], summary="Liveness"
        )
        app.include_router(api_router(self))
        app.include_router(jobs_router(self.jobs, lambda: self.state.config))
        app.include_router(webrtc_router(self.webrtc))
        app.add_exception_handler(RequestValidationError, invalid_request)
        app.add_exception_handler(StarletteHTTPException, unparsable_body)
        app.add_middleware(TokenGate, settings=self.settings)
        if self.settings.cors_origin_list():
            # Outside the token gate: a browser's preflight carries no token, and a refusal
            # must carry the CORS headers for the calling page to read it.
            app.add_middleware(
                CORSMiddleware,
                allow_origins=self.settings.cors_origin_list(),
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
            )
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


def _version() -> str:
    try:
        return metadata.version("depotwatch")
    except metadata.PackageNotFoundError:
        return "0+unknown"
