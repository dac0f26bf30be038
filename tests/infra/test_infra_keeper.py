"""InfraKeeper: a dead embedded broker or S3 is started again (fake with injected faults, and
the real stack)."""

from __future__ import annotations

import os
import signal
import time

from services.infra import ComponentStatus, EmbeddedInfra, InfraError, InfraStatus
from services.infra.embedded import LABELS, Component
from services.infra.keeper import InfraKeeper


class FakeInfra:
    """Components that can be killed, and starts that fail ``fail_starts`` times first."""

    def __init__(self, fail_starts: int = 0) -> None:
        self.running: dict[Component, bool] = {"s3": True, "kafka": True}
        self.fail_starts = fail_starts
        self.started: list[Component] = []

    def status(self) -> InfraStatus:
        return InfraStatus(
            [ComponentStatus(c, LABELS[c], 1, 1, up, up, "") for c, up in self.running.items()],
            None,
        )

    def start(self, component: Component) -> None:
        if component == "kafka" and not self.running["s3"]:
            raise InfraError("the broker keeps its data in the embedded S3")
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise InfraError("port in use")
        self.running[component] = True
        self.started.append(component)


def test_a_dead_broker_is_started_again() -> None:
    infra, said = FakeInfra(), []
    keeper = InfraKeeper(infra, said.append)
    keeper.tick(0.0)
    assert infra.started == []
    infra.running["kafka"] = False
    keeper.tick(1.0)  # not time to look yet
    assert infra.started == []
    keeper.tick(2.0)
    assert infra.started == ["kafka"]
    assert keeper.restarts["kafka"] == 1
    assert any("Tansu broker is back" in line for line in said)


def test_storage_comes_back_before_the_broker() -> None:
    infra = FakeInfra()
    infra.running.update(s3=False, kafka=False)
    InfraKeeper(infra, lambda _: None).tick(0.0)
    assert infra.started == ["s3", "kafka"]


def test_a_component_that_does_not_start_is_retried_with_backoff() -> None:
    infra, said = FakeInfra(fail_starts=2), []
    infra.running["s3"] = False
    keeper = InfraKeeper(infra, said.append, check_every_s=1.0)
    keeper.tick(0.0)  # fails; next try in 2 s
    keeper.tick(1.0)  # too early
    assert infra.fail_starts == 1
    keeper.tick(2.0)  # fails again; next try in 4 s
    keeper.tick(5.0)
    assert infra.started == []
    keeper.tick(6.0)
    assert infra.started == ["s3"]
    assert any("next try in 4s" in line for line in said)


def test_the_real_broker_killed_with_sigkill_comes_back(embedded_stack: EmbeddedInfra) -> None:
    (kafka,) = [c for c in embedded_stack.status().components if c.component == "kafka"]
    assert kafka.pid is not None
    os.kill(kafka.pid, signal.SIGKILL)
    keeper = InfraKeeper(embedded_stack, lambda _: None, check_every_s=0.5)
    deadline = time.monotonic() + 60
    while not embedded_stack.status().healthy:
        assert time.monotonic() < deadline, "the broker did not come back within 60 s"
        keeper.tick(time.monotonic())
        time.sleep(0.5)
    assert keeper.restarts["kafka"] == 1
