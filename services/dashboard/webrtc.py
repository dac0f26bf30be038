"""Browser and phone cameras: a page streams over WebRTC, frames go on like any capture's.

A camera whose source is ``webrtc://<its id>`` has no capture process. Its operator opens
``/webrtc`` on the web app, picks the camera and allows camera access; the page sends an SDP
offer to ``POST /api/v1/webrtc/{camera}/offer`` and streams. Here aiortc receives and decodes
the track, frames are kept at the camera's fps by capture (arrival) time with the same
:class:`~services.runtime.decimation.FrameDecimator` as capture, and handed to a
:class:`~services.runtime.frame_outlet.FrameOutlet`: same ZeroMQ transport to the aggregator,
same frame header and sequence numbers, same ``depotwatch_capture_*`` metrics. Downstream
(S3, ``frames.v1``, estimators, fusion) cannot tell a phone from an IP camera.

Rules (documented in the README):

- **One stream per camera.** An offer for a camera another page is streaming is refused with
  409, unless it asks to take over (``takeover: true``), which ends the other stream. The
  same page (same ``client_id``) reconnecting replaces its own stream without asking.
- A stream that delivers no frame for ``DEPOTWATCH_CAPTURE__WATCHDOG_S`` is ended (the page
  reconnects), like a capture reopening a silent RTSP stream.
- ICE servers come from ``DEPOTWATCH_DASHBOARD_ICE_SERVERS`` only: with none configured,
  nothing outside the LAN is contacted (aiortc's default would ask a public STUN server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from fastapi import APIRouter, Query
from prometheus_client import Counter, Gauge
from starlette.responses import Response

from schemas.api import (
    ApiError,
    BrowserCamera,
    BrowserCameras,
    IceServer,
    WebRtcAnswer,
    WebRtcOffer,
)
from schemas.facility import Camera, FacilityConfig
from services.dashboard.api import COMMON_ERRORS, error_response, rejected_response
from services.dashboard.config import IceServerSetting
from services.runtime.capture_settings import CaptureSettings
from services.runtime.decimation import FrameDecimator
from services.runtime.frame_outlet import FrameOutlet, Image

log = logging.getLogger(__name__)

OFFERS = Counter(
    "depotwatch_webrtc_offers_total",
    "Browser camera offers, by result (accepted, or why refused)",
    ["result"],
)
STREAMING = Gauge(
    "depotwatch_webrtc_streaming", "1 while a browser streams the camera", ["camera_id"]
)
STREAMS_ENDED = Counter(
    "depotwatch_webrtc_streams_ended_total",
    "Browser camera streams that ended, by reason",
    ["camera_id", "reason"],
)


class OfferRefusedError(Exception):
    """An offer this server will not answer: HTTP status, result label and a one-line fix."""

    def __init__(self, status: int, result: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.result = result
        self.detail = detail


# ---- the rules (pure) --------------------------------------------------------------------


def browser_camera(cfg: FacilityConfig, camera_id: str) -> Camera:
    """The camera an offer names, if a browser may stream it; else :class:`OfferRefusedError`."""
    cam = next((c for c in cfg.cameras if c.id == camera_id), None)
    if cam is None:
        known = [c.id for c in cfg.cameras if c.webrtc]
        raise OfferRefusedError(
            404,
            "unknown_camera",
            f"no camera {camera_id!r} in the facility config; browser cameras: {known or 'none'} "
            f"(add one with source: webrtc://<id>)",
        )
    if not cam.webrtc:
        raise OfferRefusedError(
            409,
            "not_webrtc",
            f"camera {camera_id!r} is read from its own source, not from a browser; to stream "
            f"it from this page set its source to webrtc://{camera_id}",
        )
    if not cam.enabled:
        raise OfferRefusedError(
            409,
            "disabled",
            f"camera {camera_id!r} is disabled; set enabled: true to stream it",
        )
    return cam


def stream_conflict(owner: str | None, client_id: str, takeover: bool) -> bool:
    """Whether an offer from ``client_id`` must be refused because ``owner`` streams the
    camera: another page's stream is only replaced when the offer asks to take over."""
    return owner is not None and owner != client_id and not takeover


# ---- the streams -------------------------------------------------------------------------


@dataclass
class BrowserStream:
    """One page streaming one camera."""

    camera: Camera
    client_id: str
    pc: RTCPeerConnection
    outlet: FrameOutlet
    since: datetime
    frames: int = 0
    ended: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _keep(outlet: FrameOutlet, frame: Any, captured_at: datetime) -> bool:
    # In a worker thread: YUV -> BGR, resize to the configured size, JPEG, queue.
    image: Image = frame.to_ndarray(format="bgr24")
    return outlet.put(image, captured_at)


