"""The fault bench's ledger of frames.v1: lost, duplicated and dangling FrameRefs (pure)."""

from __future__ import annotations

from services.benchmarks.faults import RUN_JUMP, RefLedger, ref_ledger


def test_an_unbroken_sequence_loses_nothing() -> None:
    assert ref_ledger([("a", 5), ("a", 6), ("b", 1), ("a", 7), ("b", 2)]) == RefLedger(5, 0, 0)


def test_gaps_inside_a_run_are_lost_frames() -> None:
    # a: 3 and 4 never referenced; b: 11.
    frames = [("a", 1), ("a", 2), ("a", 5), ("b", 10), ("b", 12)]
    assert ref_ledger(frames).lost == 3


def test_a_restarted_capture_is_a_new_run_not_a_loss() -> None:
    restarted = 1_796_184_143_940  # the new run starts at the wall clock in ms
    frames = [("a", 100), ("a", 101), ("a", restarted), ("a", restarted + 1)]
    assert restarted - 101 > RUN_JUMP
    assert ref_ledger(frames).lost == 0


def test_a_frame_referenced_twice_is_a_duplicate_not_a_gap() -> None:
    ledger = ref_ledger([("a", 1), ("a", 2), ("a", 2), ("a", 3), ("a", 2)], missing_objects=1)
    assert ledger == RefLedger(refs=5, lost=0, duplicates=2, missing_objects=1)
