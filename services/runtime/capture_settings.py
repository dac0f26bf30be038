"""Capture settings (``DEPOTWATCH_CAPTURE__*``), shared by capture processes (RTSP, files) and
the web app's browser cameras (WebRTC); the camera itself comes from facility.yaml."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CaptureSettings(BaseSettings):
    """How a capture process reads its camera and reaches the aggregator."""

    model_config = SettingsConfigDict(
        env_prefix="DEPOTWATCH_CAPTURE__", extra="ignore", frozen=True
    )

    aggregator_endpoint: str = Field(
        default="tcp://127.0.0.1:15555", description="ZeroMQ endpoint the aggregator binds."
    )
    watchdog_s: float = Field(
        default=10.0, gt=0, description="No frame for this long: reopen the stream."
    )
    open_timeout_s: float = Field(default=5.0, gt=0, description="Give up opening after this.")
    backoff_initial_s: float = Field(default=0.5, gt=0, description="First reopen delay.")
    backoff_max_s: float = Field(
        default=4.0, gt=0, description="Reopen delays double up to this cap."
    )
    queue_frames: int = Field(
        default=8, ge=1, description="Frames held while the aggregator is away (newest win)."
    )
    send_hwm: int = Field(default=4, ge=1, description="ZeroMQ send high-water mark, messages.")
    decimation_tolerance: float = Field(
        default=0.25,
        ge=0,
        lt=1,
        description="A frame up to this fraction of a period early still counts as due.",
    )
    loop_files: bool = Field(default=True, description="Restart file:// sources at their end.")
