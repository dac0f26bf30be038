"""The REST API under ``/api/v1``: the depot now, its cameras and flows, and camera changes.

Reads answer from the same in-memory state the page is drawn from (the latest message of each
kind from Kafka, :class:`~services.dashboard.core.DashboardState`). Camera changes go to the
facility file through :class:`~services.dashboard.config_edit.ConfigEditor`: validated exactly
like ``depotwatch config check`` (422 with one line per problem, nothing written), written
atomically with the old version kept, and picked up by running services like any file edit.
Access rules (token for reads, bearer token for changes) are in
:class:`~services.dashboard.server.TokenGate`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from schemas.api import (
    Agreement,
    ApiError,
    CameraView,
    FlowAccuracy,
    FlowComparison,
    FlowView,
    Problem,
    Rejected,
    StateHistory,
)
from schemas.facility import Camera, ConfigError, FacilityConfig, redact_url
from schemas.facility_state import FacilityState
from services.dashboard.config_edit import (
    CameraExistsError,
    ConfigChangedError,
    ConfigEditor,
    ConfigWriteError,
    UnknownCameraError,
)
from services.dashboard.core import thin_states

if TYPE_CHECKING:
    from services.dashboard.server import DashboardServer

COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    # Every /api/v1 route may answer these.
    401: {"model": ApiError, "description": "The access token is missing or wrong."},
    422: {"model": Rejected, "description": "Invalid request (or config change); one line each."},
}
_CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **COMMON_ERRORS,
    403: {"model": ApiError, "description": "Changes are disabled (no token configured)."},
    409: {"model": ApiError, "description": "The id is taken, or the file changed meanwhile."},
    503: {"model": ApiError, "description": "The facility file cannot be changed here."},
}
HISTORY_MAX = timedelta(hours=1)
"""Longest range one history request may ask for."""
HISTORY_SLACK = timedelta(seconds=5)
"""States are read this far past the range's end by broker time: one stamped inside the
range reaches the broker later (the pipeline's latency)."""
HISTORY_READS = 2
"""History reads at once (each holds a Kafka consumer and a thread for up to 20 s)."""
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ApiError}}


def _camera_body(partial: bool) -> dict[str, Any]:
    """The request body as documented: a Camera, or any of its fields for PATCH."""
    schema: dict[str, Any] = {"$ref": "#/components/schemas/Camera"}
    if partial:
        full = Camera.model_json_schema(ref_template="#/components/schemas/{model}")
        schema = {
            "type": "object",
            "properties": full["properties"],
            "additionalProperties": False,
            "minProperties": 1,
        }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def error_response(status: int, detail: str) -> JSONResponse:
    """Any refusal of the app (the token gate's included): ``{"detail": ...}``."""
    return JSONResponse(ApiError(detail=detail).model_dump(), status_code=status)


def rejected_response(
    problems: list[str],
    detail: str = "the change would break the facility config; nothing was written",
) -> JSONResponse:
    """A 422: one ``field: problem; fix`` line each, the field read from the line."""
    body = Rejected(
        detail=detail,
        problems=[Problem(field=p.split(": ", 1)[0], problem=p) for p in problems],
    )
    return JSONResponse(body.model_dump(), status_code=422)


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own parameter and body checks, answered in the API's one 422 shape."""
    assert isinstance(exc, RequestValidationError)
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()))
        lines.append(f"{where}: {err.get('msg', 'invalid')}")
    return rejected_response(lines, "the request is not valid; nothing was changed")


