"""The fault suite inside the test command (bounded): the whole pipeline under ``depotwatch
up``, a few processes killed with SIGKILL one at a time; each time the facility state must be
fresh again within the deadline, no state may show a locomotive twice (two bodies
overlapping on a track), and no FrameRef of the fault's window may point at a missing object.

``depotwatch bench faults`` runs the full list (S3 outages, a stopped consumer...) and prints
the recovery table; this test runs the faults whose failure in the field stopped the product.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rtsp_server import NEEDS_RTSP_SERVER

from services.benchmarks.faults import (
    FAULTS,
    LEDGER_SETTLE_S,
    Pipeline,
    StateWatch,
    double_counts,
    run_fault,
    wait_until,
)

IN_SUITE = ("kill -9 state estimator", "kill -9 broker", "kill -9 aggregator")
DEADLINE_S = 120.0
"""Per fault: the state must be fresh again within this."""
START_S = (90.0, 180.0)
"""Deadlines for the infra to be healthy and for the first fresh state."""
PER_FAULT_S = 3 * DEADLINE_S + LEDGER_SETTLE_S + 90.0
"""Fresh before, back, fresh after (each up to the deadline), then frames.v1 read back."""

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    NEEDS_RTSP_SERVER,
    # Above every deadline together, so a miss fails on its own assert, with the pipeline's
    # log, instead of being cut off by the suite-wide 300 s timeout with nothing to read.
    pytest.mark.timeout(int(sum(START_S) + len(IN_SUITE) * PER_FAULT_S + 60)),
]


def _log_tail(pipe: Pipeline) -> str:
    return pipe.log.read_text()[-3000:]


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[tuple[Pipeline, StateWatch]]:
    pipe = Pipeline(tmp_path, cameras=2, flow="prod")
    watch: StateWatch | None = None
    try:
        assert wait_until(lambda: pipe.infra.status().healthy, START_S[0]) is not None, (
            f"infra not healthy: {_log_tail(pipe)}"
        )
        watch = StateWatch(pipe.bootstrap, "prod")
        w = watch
        assert wait_until(w.is_fresh, START_S[1]) is not None, f"no fresh state: {_log_tail(pipe)}"
        yield pipe, w
    finally:
        if watch is not None:
            watch.close()
        pipe.stop()


def test_the_state_is_fresh_again_after_each_fault(pipeline: tuple[Pipeline, StateWatch]) -> None:
    pipe, watch = pipeline
    for fault in [f for f in FAULTS if f.name in IN_SUITE]:
        assert wait_until(watch.is_fresh, DEADLINE_S) is not None, (
            f"not fresh before {fault.name}: {_log_tail(pipe)}"
        )
        started = time.monotonic()
        outcome = run_fault(pipe, watch, fault, DEADLINE_S)
        assert outcome.back_s is not None, (
            f"{fault.name}: the process did not come back: {_log_tail(pipe)}"
        )
        assert outcome.fresh_s is not None, (
            f"{fault.name}: the state did not become fresh: {_log_tail(pipe)}"
        )
        twice = [d for s in watch.states_since(started) for d in double_counts(s)]
        assert not twice, f"{fault.name}: {twice[:3]}"
        # Claim-check: no FrameRef of the fault's window points at a missing object.
        assert outcome.ledger is not None, f"{fault.name}: frames.v1 could not be read back"
        assert outcome.ledger.refs > 0, f"{fault.name}: no frames referenced in the window"
        assert outcome.ledger.missing_objects == 0, f"{fault.name}: {outcome.ledger}"
