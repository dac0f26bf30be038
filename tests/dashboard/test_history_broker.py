"""The REST API's state history read from the real broker's facility-state topic."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from dashboard_builders import facility, loco, state
from web_harness import Client, run

from schemas.api import StateHistory
from services.dashboard.__main__ import kafka_history_reader
from services.dashboard.server import DashboardServer
from services.runtime.kafka import MessageProducer
from services.runtime.settings import Settings

pytestmark = [pytest.mark.integration]

# Other tests publish depot-north states to the same topic: this facility id is this test's.
FACILITY = "history-test"


def test_history_comes_from_the_state_topic(stack_settings: Settings) -> None:
    producer = MessageProducer(stack_settings.kafka, "history-test")
    began = datetime.now(UTC)
    for i in range(3):
        st = state("prod", facility_id=FACILITY, T1=[loco(f"h{i}", 20 + i, 3 + i)])
        producer.publish_and_wait(st.model_copy(update={"as_of": datetime.now(UTC)}), flow="prod")
        time.sleep(0.3)
    ended = datetime.now(UTC) + timedelta(seconds=1)
    cfg = facility().model_copy(update={"facility_id": FACILITY})

    async def check(client: Client, server: DashboardServer) -> None:
        resp = await client.get(
            "/api/v1/flows/prod/history",
            params={"start": began.isoformat(), "end": ended.isoformat(), "every_s": 0.1},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        history = StateHistory.model_validate(resp.json())
        ids = [s.tracks[0].locomotives[0].locomotive_id for s in history.states]
        assert ids == ["h0", "h1", "h2"]
        thinned = await client.get(
            "/api/v1/flows/prod/history",
            params={"start": began.isoformat(), "end": ended.isoformat(), "every_s": 60},
            timeout=60,
        )
        assert len(StateHistory.model_validate(thinned.json()).states) == 1

    run(check, config=cfg, history_reader=kafka_history_reader(stack_settings.kafka))
