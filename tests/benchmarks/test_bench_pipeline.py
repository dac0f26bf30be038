"""The sizing benchmark's pure parts: which cameras stream what, stages, the report."""

from __future__ import annotations

import pytest

from services.benchmarks.pipeline import (
    TEST_BED,
    Floor,
    RunFigures,
    bench_cameras,
    report,
    s3_requests,
    stage_of,
)

CAMERAS = [
    {"id": "cam-a", "source": "rtsp://127.0.0.1:8554/a", "pose": {"x": 1}, "fps": 2},
    {"id": "cam-b", "source": "rtsp://127.0.0.1:8554/b", "pose": {"x": 2}, "fps": 2},
    {"id": "cam-phone", "source": "webrtc://cam-phone"},  # no pose, no clip: not streamed
]
SOURCES = {"cam-a": "rtsp://127.0.0.1:9/cam-a", "cam-b": "file:///clips/b.mp4"}


def test_cameras_beyond_the_posed_ones_replay_a_posed_view_under_another_id() -> None:
    cams = bench_cameras(CAMERAS, 5, 4.0, SOURCES)
    assert [c["id"] for c in cams] == ["cam-a", "cam-b", "cam-a-x2", "cam-b-x2", "cam-a-x3"]
    assert [c["source"] for c in cams] == [
        "rtsp://127.0.0.1:9/cam-a",
        "file:///clips/b.mp4",
        "rtsp://127.0.0.1:9/cam-a",
        "file:///clips/b.mp4",
        "rtsp://127.0.0.1:9/cam-a",
    ]
    assert all(c["fps"] == 4.0 and c["enabled"] and c["pose"] for c in cams)
    with pytest.raises(ValueError, match="no posed camera"):
        bench_cameras(CAMERAS[2:], 1, 2.0, SOURCES)


@pytest.mark.parametrize(
    ("service", "stage"),
    [
        ("capture/cam-s1", "capture"),
        ("position-estimator/prod", "position-estimator"),
        ("plate-ocr/dev", "plate-ocr"),
        ("state-estimator/prod", "state-estimator"),
        ("aggregator", "aggregator"),
        ("worker", "other"),
    ],
)
def test_each_service_belongs_to_its_stage(service: str, stage: str) -> None:
    assert stage_of(service) == stage


def run(latencies: list[float], skipped: float = 0.0) -> RunFigures:
    return RunFigures(
        cameras=8,
        fps=2.0,
        flows=["prod"],
        seconds=10.0,
        cpu_s={"capture": 2.0, "position-estimator": 1.6, "SeaweedFS": 4.0},
        stored=160.0,
        skipped={"position-estimator/prod": skipped} if skipped else {},
        latencies=latencies,
        stages={"ingest": [0.05, 0.1], "estimate": [0.3, 1.4], "fuse": [0.1, 0.2]},
    )


def test_the_report_shows_cpu_per_stored_frame_beside_the_floor_and_the_verdict() -> None:
    floors = [
        Floor("capture", "H.264 decode x7.5", 15.0),
        Floor("capture", "JPEG encode", 5.0),
        Floor("position-estimator", "JPEG decode", 1.0),
        Floor("position-estimator", "bare YOLO", 9.0),
        Floor("state-estimator", "fusion core", 0.5),  # a stage that did not run: not shown
    ]
    text = "\n".join(report(run([0.4] * 19 + [0.9]), floors))
    assert (
        "frames stored 16.00/s (offered 16/s); skipped: none; estimated: none; restarts: none"
        in text
    )
    assert "capture                 20%      12.5    20.0  H.264 decode x7.5 + JPEG encode" in text
    assert "position-estimator      16%      10.0    10.0  JPEG decode + bare YOLO" in text
    assert "SeaweedFS               40%      25.0  -" in text
    assert "total                   76%      47.5    30.5" in text
    assert "(goal p95 <= 1 s and 0 skipped: met)" in text
    assert "held back most by" not in text


def test_the_rtsp_servers_cpu_is_shown_apart_from_the_pipelines_total() -> None:
    served = run([0.4] * 20)
    served.streams = "RTSP streams"
    served.cpu_s = {**served.cpu_s, TEST_BED: 0.8}
    text = "\n".join(report(served, None))
    assert "8 cameras x 2 fps from 15 fps H.264 RTSP streams, flows prod" in text
    assert "total                   76%      47.5" in text  # as without the server
    assert "RTSP server (test bed)     8%       5.0  (not in the total: the cameras)" in text


def test_a_run_that_skips_frames_or_is_late_misses_and_names_the_slowest_stage() -> None:
    late = run([0.5] * 10 + [2.0] * 10)
    assert not late.held
    assert late.slowest_stage() == "estimate"
    assert "held back most by: estimate" in "\n".join(report(late, None))
    skipping = run([0.4] * 20, skipped=12)
    skipping.restarts = {"position-estimator/prod": 1}
    assert not skipping.held
    assert (
        "skipped: position-estimator/prod 12; estimated: none; restarts: position-estimator/prod 1"
        in "\n".join(report(skipping, None))
    )
    assert "no change published" in "\n".join(report(run([]), None))
    assert "note: a restarted service's CPU counts only from its restart" in "\n".join(
        report(skipping, None)
    )
    two = run([0.4] * 20)
    two.flows = ["prod", "dev"]
    assert "floors are one flow's work; estimator stages here run 2" in "\n".join(
        report(two, [Floor("capture", "decode", 1.0)])
    )


