"""Fixtures shared by every test package.

Integration fixtures: ``embedded_stack`` starts a real SeaweedFS S3 + Tansu broker once per test
session, on free loopback ports in a temporary data directory, with the bucket and the topics of
flows ``prod`` and ``dev`` created; it is stopped at the end of the session, failures included.
``stack_settings`` is a :class:`Settings` pointing at it (hand it to any service). A test that
uses either is marked ``integration`` automatically, so ``pytest -m "not integration"`` skips it.

Consumers in tests should use a fresh group id (``unique_name``); the settings keep
``session.timeout.ms`` at 6 s, so group joins take a few seconds, not twenty.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from schemas.facility import FacilityConfig, parse_facility
from services.infra import EmbeddedInfra, settings_on_free_ports
from services.runtime.settings import Settings

STACK_FIXTURES = frozenset({"embedded_stack", "stack_settings"})
STACK_FLOWS = ("prod", "dev")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real broker and S3 as ``integration``."""
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedInfra]:
    """A running embedded SeaweedFS + Tansu (bucket and topics created), shared by the session.

    Tests may stop and start single components (``stop("s3", force=True)`` crashes S3 at once,
    ``start("s3")`` brings it back in ~4 s; ``restart_broker()``), but must leave both running
    when they finish. The broker keeps its data in that S3: while S3 is down, Kafka is too.
    """
    data_dir = tmp_path_factory.mktemp("embedded-infra")
    # die_with_parent: even a test run killed with SIGKILL leaves no weed/tansu behind.
    stack = EmbeddedInfra(settings_on_free_ports(data_dir), flows=STACK_FLOWS, die_with_parent=True)
    try:
        stack.up()
        yield stack
    finally:
        # Also runs when up() failed half-way, so no weed/tansu outlives the session.
        stack.down()


@pytest.fixture(scope="session")
def stack_settings(embedded_stack: EmbeddedInfra) -> Settings:
    """Settings whose Kafka and S3 point at the session's embedded stack."""
    return embedded_stack.client_settings


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Makes names (consumer groups, object prefixes) no other test uses: ``unique_name("g")``."""
    test = request.node.name.split("[")[0][-30:]

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture(scope="session")
def uncalibrated_facility() -> FacilityConfig:
    """The shipped facility with cam-s1 turned into a browser camera without calibration."""
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "facility.yaml").read_text())
    cam = data["cameras"][0]
    assert cam["id"] == "cam-s1"
    cam["source"] = "webrtc://cam-s1"
    del cam["calibration"]
    return parse_facility(data)