async def unparsable_body(request: Request, exc: Exception) -> Response:
    """FastAPI answers a body that is not JSON with a bare 400; the API answers it like any
    other invalid request (422, one line). Other HTTP errors keep FastAPI's answer."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and request.url.path.startswith("/api/"):
        return rejected_response(
            [f"body: {exc.detail}; send a JSON object (Content-Type: application/json)"],
            "the request is not valid; nothing was changed",
        )
    return await http_exception_handler(request, exc)


async def _json_object(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past any camera
        body = None
    if not isinstance(body, dict):
        return rejected_response(
            [
                "body: is not a JSON object; send the camera as JSON, e.g. "
                '{"id": "cam-n5", "source": "rtsp://192.0.2.15:554/stream1", ...}'
            ],
            "the request body is not a camera; nothing was written",
        )
    return body


async def _camera_fields(
    request: Request, camera_id: str, id_fix: str
) -> dict[str, Any] | JSONResponse:
    """The body of a change to the camera in the path: a JSON object whose id, if any, is it."""
    body = await _json_object(request)
    if not isinstance(body, JSONResponse) and body.get("id", camera_id) != camera_id:
        return rejected_response(
            [f"id: {body.get('id')!r} differs from {camera_id!r} in the path; {id_fix}"]
        )
    return body


def api_router(server: DashboardServer) -> APIRouter:
    """The ``/api/v1`` routes, answering from ``server``'s state and editing its config file."""
    router = APIRouter(
        prefix="/api/v1",
        responses=COMMON_ERRORS,
        dependencies=[Security(HTTPBearer(auto_error=False, description="The access token."))],
    )

    def now() -> datetime:
        return datetime.now(UTC)

    history_slots = asyncio.Semaphore(HISTORY_READS)

    def view(camera_id: str) -> CameraView | None:
        return next((v for v in server.state.camera_views(now()) if v.camera.id == camera_id), None)

    async def change(edit: Callable[[ConfigEditor], FacilityConfig]) -> Response | None:
        """Run one edit of the facility file; None when it was written (and is in use here
        at once), else the error."""
        if server.editor is None:
            return error_response(
                503, "this server was started without a facility file; nothing to edit"
            )
        try:
            cfg = await run_in_threadpool(edit, server.editor)
        except ConfigError as exc:
            return rejected_response(exc.problems)
        except UnknownCameraError as exc:
            return error_response(404, str(exc))
        except (CameraExistsError, ConfigChangedError) as exc:
            return error_response(409, str(exc))
        except ConfigWriteError as exc:
            return error_response(503, str(exc))
        server.use_config(cfg)
        return None

    @router.get("/facility", response_model=FacilityConfig, tags=["facility"])
    async def facility() -> FacilityConfig:
        """Tracks, cameras (sources without credentials), flows and locomotive models."""
        cfg = server.state.config
        cams = [c.model_copy(update={"source": redact_url(c.source)}) for c in cfg.cameras]
        return cfg.model_copy(update={"cameras": cams})

    @router.get("/cameras", response_model=list[CameraView], tags=["cameras"])
    async def cameras() -> list[CameraView]:
        """Every configured camera with its health: last frame, frame rate, stale, per flow."""
        return server.state.camera_views(now())

    @router.get(
        "/cameras/{camera_id}", response_model=CameraView, responses=_NOT_FOUND, tags=["cameras"]
    )
    async def camera(camera_id: str) -> CameraView | Response:
        """One camera and its health."""
        found = view(camera_id)
        if found is None:
            return error_response(
                404, f"no camera {camera_id!r}; GET /api/v1/cameras lists the ids"
            )
        return found

    @router.post(
        "/cameras",
        status_code=201,
        response_model=CameraView,
        responses=_CHANGE_ERRORS,
        openapi_extra=_camera_body(partial=False),
        tags=["cameras"],
    )
    async def add_camera(request: Request) -> CameraView | Response:
        """Add a camera. Validated like ``config check``; services pick it up without restart."""
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        refused = await change(lambda ed: ed.add_camera(body))
        return refused or view(str(body.get("id"))) or error_response(500, "camera not reloaded")

    @router.put(
        "/cameras/{camera_id}",
        response_model=CameraView,
        responses={**_CHANGE_ERRORS, **_NOT_FOUND},
        openapi_extra=_camera_body(partial=False),
        tags=["cameras"],
    )
    async def replace_camera(camera_id: str, request: Request) -> CameraView | Response:
        """Replace a camera whole. A source sent back as shown (``***@``) keeps its password."""
        body = await _camera_fields(
            request,
            camera_id,
            "send the same id (a camera is renamed by adding the new one and removing the old)",
        )
        if isinstance(body, Response):
            return body
        refused = await change(lambda ed: ed.replace_camera(camera_id, body))
        return refused or view(camera_id) or error_response(500, "camera not reloaded")

    @router.patch(
        "/cameras/{camera_id}",
        response_model=CameraView,
        responses={**_CHANGE_ERRORS, **_NOT_FOUND},
        openapi_extra=_camera_body(partial=True),
        tags=["cameras"],
    )
    async def update_camera(camera_id: str, request: Request) -> CameraView | Response:
        """Change some fields of a camera; ``{"enabled": false}`` disables it."""
        body = await _camera_fields(request, camera_id, "leave id out")
        if isinstance(body, Response):
            return body
        if not body:
            return rejected_response(['body: is empty; send the fields to change, e.g. {"fps": 1}'])
        refused = await change(lambda ed: ed.update_camera(camera_id, body))
        return refused or view(camera_id) or error_response(500, "camera not reloaded")

    @router.delete(
        "/cameras/{camera_id}",
        status_code=204,
        response_class=Response,
        responses={**_CHANGE_ERRORS, **_NOT_FOUND},
        tags=["cameras"],
    )
    async def remove_camera(camera_id: str) -> Response:
        """Remove a camera from the facility file (the previous file is kept as a backup)."""
        refused = await change(lambda ed: ed.remove_camera(camera_id))
        return refused or Response(status_code=204)

    @router.get("/flows", response_model=list[FlowView], tags=["flows"])
    async def flows() -> list[FlowView]:
        """Every configured flow and the age of its latest facility state."""
        return server.state.flow_views(now())

    @router.get(
        "/flows/{flow}/state", response_model=FacilityState, responses=_NOT_FOUND, tags=["flows"]
    )
    async def flow_state(flow: str) -> FacilityState | Response:
        """The flow's latest facility state: locomotives per track, camera health, latency."""
        if flow not in server.state.config.flows:
            return error_response(404, f"no flow {flow!r}; GET /api/v1/flows lists them")
        st = server.state.states.get(flow)
        if st is None:
            return error_response(404, f"flow {flow!r} has published no facility state yet")
        return st

    @router.get(
        "/flows/{flow}/history",
        response_model=StateHistory,
        responses={**_NOT_FOUND, 429: {"model": ApiError}, 503: {"model": ApiError}},
        tags=["flows"],
    )
    async def flow_history(
        flow: str,
        start: Annotated[datetime, Query(description="Range start, ISO 8601 with a time zone.")],
        end: Annotated[
            datetime | None,
            Query(description="Range end, ISO 8601 with a time zone (default: now)."),
        ] = None,
        every_s: Annotated[
            float, Query(ge=0.1, le=3600, description="At most one state per this many seconds.")
        ] = 1.0,
    ) -> StateHistory | Response:
        """The flow's facility states over at most one hour, read from its state topic.

        The topic is compacted to the latest state per facility; Kafka keeps every state
        younger than ``DEPOTWATCH_TOPICS__STATE_HISTORY_HOURS`` (``min.compaction.lag.ms``),
        so ranges within that window are complete."""
        if flow not in server.state.config.flows:
            return error_response(404, f"no flow {flow!r}; GET /api/v1/flows lists them")
        end = end or now()
        problems = [
            f"query.{name}: has no time zone; write e.g. 2026-12-03T12:00:00Z"
            for name, t in (("start", start), ("end", end))
            if t.tzinfo is None
        ]
        try:
            if not problems:
                start, end = start.astimezone(UTC), end.astimezone(UTC)
                read_to = end + HISTORY_SLACK
        except (OverflowError, ValueError):
            problems.append("query.start: is outside the years 1-9999; give a real time")
        if not problems and end <= start:
            problems.append("query.end: is not after start; swap them or widen the range")
        if not problems and end - start > HISTORY_MAX:
            problems.append("query.end: the range is longer than 1 h; ask in hour-long pieces")
        if problems:
            return rejected_response(problems, "the time range is not valid")
        if server.history_reader is None:
            return error_response(
                503, "this server reads no Kafka topics; state history is unavailable"
            )
        if history_slots.locked():
            return error_response(
                429, f"{HISTORY_READS} history reads are running; retry in a few seconds"
            )
        async with history_slots:
            try:
                states = await run_in_threadpool(server.history_reader, flow, start, read_to)
            except ConnectionError as exc:
                return error_response(
                    503, f"cannot read the state topic ({exc}); is the broker up?"
                )
            except LookupError as exc:
                return error_response(404, f"{exc}; has flow {flow!r} published any state?")
        facility_id = server.state.config.facility_id
        return StateHistory(
            flow=flow,
            start=start,
            end=end,
            every_s=every_s,
            states=thin_states(
                [
                    s
                    for s in states
                    if start <= s.as_of <= end and s.flow == flow and s.facility_id == facility_id
                ],
                every_s,
            ),
        )

    @router.get("/agreement", response_model=Agreement, tags=["flows"])
    async def agreement() -> Agreement:
        """prod vs dev (or the first two flows), and each flow vs ground truth when known."""
        comparison = server.state.comparison()
        return Agreement(
            comparison=FlowComparison.model_validate(comparison) if comparison else None,
            accuracy={
                f: FlowAccuracy.model_validate(a) for f, a in server.state.accuracy().items()
            },
        )

    return router
