"""Browser camera rules (which camera may stream, who owns a stream) and the offer API's
refusals, without a browser: plain values for the rules, the real app for the API."""

from __future__ import annotations

import pytest
import yaml
from aiortc import RTCConfiguration, RTCPeerConnection
from dashboard_builders import REPO
from pydantic import SecretStr
from web_harness import Client, run

from schemas.facility import FacilityConfig, parse_facility
from services.dashboard.config import DashboardSettings, IceServerSetting
from services.dashboard.server import DashboardServer
from services.dashboard.webrtc import (
    OfferRefusedError,
    WebRtcIngest,
    browser_camera,
    stream_conflict,
)
from services.runtime.capture_settings import CaptureSettings
from services.runtime.settings import SettingsError, load_settings

TOKEN = "webrtc-rules-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENT = "page-0123456789"


def facility(**phone: object) -> FacilityConfig:
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    cam = {**data["cameras"][0], "id": "cam-phone", "source": "webrtc://cam-phone", **phone}
    data["cameras"].append(cam)
    return parse_facility(data)


@pytest.mark.parametrize(
    ("camera_id", "status", "says"),
    [
        ("cam-nope", 404, "no camera 'cam-nope' in the facility config; browser cameras: ['cam-"),
        ("cam-s1", 409, "set its source to webrtc://cam-s1"),
    ],
)
def test_only_configured_browser_cameras_may_stream(camera_id: str, status: int, says: str) -> None:
    with pytest.raises(OfferRefusedError) as err:
        browser_camera(facility(), camera_id)
    assert err.value.status == status
    assert says in err.value.detail


def test_a_disabled_browser_camera_refuses_streams() -> None:
    assert browser_camera(facility(), "cam-phone").id == "cam-phone"
    with pytest.raises(OfferRefusedError, match="set enabled: true"):
        browser_camera(facility(enabled=False), "cam-phone")


@pytest.mark.parametrize(
    ("owner", "client", "takeover", "refused"),
    [
        (None, "a", False, False),  # nobody streams
        ("a", "a", False, False),  # the same page reconnects
        ("a", "b", False, True),  # another page
        ("a", "b", True, False),  # another page that takes over
    ],
)
def test_one_stream_per_camera(
    owner: str | None, client: str, takeover: bool, refused: bool
) -> None:
    assert stream_conflict(owner, client, takeover) is refused


def test_ice_servers_come_from_settings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "DEPOTWATCH_DASHBOARD_ICE_SERVERS",
        '[{"urls": ["turn:turn.lan:3478"], "username": "op", "credential": "hunter2"}]',
    )
    dash = load_settings(DashboardSettings)
    assert "hunter2" not in repr(dash)
    ingest = WebRtcIngest(facility, CaptureSettings(), dash.ice_servers)
    (server,) = ingest._rtc_ice_servers()
    assert (server.urls, server.username, server.credential) == (
        ["turn:turn.lan:3478"],
        "op",
        "hunter2",
    )
    # None configured: an empty list, never aiortc's default public STUN server.
    assert WebRtcIngest(facility, CaptureSettings())._rtc_ice_servers() == []


def test_a_malformed_ice_server_setting_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOTWATCH_DASHBOARD_ICE_SERVERS", '[{"url": "stun:x"}]')
    with pytest.raises(SettingsError) as err:
        load_settings(DashboardSettings)
    assert "DEPOTWATCH_DASHBOARD_ICE_SERVERS__0__URLS: Field required" in str(err.value)


async def offer_sdp(video: bool = True, receive_only: bool = False) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if receive_only:
        pc.addTransceiver("video", direction="recvonly")
    elif video:
        from aiortc import VideoStreamTrack

        pc.addTrack(VideoStreamTrack())
    else:
        pc.createDataChannel("no-video")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def test_offers_are_refused_with_one_line_naming_the_fix() -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        url = "/api/v1/webrtc/cam-phone/offer"
        good = {"sdp": await offer_sdp(), "type": "offer", "client_id": CLIENT}

        r = await client.post(url, json=good)
        assert r.status_code == 401  # offers are changes: bearer token only
        r = await client.post("/api/v1/webrtc/cam-nope/offer", json=good, headers=AUTH)
        assert r.status_code == 404
        assert "browser cameras: ['cam-phone']" in r.json()["detail"]
        r = await client.post("/api/v1/webrtc/cam-s1/offer", json=good, headers=AUTH)
        assert r.status_code == 409
        assert "webrtc://cam-s1" in r.json()["detail"]

        for sdp, why in (
            ("v=0\r\nm=video\r\n", "malformed"),
            ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "ICE username fragment or password"),
        ):
            r = await client.post(url, json={**good, "sdp": sdp}, headers=AUTH)
            assert r.status_code == 422
            (problem,) = r.json()["problems"]
            assert problem["field"] == "body.sdp"
            assert problem["problem"].startswith(f"body.sdp: not a usable SDP offer ({why}")
        r = await client.post(url, json={**good, "sdp": await offer_sdp(video=False)}, headers=AUTH)
        assert r.status_code == 422
        assert "the offer sends no video" in r.json()["problems"][0]["problem"]
        r = await client.post(
            url, json={**good, "sdp": await offer_sdp(receive_only=True)}, headers=AUTH
        )
        assert r.status_code == 422
        assert "the offer sends no video" in r.json()["problems"][0]["problem"]
        r = await client.post(url, json={**good, "client_id": "x"}, headers=AUTH)
        assert r.status_code == 422
        assert [p["field"] for p in r.json()["problems"]] == ["body.client_id"]
        r = await client.post(url, json={**good, "type": "answer"}, headers=AUTH)
        assert r.status_code == 422

        assert not server.webrtc.streaming()  # nothing refused left a stream behind
        r = await client.delete("/api/v1/webrtc/cam-phone", headers=AUTH)
        assert r.status_code == 404
        assert "not streaming" in r.json()["detail"]
        listed = (await client.get("/api/v1/webrtc", headers=AUTH)).json()
        assert listed == {
            "cameras": [
                {
                    "id": "cam-phone",
                    "fps": 2.0,
                    "width": 1280,
                    "height": 720,
                    "tracks": listed["cameras"][0]["tracks"],
                    "enabled": True,
                    "calibrated": True,
                    "streaming": False,
                    "since": None,
                    "frames": 0,
                }
            ],
            "ice_servers": [{"urls": ["stun:stun.lan:3478"], "username": None, "credential": None}],
        }
        page = await client.get("/webrtc", headers=AUTH)
        assert page.status_code == 200
        assert "static/webrtc.js" in page.text
        script = await client.get("/static/webrtc.js", headers=AUTH)
        assert script.headers["content-type"].startswith("application/javascript")

    run(
        check,
        token=TOKEN,
        config=facility(),
        ice_servers=[IceServerSetting(urls=["stun:stun.lan:3478"])],
    )


def test_turn_credentials_reach_the_page_but_not_the_logs() -> None:
    setting = IceServerSetting(urls=["turn:t:3478"], username="u", credential=SecretStr("pw"))
    assert "pw" not in repr(setting)
    cams = WebRtcIngest(facility, CaptureSettings(), [setting]).cameras()
    assert cams.ice_servers[0].credential == "pw"


def test_a_browser_camera_without_calibration_may_stream_and_is_listed_as_such() -> None:
    def uncalibrated() -> FacilityConfig:
        return facility(calibration=[])

    assert browser_camera(uncalibrated(), "cam-phone").id == "cam-phone"
    (cam,) = WebRtcIngest(uncalibrated, CaptureSettings(), []).cameras().cameras
    assert cam.calibrated is False