class WebRtcIngest:
    """Answers browser offers and feeds their frames to the aggregator (on the event loop)."""

    def __init__(
        self,
        config: Callable[[], FacilityConfig],
        capture: CaptureSettings,
        ice_servers: Sequence[IceServerSetting] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self.capture = capture
        self.ice_servers = list(ice_servers)
        self.clock = clock
        self._streams: dict[str, BrowserStream] = {}
        self._started: dict[str, int] = {}
        self._lock = asyncio.Lock()

    # -- what the page asks --------------------------------------------------------------
    def cameras(self) -> BrowserCameras:
        """The browser cameras of the config now, with their streams, and the ICE servers."""
        cams = []
        for cam in self._config().cameras:
            if not cam.webrtc:
                continue
            s = self._streams.get(cam.id)
            cams.append(
                BrowserCamera(
                    id=cam.id,
                    fps=cam.fps,
                    width=cam.width,
                    height=cam.height,
                    tracks=list(cam.tracks),
                    enabled=cam.enabled,
                    calibrated=cam.calibrated,
                    streaming=s is not None,
                    since=s.since if s else None,
                    frames=s.frames if s else 0,
                )
            )
        return BrowserCameras(cameras=cams, ice_servers=self._ice())

    def streaming(self) -> dict[str, BrowserStream]:
        """Streams now, by camera id."""
        return dict(self._streams)

    # -- offers --------------------------------------------------------------------------
    async def offer(self, camera_id: str, offer: WebRtcOffer) -> WebRtcAnswer:
        """Answer a page's offer and start taking its frames; :class:`OfferRefusedError` if not."""
        try:
            answer = await self._offer(camera_id, offer)
        except OfferRefusedError as exc:
            OFFERS.labels(exc.result).inc()
            log.warning(
                "browser camera offer refused",
                extra={"camera_id": camera_id, "reason": exc.detail, "status": exc.status},
            )
            raise
        OFFERS.labels("accepted").inc()
        return answer

    async def _offer(self, camera_id: str, offer: WebRtcOffer) -> WebRtcAnswer:
        cam = browser_camera(self._config(), camera_id)
        async with self._lock:
            current = self._streams.get(camera_id)
            owner = current.client_id if current else None
            if current and stream_conflict(owner, offer.client_id, offer.takeover):
                raise OfferRefusedError(
                    409,
                    "busy",
                    f"camera {camera_id!r} is already streaming from another page (since "
                    f"{current.since:%H:%M:%S} UTC); stop it there, or take over "
                    "(takeover: true) to replace that stream",
                )
            pc = RTCPeerConnection(RTCConfiguration(iceServers=self._rtc_ice_servers()))
            outlet = FrameOutlet(cam, self.capture.queue_frames)
            outlet.reconnects = self._started.get(camera_id, 0)
            stream = BrowserStream(cam, offer.client_id, pc, outlet, datetime.now(UTC))

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                if track.kind == "video" and not stream.tasks:
                    stream.tasks.append(asyncio.create_task(self._pump(stream, track)))

            @pc.on("connectionstatechange")
            async def on_state() -> None:
                if pc.connectionState in ("failed", "closed"):
                    await self._end(stream, pc.connectionState)

            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
                if not stream.tasks:  # "track" fires in setRemoteDescription
                    raise OfferRefusedError(
                        422,
                        "bad_offer",
                        "the offer sends no video; add the camera's track (getUserMedia) to "
                        "the connection, direction sendonly or sendrecv, before createOffer()",
                    )
                await pc.setLocalDescription(await pc.createAnswer())
            except OfferRefusedError:
                await pc.close()
                raise
            except Exception as exc:
                await pc.close()
                raise OfferRefusedError(
                    422,
                    "bad_offer",
                    f"not a usable SDP offer ({str(exc) or 'malformed'}); send the "
                    "description RTCPeerConnection.createOffer() made, with one video track",
                ) from None
            if current is not None:
                await self._end(current, "replaced")
            try:
                outlet.start(self.capture.aggregator_endpoint, self.capture.send_hwm)
            except ValueError as exc:
                await pc.close()
                raise OfferRefusedError(503, "no_aggregator", str(exc)) from None
            self._streams[camera_id] = stream
            self._started[camera_id] = self._started.get(camera_id, 0) + 1
            STREAMING.labels(camera_id).set(1)
            log.info(
                "browser camera streaming",
                extra={
                    "camera_id": camera_id,
                    "client_id": offer.client_id,
                    "replaced": current is not None,
                },
            )
            local = pc.localDescription
            return WebRtcAnswer(sdp=local.sdp, type=local.type)

    def _ice(self) -> list[IceServer]:
        """The configured ICE servers, TURN passwords in clear (the page needs them)."""
        return [
            IceServer(
                urls=list(i.urls),
                username=i.username,
                credential=i.credential.get_secret_value() if i.credential else None,
            )
            for i in self.ice_servers
        ]

    def _rtc_ice_servers(self) -> list[RTCIceServer]:
        return [RTCIceServer(i.urls, i.username, i.credential) for i in self._ice()]

    # -- frames --------------------------------------------------------------------------
    async def _pump(self, stream: BrowserStream, track: MediaStreamTrack) -> None:
        cam = stream.camera
        decimator = FrameDecimator(cam.fps, self.capture.decimation_tolerance)
        watchdog = self.capture.watchdog_s
        while not stream.ended:
            try:
                frame = await asyncio.wait_for(track.recv(), timeout=watchdog)
            except TimeoutError:
                await self._end(stream, "watchdog")
                return
            except MediaStreamError:
                await self._end(stream, "ended")
                return
            stream.outlet.read()
            if not decimator.keep(self.clock()):
                continue
            captured_at = datetime.now(UTC)
            if await asyncio.to_thread(_keep, stream.outlet, frame, captured_at):
                stream.frames += 1

    async def stop(self, camera_id: str, client_id: str | None) -> bool:
        """End the camera's stream (only the page's own when ``client_id`` is given)."""
        s = self._streams.get(camera_id)
        if s is None or (client_id is not None and s.client_id != client_id):
            return False
        await self._end(s, "stopped")
        return True

    async def close(self) -> None:
        """End every stream (the web app is stopping)."""
        for s in list(self._streams.values()):
            await self._end(s, "shutdown")

    async def _end(self, stream: BrowserStream, reason: str) -> None:
        if stream.ended:
            return
        stream.ended = True
        cid = stream.camera.id
        if self._streams.get(cid) is stream:
            del self._streams[cid]
            STREAMING.labels(cid).set(0)
        STREAMS_ENDED.labels(cid, reason).inc()
        current = asyncio.current_task()
        for task in stream.tasks:
            if task is not current:
                task.cancel()
        with contextlib.suppress(Exception):
            await stream.pc.close()
        await asyncio.to_thread(stream.outlet.stop)
        log.info(
            "browser camera stream ended",
            extra={"camera_id": cid, "reason": reason, "frames": stream.frames},
        )


# ---- routes ------------------------------------------------------------------------------

_OFFER_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ApiError, "description": "Changes are disabled (no token configured)."},
    404: {"model": ApiError, "description": "No such camera."},
    409: {
        "model": ApiError,
        "description": "Not a browser camera, disabled, or another page streams it.",
    },
    503: {"model": ApiError, "description": "The aggregator endpoint is unusable."},
}