def test_a_counter_reset_by_a_restart_counts_from_zero() -> None:
    from services.benchmarks.pipeline import _delta

    name = "depotwatch_frames_skipped_total"
    before = {"a": {f'{name}{{camera_id="c"}}': 50.0}, "b": {f'{name}{{camera_id="c"}}': 10.0}}
    after = {"a": {f'{name}{{camera_id="c"}}': 80.0}, "b": {f'{name}{{camera_id="c"}}': 4.0}}
    assert _delta(before, after, name) == {"a": 30.0, "b": 4.0}


def test_an_estimator_still_working_off_the_warm_ups_backlog_is_pointed_out() -> None:
    behind = run([0.4] * 20, skipped=100)
    behind.processed = {"position-estimator/prod": 100.0}  # 200 handled, 160 stored
    text = "\n".join(report(behind, None))
    assert "note: position-estimator/prod handled 200 frames while 160 were stored" in text
    caught_up = run([0.4] * 40, skipped=10)
    caught_up.processed = {"position-estimator/prod": 150.0}
    assert "note:" not in "\n".join(report(caught_up, None))


def test_latency_over_few_state_changes_is_flagged_as_thin() -> None:
    thin = "\n".join(report(run([0.4, 0.5]), None))
    assert "note: only 2 state changes in the window" in thin
    assert "capture -> state latency over 2 changes" in thin
    assert "state changes in the window" not in "\n".join(report(run([0.4] * 30), None))


def _seaweed(counts: dict[tuple[str, str], tuple[float, float]]) -> dict[str, float]:
    """Samples as SeaweedFS exports them: request time histogram per bucket and type."""
    out = {}
    for (bucket, kind), (n, t) in counts.items():
        labels = f'{{bucket="{bucket}",type="{kind}"}}'
        out[f"SeaweedFS_s3_request_seconds_count{labels}"] = n
        out[f"SeaweedFS_s3_request_seconds_sum{labels}"] = t
        out[f'SeaweedFS_s3_request_seconds_bucket{{bucket="{bucket}",type="{kind}",le="1"}}'] = n
    return out


def test_seaweedfs_requests_are_split_between_the_frames_and_the_brokers_log() -> None:
    before = _seaweed({("frames", "PUT"): (100, 1.0), ("tansu", "LIST"): (50, 2.0)})
    after = _seaweed(
        {
            ("frames", "PUT"): (260, 2.6),  # 160 in 10 s
            ("frames", "GET"): (160, 0.4),  # new in the window
            ("tansu", "LIST"): (950, 8.0),  # 900, 6 s
            ("tansu", "PUT"): (1280, 3.0),
            ("idle", "GET"): (7, 0.1),  # unchanged: left out
        }
    )
    after['SeaweedFS_s3_in_flight_requests{type="GET"}'] = 3.0  # not a request count
    before[_key := 'SeaweedFS_s3_request_seconds_count{bucket="idle",type="GET"}'] = 7
    before[_key.replace("_count", "_sum")] = 0.1
    requests = s3_requests(before, after)
    assert requests == {
        ("frames", "PUT"): (160, pytest.approx(1.6)),
        ("frames", "GET"): (160, 0.4),
        ("tansu", "LIST"): (900, 6.0),
        ("tansu", "PUT"): (1280, 3.0),
    }
    served = run([0.4] * 20)
    served.s3_requests = requests
    served.s3_roles = {"frames": "frames", "tansu": "broker log"}
    text = "\n".join(report(served, None))
    assert "SeaweedFS requests, 250/s in all (share of requests / of time):" in text
    assert "  broker log  218.0/s   87% /  82%  bucket tansu: PUT 128.0/s, LIST 90.0/s" in text
    assert "  frames       32.0/s   13% /  18%  bucket frames: PUT 16.0/s, GET 16.0/s" in text


def test_a_seaweedfs_restart_counts_its_requests_from_zero() -> None:
    before = _seaweed({("tansu", "GET"): (5000, 50.0)})
    after = _seaweed({("tansu", "GET"): (40, 0.5)})
    assert s3_requests(before, after) == {("tansu", "GET"): (40, 0.5)}


def test_series_differing_in_other_labels_add_up_whatever_the_label_order() -> None:
    after = {
        'SeaweedFS_s3_request_seconds_count{type="PUT",bucket="a,b",code="200"}': 5.0,
        'SeaweedFS_s3_request_seconds_sum{code="200",bucket="a,b",type="PUT"}': 1.0,
        'SeaweedFS_s3_request_seconds_count{bucket="a,b",code="500",type="PUT"}': 3.0,
        'SeaweedFS_s3_request_seconds_sum{type="PUT",code="500",bucket="a,b"}': 1.0,
    }
    assert s3_requests({}, after) == {("a,b", "PUT"): (8.0, 2.0)}


def test_without_seaweedfs_metrics_the_report_says_so_instead_of_a_split() -> None:
    plain = run([0.4] * 20)
    assert not any("SeaweedFS requests" in line for line in report(plain, None))
    plain.s3_note = "SeaweedFS requests: its metrics (port 9) did not answer; no split"
    assert plain.s3_note in report(plain, None)
