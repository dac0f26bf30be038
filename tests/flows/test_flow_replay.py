"""replay's frame loop and run's process plan (no broker, no detector)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from schemas.base import Message
from schemas.estimates import PositionEstimate
from schemas.facility import load_facility
from schemas.frames import FrameRef
from services.flows.__main__ import flow_services
from services.flows.replay import missing_start, replay_frames
from services.runtime.frames import DecodedFrame, FrameOutcome, Rejected, decode_frame

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def stored_frame(camera: str, seq: int, at_s: float) -> tuple[FrameRef, bytes]:
    image = np.full((36, 64, 3), seq * 10 % 255, dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    data = jpeg.tobytes()
    ref = FrameRef(
        camera_id=camera,
        seq=seq,
        captured_at=T0 + timedelta(seconds=at_s),
        bucket="depotwatch-frames",
        key=f"{camera}/{seq}.jpg",
        width=64,
        height=36,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return ref, data


def empty_positions(frames: Sequence[DecodedFrame]) -> list[FrameOutcome]:
    """A stand-in estimator core: one empty estimate per frame; rejects camera 'bad'."""
    out: list[FrameOutcome] = []
    for f in frames:
        if f.ref.camera_id == "bad":
            out.append(Rejected("unknown camera"))
            continue
        out.append(
            [
                PositionEstimate(
                    flow="dev",
                    camera_id=f.ref.camera_id,
                    frame=f.ref,
                    estimator="stub/0",
                    model_version="stub",
                    estimated_at=f.ref.captured_at,
                )
            ]
        )
    return out


def test_replay_runs_every_frame_in_capture_order_and_reports_problems() -> None:
    stored = dict(
        stored_frame(cam, seq, at) for cam, seq, at in [("a", 2, 1.0), ("b", 1, 0.5), ("a", 1, 0.0)]
    )
    bad_ref, bad_data = stored_frame("bad", 1, 0.2)
    missing_ref, _ = stored_frame("gone", 1, 0.3)
    stored[bad_ref] = bad_data
    published: list[Message] = []

    def fetch(ref: FrameRef) -> bytes:
        if ref.camera_id == "gone":
            raise RuntimeError("object missing")
        return stored[ref]

    report = replay_frames(
        [*stored, missing_ref], fetch, decode_frame, [empty_positions], published.append, batch=2
    )
    assert [(m.camera_id, m.frame.seq) for m in published] == [  # type: ignore[attr-defined]
        ("a", 1),
        ("b", 1),
        ("a", 2),
    ]
    assert report.frames == 4
    assert len(report.rejected) == 2
    assert any("object missing" in r for r in report.rejected)
    assert any("unknown camera" in r for r in report.rejected)


def test_corrupt_frame_is_rejected_not_fatal() -> None:
    ref, data = stored_frame("a", 1, 0.0)
    report = replay_frames([ref], lambda r: data[:-10], decode_frame, [empty_positions], print)
    assert report.frames == 0
    assert len(report.rejected) == 1


def test_run_plans_only_the_flows_estimators() -> None:
    cfg = load_facility(REPO / "facility.yaml")
    names = [s.name for s in flow_services(cfg, REPO / "facility.yaml", "dev")]
    assert names == ["position-estimator/dev", "plate-ocr/dev", "state-estimator/dev"]
    assert all("--flow" in s.argv and "dev" in s.argv for s in flow_services(cfg, Path("f"), "dev"))


def test_run_names_unknown_flow() -> None:
    cfg = load_facility(REPO / "facility.yaml")
    with pytest.raises(Exception, match="unknown flow 'qa'"):
        flow_services(cfg, REPO / "facility.yaml", "qa")


def test_replay_reads_the_plates_of_the_position_estimates_it_makes() -> None:
    """A flow with a plate reader is replayed as it runs live: positions first, then the
    plate reader on their boxes; each frame's outcome holds both, a rejected frame neither."""
    from schemas.estimates import IdentityEstimate
    from services.flows.replay import with_plates
    from services.plate_ocr.identity import IdentityEstimator

    class NoText:
        def recognise(self, crops: Sequence[object]) -> list[tuple[str, float]]:
            raise AssertionError("no plate box: nothing to read")

    facility = load_facility(REPO / "facility.yaml")
    plates = IdentityEstimator(lambda: facility, NoText(), "dev", "plate-ocr/test", 0.6)
    frames = [
        decode_frame(ref, data)
        for ref, data in (stored_frame("cam-s1", 1, 0.0), stored_frame("bad", 1, 0.1))
    ]
    good, bad = with_plates(empty_positions, plates)(frames)
    assert isinstance(bad, Rejected)
    assert not isinstance(good, Rejected)
    position, identity = good
    assert isinstance(position, PositionEstimate)
    assert isinstance(identity, IdentityEstimate)
    assert identity.frame == position.frame
    assert identity.unreadable_reason == "no plate in view"


def test_replay_notes_a_range_whose_start_has_left_the_topic() -> None:
    refs = [stored_frame("cam-a", seq, 600.0 + seq)[0] for seq in range(3)]
    note = missing_start(refs, T0, max_batches=3000)
    assert note is not None
    assert "10.0 min after --from" in note
    assert "DEPOTWATCH_INFRA__BROKER_MAX_BATCHES=3000" in note  # names the knob and its value
    assert missing_start(refs, T0 + timedelta(seconds=580), 3000) is None  # within a minute
    empty = missing_start([], T0, 3000)
    assert empty is not None
    assert empty.startswith("note: no frame reference in that range")
