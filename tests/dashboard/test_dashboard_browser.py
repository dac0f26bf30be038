"""The dashboard in headless Chromium, fed with FacilityState messages through the real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from dashboard_builders import REPO, loco, positions, service_env, state, true_loco, truth

from schemas.facility_state import CameraHealth
from schemas.frames import FrameRef
from services.benchmarks.chromium import Chromium, chromium_binary
from services.infra.processes import free_port
from services.runtime.kafka import MessageProducer
from services.runtime.settings import Settings
from services.runtime.storage import ObjectStore

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium_binary() is None, reason="needs chromium (apt-get install chromium)"
    ),
]

TOKEN = "s3cret-dashboard-token"
# Other tests share the broker and publish depot-north states and cam-s1 frames: this test's
# facility and camera have ids of their own, so the dashboard shows only what it publishes.
FACILITY = "dashboard-test"
CAMERA = "cam-dash"
PROD_GREEN = (47, 158, 68)  # --prod in app.css


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


@pytest.fixture(scope="module")
def dashboard(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``depotwatch dashboard`` as a subprocess on a free port; yields its base URL."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("dashboard")
    log = workdir / "dashboard.log"
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    data["facility_id"] = FACILITY
    data["cameras"].insert(0, {**data["cameras"][0], "id": CAMERA})
    config = workdir / "facility.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = service_env(
        stack_settings,
        DEPOTWATCH_DASHBOARD_PORT=str(port),
        DEPOTWATCH_DASHBOARD_TOKEN=TOKEN,
        DEPOTWATCH_FACILITY_CONFIG=str(config),
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "dashboard"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"dashboard exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if _get(f"{base}/healthz", 1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"dashboard did not answer within 30s: {log.read_text()[-2000:]}")
        yield base
    finally:
        proc.terminate()
        proc.wait(15)
    assert TOKEN not in log.read_text(), "the access token must never be logged"


def _publish_frame(stack: Settings, producer: MessageProducer) -> FrameRef:
    """A real JPEG in the object store and its FrameRef on frames.v1."""
    img = np.full((720, 1280, 3), (40, 40, 40), np.uint8)
    cv2.rectangle(img, (100, 200), (300, 400), (0, 200, 255), -1)
    ok, jpeg = cv2.imencode(".jpg", img)
    assert ok
    store = ObjectStore(stack.s3)
    stored = store.put(f"{CAMERA}/00000007.jpg", jpeg.tobytes(), "image/jpeg")
    ref = positions(CAMERA, 7).frame.model_copy(
        update={
            "bucket": stored.bucket,
            "key": stored.key,
            "size": stored.size,
            "sha256": stored.sha256,
        }
    )
    producer.publish_and_wait(ref)
    return ref


def test_token_is_required(dashboard: str) -> None:
    status, body = _get(f"{dashboard}/")
    assert status == 401
    assert b"DEPOTWATCH_DASHBOARD_TOKEN" in body
    assert _get(f"{dashboard}/api/snapshot?token=wrong")[0] == 401
    assert _get(f"{dashboard}/healthz")[0] == 200


def test_page_draws_locomotives_pushed_through_kafka(
    dashboard: str, stack_settings: Settings, tmp_path: Path
) -> None:
    producer = MessageProducer(stack_settings.kafka, "dashboard-test")
    ref = _publish_frame(stack_settings, producer)
    est = positions(CAMERA, 7).model_copy(update={"frame": ref})
    producer.publish_and_wait(est, flow="prod")
    producer.publish_and_wait(
        state(
            "prod",
            at_s=1,
            facility_id=FACILITY,
            T1=[loco("p1", 20, 3.03)],
            T2=[loco("p2", 40, 21.85, "2TE116-0002", "2TE116")],
        ),
        flow="prod",
    )
    producer.publish_and_wait(
        state("dev", at_s=1, facility_id=FACILITY, T1=[loco("d1", 20, 3.03)]), flow="dev"
    )
    producer.publish_and_wait(
        truth(
            true_loco("t1", "T1", 20, 3.03, "TEM2-0001", "TEM2"),
            true_loco("t2", "T2", 40, 21.85, "2TE116-0002", "2TE116"),
            facility_id=FACILITY,
        )
    )

    async def drive() -> None:
        async with Chromium() as page:
            await page.navigate(f"{dashboard}/?token={TOKEN}")
            # The states were published before the page opened: they come with the snapshot.
            await page.wait_for(
                "document.querySelectorAll('#plan polyline.loco.prod').length == 2", 30
            )
            labels = await page.evaluate(
                "[...document.querySelectorAll('#plan .loco-label')].map(e => e.textContent)"
            )
            assert sorted(labels) == ["2TE116-0002 2TE116", "TEM2-0001 TEM2"]
            # Pushed while the page is open: no reload, no polling.
            producer.publish_and_wait(
                state(
                    "prod",
                    at_s=2,
                    facility_id=FACILITY,
                    T1=[loco("p1", 20, 3.03)],
                    T2=[loco("p2", 40, 21.85, "2TE116-0002", "2TE116")],
                    T3=[loco("p3", 45, 23.3, "TE33A-0003", "TE33A")],
                ),
                flow="prod",
            )
            await page.wait_for(
                "document.querySelectorAll('#plan polyline.loco.prod').length == 3", 20
            )
            # Drawn to scale: the TE33A's polyline spans 21.7 m of the 48 m track's x range.
            span = await page.evaluate(
                "(() => { const p = document.querySelector(\"g[data-loco='p3'] polyline\")"
                ".points; return p.getItem(p.numberOfItems - 1).x - p.getItem(0).x; })()"
            )
            assert span == pytest.approx(21.7, abs=0.01)
            await page.wait_for(
                "document.querySelector('#tile-cam-dash img').naturalWidth == 1280", 20
            )
            await page.wait_for(
                "document.querySelectorAll('#tile-cam-dash rect.box.head').length == 1", 20
            )
            await page.wait_for(
                "document.getElementById('accuracy').textContent.includes('prod: found')", 20
            )
            health = await page.evaluate("document.getElementById('health').textContent")
            assert "cam-n4: stale" in health
            await page.screenshot(tmp_path / "prod.png")
            # Both flows: dev misses p2 and p3, which are highlighted.
            await page.evaluate("document.querySelector(\"button[data-flow='both']\").click()")
            await page.wait_for(
                "document.querySelectorAll('#plan polyline.loco.dev').length == 1", 10
            )
            diff = await page.evaluate(
                "[...document.querySelectorAll('#plan polyline.loco.diff')]"
                ".map(e => e.dataset.loco)"
            )
            assert sorted(diff) == ["p2", "p3"]
            await page.screenshot(tmp_path / "both.png")
            # Field failure: a green "live" over a state 53 minutes old. The page shows the
            # age of each flow's newest frame, red once it is stale.
            age_of = "document.querySelector(\"#state-age span[data-flow='prod']\")"
            assert await page.evaluate(f"{age_of}.className") == "stale-state"
            now = datetime.now(UTC)
            fresh = state("prod", at_s=3, facility_id=FACILITY, T1=[loco("p1", 20, 3.03)])
            fresh = fresh.model_copy(
                update={
                    "as_of": now,
                    "cameras": [CameraHealth(camera_id=CAMERA, status="ok", last_frame_at=now)],
                }
            )
            producer.publish_and_wait(fresh, flow="prod")
            await page.wait_for(f"{age_of}.className == 'fresh'", 20)
            assert "s old" in await page.evaluate(f"{age_of}.textContent")

    try:
        asyncio.run(drive())
    finally:
        producer.close()
    shot = cv2.imread(str(tmp_path / "prod.png"))
    assert shot is not None
    b, g, r = PROD_GREEN[2], PROD_GREEN[1], PROD_GREEN[0]
    green = np.all(np.abs(shot.astype(int) - (b, g, r)) <= 12, axis=2)
    # Three locomotives ~3 m wide and 17-22 m long at ~25 px/m cover thousands of pixels.
    assert int(green.sum()) > 3000, f"only {int(green.sum())} locomotive-coloured pixels"
