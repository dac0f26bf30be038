"""Aggregator settings (``DEPOTWATCH_AGGREGATOR__*``); S3 and Kafka come from the shared ones."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AggregatorSettings(BaseSettings):
    """How the aggregator listens, buffers and retries."""

    model_config = SettingsConfigDict(
        env_prefix="DEPOTWATCH_AGGREGATOR__", extra="ignore", frozen=True
    )

    bind: str = Field(
        default="tcp://127.0.0.1:15555",
        description="ZeroMQ endpoint captures connect to (tcp://0.0.0.0:PORT for all hosts).",
    )
    key_prefix: str = Field(
        default="frames",
        pattern=r"^[a-z0-9][a-z0-9/_-]*[a-z0-9]$",
        description="Object key prefix.",
    )
    buffer_frames: int = Field(
        default=600, ge=1, description="Frames held while S3 is slow or down (oldest dropped)."
    )
    buffer_mb: float = Field(default=256, gt=0, description="Byte budget of that buffer, MiB.")
    pending_refs: int = Field(
        default=20000, ge=1, description="Frame refs awaiting a broker ack before new ones wait."
    )
    store_workers: int = Field(
        default=2, ge=1, le=32, description="Parallel S3 writers; each owns a set of cameras."
    )
    dedupe_window: int = Field(
        default=2048, ge=1, description="Recent (camera, seq) remembered to drop duplicates."
    )
    watchdog_s: float = Field(
        default=10.0, gt=0, description="/healthz fails when a camera is silent this long."
    )
    retry_initial_s: float = Field(default=0.2, gt=0, description="First S3/Kafka retry delay.")
    retry_max_s: float = Field(default=5.0, gt=0, description="Retry delays double up to this.")
    produce_timeout_s: float = Field(
        default=30.0,
        ge=1,
        description="A FrameRef unacknowledged this long is re-sent (by a new producer if fenced).",
    )
    drain_timeout_s: float = Field(
        default=15.0, ge=0, description="On SIGTERM, keep storing what is buffered this long."
    )
    receive_hwm: int = Field(default=64, ge=1, description="ZeroMQ receive high-water mark.")
