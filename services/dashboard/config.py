"""Settings of the built-in dashboard (``DEPOTWATCH_DASHBOARD_*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class IceServerSetting(BaseModel):
    """One STUN/TURN server for browser cameras; the TURN password is kept out of logs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[str] = Field(min_length=1, description="e.g. ['turn:turn.lan:3478'].")
    username: str | None = None
    credential: SecretStr | None = None


class DashboardSettings(BaseSettings):
    """Where the dashboard listens and who may open it."""

    model_config = SettingsConfigDict(
        env_prefix="DEPOTWATCH_DASHBOARD_", extra="ignore", frozen=True
    )

    host: str = Field(
        default="127.0.0.1",
        description="Bind address; localhost by default so the depot is not shown to the network.",
    )
    port: int = Field(default=8088, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    token: SecretStr | None = Field(
        default=None,
        description="Access token; when set, the page and API reads need it (?token=, "
        "Authorization: Bearer, or the cookie the page sets) and changes need it as a bearer "
        "header. Without it, changes (camera add/change/remove) are refused.",
    )
    read_token_required: bool = Field(
        default=True,
        description="Reads (page, events, GET /api/v1/...) need the token too when one is set; "
        "false opens reads to anyone who reaches the port (changes still need the token).",
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins allowed to call the API from other web pages "
        "(CORS); empty (the default) allows none.",
    )
    lag_exporter: bool = Field(
        default=True, description="Export consumer lag of every depotwatch consumer group."
    )
    lag_groups: str = Field(
        default=".*",
        description="Regular expression of the consumer groups whose lag is exported.",
    )
    ice_servers: list[IceServerSetting] = Field(
        default_factory=list,
        description="STUN/TURN servers for browser cameras (/webrtc), as JSON: "
        '[{"urls": ["turn:turn.lan:3478"], "username": "u", "credential": "p"}]. Empty (the '
        "default): direct connections only, enough on one LAN; nothing is contacted outside.",
    )
    frame_cache: int = Field(default=64, ge=1, description="Frames kept in memory for tiles.")
    client_queue: int = Field(
        default=256,
        ge=8,
        description="Events buffered per browser; the oldest is dropped when full.",
    )

    def cors_origin_list(self) -> list[str]:
        """The CORS origins, one per entry, blanks dropped."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
