"""Keeps the embedded broker and S3 alive under ``depotwatch up``.

A killed ``weed`` or ``tansu`` used to stay dead until someone ran ``depotwatch infra up`` by
hand, and every service waited on it. :class:`InfraKeeper` looks at both processes every few
seconds and starts a dead one again (S3 first: the broker keeps its data there), with a
capped backoff between failed attempts so a component that cannot start is not hammered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter

from services.infra.embedded import COMPONENTS, LABELS, Component, InfraStatus
from services.infra.processes import InfraError
from services.runtime.backoff import Backoff

log = logging.getLogger(__name__)

INFRA_RESTARTS = Counter(
    "depotwatch_infra_restarts_total",
    "Embedded broker / S3 processes started again after they died",
    ["component"],
)


class Restartable(Protocol):
    """What the keeper needs of :class:`~services.infra.embedded.EmbeddedInfra`."""

    def status(self) -> InfraStatus: ...

    def start(self, component: Component) -> None: ...


class InfraKeeper:
    """Restarts dead embedded components; call :meth:`tick` from a supervising loop."""

    def __init__(
        self,
        infra: Restartable,
        say: Callable[[str], None],
        check_every_s: float = 2.0,
        backoff: Callable[[], Backoff] = lambda: Backoff(initial_s=2.0, maximum_s=60.0),
    ) -> None:
        self.infra = infra
        self.say = say
        self.check_every_s = check_every_s
        self._backoff = {c: backoff() for c in COMPONENTS}
        self._next_check = 0.0
        self._not_before: dict[Component, float] = {}
        self.restarts: dict[Component, int] = dict.fromkeys(COMPONENTS, 0)

    def tick(self, now: float) -> None:
        """Look at both components (every ``check_every_s``); start the dead ones."""
        if now < self._next_check:
            return
        self._next_check = now + self.check_every_s
        try:
            status = self.infra.status()
        except Exception as exc:  # a status that cannot be read is retried next time
            log.warning("embedded infra status unreadable", extra={"error": str(exc)})
            return
        dead = {c.component for c in status.components if not c.running}
        for component in COMPONENTS:  # s3 before kafka
            if component not in dead or now < self._not_before.get(component, 0.0):
                continue
            if component == "kafka" and "s3" in dead:
                continue  # the broker cannot start before its storage is back
            self.say(f"{LABELS[component]} is not running; starting it again")
            try:
                self.infra.start(component)
            except (InfraError, OSError) as exc:
                delay = self._backoff[component].next_delay()
                self._not_before[component] = now + delay
                self.say(f"{LABELS[component]} did not start ({exc}); next try in {delay:.0f}s")
                continue
            self._backoff[component].reset()
            self.restarts[component] += 1
            INFRA_RESTARTS.labels(component).inc()
            self.say(f"{LABELS[component]} is back")
            if component == "s3":
                dead.discard("s3")
