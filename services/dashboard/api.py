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

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Security
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from schemas.api import (
    Agreement,
    ApiError,
    CameraView,
    ConfigProblem,
    ConfigRejected,
    FlowAccuracy,
    FlowComparison,
    FlowView,
)
from schemas.facility import Camera, ConfigError, FacilityConfig, redact_url
from schemas.facility_state import FacilityState
from services.dashboard.config_edit import CameraExistsError, ConfigEditor, UnknownCameraError

if TYPE_CHECKING:
    from services.dashboard.server import DashboardServer

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ApiError, "description": "The access token is missing or wrong."},
}
_CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    403: {"model": ApiError, "description": "Changes are disabled (no token configured)."},
    422: {"model": ConfigRejected, "description": "The change would break the config."},
    503: {"model": ApiError, "description": "This server has no facility file to change."},
}
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


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(ApiError(detail=detail).model_dump(), status_code=status)


def _rejected(problems: list[str]) -> JSONResponse:
    body = ConfigRejected(
        detail="the change would break the facility config; nothing was written",
        problems=[ConfigProblem(field=p.split(": ", 1)[0], problem=p) for p in problems],
    )
    return JSONResponse(body.model_dump(), status_code=422)


async def _json_object(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return _rejected(
            [
                "body: is not a JSON object; send the camera as JSON, e.g. "
                '{"id": "cam-n5", "source": "rtsp://192.0.2.15:554/stream1", ...}'
            ]
        )
    return body


def api_router(server: DashboardServer) -> APIRouter:
    """The ``/api/v1`` routes, answering from ``server``'s state and editing its config file."""
    router = APIRouter(
        prefix="/api/v1",
        responses=_ERRORS,
        dependencies=[Security(HTTPBearer(auto_error=False, description="The access token."))],
    )

    def now() -> datetime:
        return datetime.now(UTC)

    def view(camera_id: str) -> CameraView | None:
        return next((v for v in server.state.camera_views(now()) if v.camera.id == camera_id), None)

    async def change(edit: Callable[[ConfigEditor], object]) -> Response | None:
        """Run one edit of the facility file; None when it was written, else the error."""
        if server.editor is None:
            return _error(503, "this server was started without a facility file; nothing to edit")
        try:
            await run_in_threadpool(edit, server.editor)
        except ConfigError as exc:
            return _rejected(exc.problems)
        except UnknownCameraError as exc:
            return _error(404, str(exc))
        except CameraExistsError as exc:
            return _error(409, str(exc))
        server.check_config()
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
            return _error(404, f"no camera {camera_id!r}; GET /api/v1/cameras lists the ids")
        return found

    @router.post(
        "/cameras",
        status_code=201,
        response_model=CameraView,
        responses={**_CHANGE_ERRORS, 409: {"model": ApiError}},
        openapi_extra=_camera_body(partial=False),
        tags=["cameras"],
    )
    async def add_camera(request: Request) -> CameraView | Response:
        """Add a camera. Validated like ``config check``; services pick it up without restart."""
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        refused = await change(lambda ed: ed.add_camera(body))
        return refused or view(str(body.get("id"))) or _error(500, "camera not reloaded")

    @router.put(
        "/cameras/{camera_id}",
        response_model=CameraView,
        responses={**_CHANGE_ERRORS, **_NOT_FOUND},
        openapi_extra=_camera_body(partial=False),
        tags=["cameras"],
    )
    async def replace_camera(camera_id: str, request: Request) -> CameraView | Response:
        """Replace a camera whole. A source sent back as shown (``***@``) keeps its password."""
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        if body.get("id", camera_id) != camera_id:
            return _rejected(
                [
                    f"id: {body.get('id')!r} differs from {camera_id!r} in the path; send the same "
                    "id (a camera is renamed by adding the new one and removing the old)"
                ]
            )
        refused = await change(lambda ed: ed.replace_camera(camera_id, body))
        return refused or view(camera_id) or _error(500, "camera not reloaded")

    @router.patch(
        "/cameras/{camera_id}",
        response_model=CameraView,
        responses={**_CHANGE_ERRORS, **_NOT_FOUND},
        openapi_extra=_camera_body(partial=True),
        tags=["cameras"],
    )
    async def update_camera(camera_id: str, request: Request) -> CameraView | Response:
        """Change some fields of a camera; ``{"enabled": false}`` disables it."""
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        if body.get("id", camera_id) != camera_id:
            return _rejected(
                [f"id: {body.get('id')!r} differs from {camera_id!r} in the path; leave id out"]
            )
        refused = await change(lambda ed: ed.update_camera(camera_id, body))
        return refused or view(camera_id) or _error(500, "camera not reloaded")

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
            return _error(404, f"no flow {flow!r}; GET /api/v1/flows lists them")
        st = server.state.states.get(flow)
        if st is None:
            return _error(404, f"flow {flow!r} has published no facility state yet")
        return st

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