def webrtc_router(ingest: WebRtcIngest) -> APIRouter:
    """``/api/v1/webrtc``: browser cameras, offers, and stopping a stream."""
    router = APIRouter(prefix="/api/v1/webrtc", tags=["browser cameras"], responses=COMMON_ERRORS)

    @router.get("", response_model=BrowserCameras)
    async def cameras() -> BrowserCameras:
        """Cameras a browser may stream (source webrtc://<id>), and the ICE servers to use."""
        return ingest.cameras()

    @router.post("/{camera_id}/offer", response_model=WebRtcAnswer, responses=_OFFER_ERRORS)
    async def offer(camera_id: str, body: WebRtcOffer) -> WebRtcAnswer | Response:
        """Stream camera ``camera_id`` from this browser: send the page's SDP offer (all ICE
        candidates gathered), get the answer. Needs the access token as a bearer header."""
        try:
            return await ingest.offer(camera_id, body)
        except OfferRefusedError as exc:
            if exc.status == 422:
                return rejected_response([f"body.sdp: {exc.detail}"], "the offer was refused")
            return error_response(exc.status, exc.detail)

    @router.delete("/{camera_id}", status_code=204, responses=_OFFER_ERRORS)
    async def stop(
        camera_id: str,
        client_id: str | None = Query(
            default=None, description="Stop only if this page is the one streaming."
        ),
    ) -> Response:
        """End the camera's browser stream (404 when none, or another page's)."""
        if await ingest.stop(camera_id, client_id):
            return Response(status_code=204)
        return error_response(404, f"camera {camera_id!r} is not streaming from this page")

    return router
