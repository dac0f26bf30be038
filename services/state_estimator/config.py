"""Process settings of the state estimator (``DEPOTWATCH_STATE_ESTIMATOR__*``).

The fusion tuning (stale_after_s, heartbeat_s, pairing...) is per flow and lives in the
facility config; these are the deployment knobs of the Faust worker.

Processing guarantee (documented choice)
----------------------------------------
Faust's ``exactly_once`` needs an idempotent, transactional producer. aiokafka (Faust's client)
cannot get a producer id from the embedded Tansu broker, so the default is ``at_least_once``:
after a crash a few estimates are processed again. That cannot double-count, because every
state update is idempotent: a camera's view is replaced only by a strictly newer frame
(captured_at, seq), and plate votes are keyed by camera + frame seq + plate position.
Against Apache Kafka set ``DEPOTWATCH_STATE_ESTIMATOR__PROCESSING_GUARANTEE=exactly_once``
to also keep the output topic free of the re-published (identical) states.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ProcessingGuarantee = Literal["at_least_once", "exactly_once"]


class StateEstimatorServiceSettings(BaseSettings):
    """Deployment settings of one state-estimator worker."""

    model_config = SettingsConfigDict(
        env_prefix="DEPOTWATCH_STATE_ESTIMATOR__", extra="ignore", frozen=True
    )

    processing_guarantee: ProcessingGuarantee = Field(
        default="at_least_once",
        description="exactly_once needs a broker with idempotent/transactional producers.",
    )
    app_id_prefix: str = Field(
        default="depotwatch-state-estimator",
        description="Faust app id (= consumer group, changelog prefix) is PREFIX-<flow>.",
    )
    store: str = Field(
        default="memory://",
        description="Faust table store; memory:// rebuilds from the changelog topic on start.",
    )
    data_dir: str = Field(default=".depotwatch/state-estimator", description="Faust data dir.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a new flow's consumer group starts: all retained estimates, or now"
        " (on the embedded broker the estimates other groups have read are kept only for"
        " DEPOTWATCH_INFRA__BROKER_READ_TAIL batches a partition).",
    )
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=1,
        le=1500,
        description="Consumer long-poll limit; Tansu answers multi-partition fetches only "
        "after it, so it bounds the latency of each hop.",
    )
    producer_linger_ms: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Faust producer batching delay. With 0 every estimate forwarded to the "
        "internal topic was a batch of its own, a broker such as Tansu returned about one "
        "batch per fetch, and under load the fuse agent fell behind by thousands.",
    )
    checkpoint_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Write the fusion state's changed records this often; estimates are "
        "acknowledged only once a checkpoint covers them (a crash replays at most this much).",
    )
    stall_after_s: float = Field(
        default=60.0,
        gt=0,
        description="/healthz fails when estimates wait and none was fused for this long, or "
        "the broker cannot be asked for the backlog for this long.",
    )
    behind_after_s: float = Field(
        default=60.0,
        gt=0,
        description="/healthz fails when the newest estimate fused is this old while "
        "estimates wait (it keeps making progress but no longer keeps up).",
    )
    topic_timeout_s: float = Field(default=30.0, gt=0, description="Wait for the broker this long.")
    restore_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Read the fusion changelog to its end within this long on start; past it "
        "(or with the broker down) the worker falls back to Faust's own restore, which can be "
        "partial on the embedded broker (depotwatch_state_restore_fallbacks_total counts it).",
    )

    def app_id(self, flow: str) -> str:
        """The Faust app id (and consumer group) of ``flow``'s state estimator."""
        return f"{self.app_id_prefix}-{flow}"

    def internal_topic(self, flow: str) -> str:
        """The one-partition topic the route agent funnels ``flow``'s estimates through: only
        that flow's group reads it, so what the group has committed can be deleted (the
        embedded broker's log cleaner does, see services/infra/log_cleaner.py)."""
        return f"{self.app_id(flow)}-estimates"
