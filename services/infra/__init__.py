"""Embedded infrastructure for one machine (dev, demo, tests): SeaweedFS S3 + Tansu broker.

Python API: ``EmbeddedInfra(settings, flows).up()`` / ``.down()`` / ``.status()``, and
:func:`initialise` for bucket + topics on external Kafka and S3. CLI: ``depotwatch infra``.
"""

from services.infra.embedded import (
    ComponentStatus,
    EmbeddedInfra,
    InfraStatus,
    InitReport,
    initialise,
    settings_on_free_ports,
)
from services.infra.processes import InfraError

__all__ = [
    "ComponentStatus",
    "EmbeddedInfra",
    "InfraError",
    "InfraStatus",
    "InitReport",
    "initialise",
    "settings_on_free_ports",
]
