"""Process settings from the environment (``DEPOTWATCH_*``) and mounted secret files.

Read once at the entry point and passed down. Nested fields use ``__``:
``DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS=broker:9092``, ``DEPOTWATCH_S3__ENDPOINT=minio:9000``.
Secrets (``DEPOTWATCH_S3__SECRET_KEY``...) may instead be files in ``DEPOTWATCH_SECRETS_DIR``
(default ``/run/secrets``), named like the variable, e.g. ``depotwatch_s3__secret_key``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar, overload

import click
import pydantic_settings
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from schemas.base import MAX_CLOCK_SKEW_S, describe_validation_error
from schemas.topics import TopicLayout

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    """How to reach the Kafka-protocol broker."""

    bootstrap_servers: str = Field(default="127.0.0.1:19092", description="host:port[,host:port]")
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = Field(default=None, description="e.g. SCRAM-SHA-512, PLAIN")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = Field(default=None, description="CA bundle for SSL/SASL_SSL")
    session_timeout_ms: int = Field(
        default=6000, ge=1000, description="Consumer group session timeout; low = fast joins."
    )
    request_timeout_ms: int = Field(default=10000, ge=1000)
    max_clock_skew_s: float = Field(
        default=MAX_CLOCK_SKEW_S,
        gt=0,
        description="Messages whose event time lies further after their Kafka timestamp are "
        "dead-lettered (a camera clock in the future).",
    )

    def client_config(self) -> dict[str, str | int]:
        """librdkafka properties common to producers, consumers and admin clients."""
        conf: dict[str, str | int] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf


class S3Settings(_Frozen):
    """How to reach the object store (MinIO, SeaweedFS, AWS S3)."""

    endpoint: str = Field(default="127.0.0.1:18333", description="host:port, no scheme")
    access_key: SecretStr = SecretStr("depotwatch")
    secret_key: SecretStr = SecretStr("depotwatch-local-only")
    secure: bool = Field(default=False, description="Use HTTPS")
    region: str = "us-east-1"
    bucket: str = Field(default="depotwatch-frames", min_length=3, max_length=63)
    frame_retention_days: int = Field(default=7, ge=1, description="Lifecycle expiry of frames.")


class InfraSettings(_Frozen):
    """The embedded infrastructure started by ``depotwatch infra up`` (dev, demo, tests)."""

    data_dir: Path = Field(default=Path(".depotwatch"), description="Where data and logs live.")
    host: str = "127.0.0.1"
    kafka_port: int = Field(default=19092, ge=1, le=65535)
    s3_port: int = Field(default=18333, ge=1, le=65535)
    weed_master_port: int = Field(default=19333, ge=1, le=65535)
    weed_volume_port: int = Field(default=18080, ge=1, le=65535)
    weed_filer_port: int = Field(default=18888, ge=1, le=65535)
    # SeaweedFS also listens on a gRPC port per role (its default is HTTP port + 10000, which
    # overflows for high ports and collides between stacks), so each one is explicit.
    s3_grpc_port: int = Field(default=28333, ge=1, le=65535)
    weed_master_grpc_port: int = Field(default=29333, ge=1, le=65535)
    weed_volume_grpc_port: int = Field(default=28080, ge=1, le=65535)
    weed_filer_grpc_port: int = Field(default=28888, ge=1, le=65535)
    weed_metrics_port: int = Field(
        default=19327,
        ge=1,
        le=65535,
        description="SeaweedFS's Prometheus metrics (requests and their time per bucket).",
    )
    redis_port: int = Field(default=16390, ge=1, le=65535, description="Redis (the job engine).")
    broker_bucket: str = Field(default="tansu", description="Bucket holding the broker's data.")
    broker_max_batches: int = Field(
        default=3000,
        ge=2,
        description=(
            "Batches the embedded broker keeps per partition of a delete-policy topic (frames,"
            " estimates); older ones go even inside retention.ms. The broker lists all of a"
            " partition's batches on every fetch, so more means slower reads for every consumer."
        ),
    )
    broker_read_tail: int = Field(
        default=100,
        ge=1,
        description=(
            "Batches the embedded broker keeps per partition of an estimates topic (positions,"
            " identities: read only live) once every live consumer group has read them; the"
            " rest goes, so the fetches that list these partitions stay as cheap as on a"
            " young broker."
        ),
    )
    broker_stale_group_s: float = Field(
        default=600.0,
        gt=0,
        description=(
            "A consumer group whose commit has not moved for this long while it had more to"
            " read no longer holds back what broker_read_tail deletes (a stopped flow, an old"
            " tool's group): it then loses all but the tail and what live groups have not read"
            " (counted and logged)."
        ),
    )
    tansu_bin: Path | None = Field(default=None, description="Override the Tansu binary.")
    weed_bin: Path | None = Field(default=None, description="Override the SeaweedFS binary.")
    redis_bin: Path | None = Field(default=None, description="Override the redis-server binary.")
    start_timeout_s: float = Field(default=60.0, gt=0)
    stop_timeout_s: float = Field(default=40.0, gt=0)
    s3_stop_grace_s: float = Field(
        default=3.0,
        gt=0,
        description="SeaweedFS is killed this long after SIGTERM: its filer waits 15 s for its "
        "own S3 gateway's subscription before it stops; what it acknowledged is on disk already.",
    )


class TopicSettings(_Frozen):
    """Partition counts and retention of the topics ``infra up`` creates."""

    frame_partitions: int = Field(default=6, ge=1)
    estimate_partitions: int = Field(default=6, ge=1)
    frames_retention_hours: float = Field(default=24.0, gt=0)
    estimates_retention_hours: float = Field(default=168.0, gt=0)
    state_history_hours: float = Field(
        default=24.0,
        gt=0,
        description="Facility states younger than this are never compacted away (the API's "
        "state history); older ones keep only the latest per facility.",
    )

    def layout(self) -> TopicLayout:
        """These settings as the catalogue's layout: every creator of a topic uses this, so
        a topic gets the same partitions and retention whichever service creates it first."""
        hour_ms = 3600 * 1000
        return TopicLayout(
            frame_partitions=self.frame_partitions,
            estimate_partitions=self.estimate_partitions,
            frames_retention_ms=int(self.frames_retention_hours * hour_ms),
            estimates_retention_ms=int(self.estimates_retention_hours * hour_ms),
            state_history_ms=int(self.state_history_hours * hour_ms),
        )


class JobsSettings(_Frozen):
    """The job engine (Celery on Redis) behind ``/api/v1/jobs`` and ``depotwatch worker``."""

    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:16390/0"),
        description="Celery broker and job store, redis://[:password@]host:port/db",
    )
    visibility_timeout_s: float = Field(
        default=60.0,
        ge=2,
        description="A job whose worker died (no ack) is handed to another worker after this.",
    )
    lease_s: float = Field(
        default=20.0,
        ge=1,
        description="A running job's lease; its worker renews it every lease_s / 4. A copy "
        "delivered again while the lease is alive waits instead of running twice.",
    )
    heartbeat_s: float = Field(default=5.0, gt=0, description="Worker heartbeat interval.")
    video_checkpoint_ticks: int = Field(
        default=20,
        ge=1,
        description="A video job stores its estimates and records a checkpoint every this many "
        "ticks (20 = 10 s of video at 2 fps); a resumed attempt starts after the last one.",
    )
    keep_days: float = Field(default=30.0, gt=0, description="Finished jobs are kept this long.")
    results_bucket: str = Field(
        default="depotwatch-jobs",
        min_length=3,
        max_length=63,
        description="Bucket for job inputs (uploads) and results (timelines, tracks, weights).",
    )


LogFormat = Literal["json", "console"]


class Settings(BaseSettings):
    """All settings of a depotwatch process."""

    model_config = SettingsConfigDict(
        env_prefix="DEPOTWATCH_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    facility_config: Path = Field(default=Path("facility.yaml"), description="Facility YAML path.")
    kafka: KafkaSettings = KafkaSettings()
    s3: S3Settings = S3Settings()
    infra: InfraSettings = InfraSettings()
    topics: TopicSettings = TopicSettings()
    jobs: JobsSettings = JobsSettings()
    http_host: str = Field(default="127.0.0.1", description="Bind address of /healthz, /metrics.")
    http_port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port.")
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    device: str = Field(default="cpu", description="Inference device: cpu, cuda, cuda:0 ...")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The plain secrets source only knows top-level fields, so a mounted file named
        # depotwatch_s3__secret_key would be silently ignored; the nested source splits on "__"
        # like the environment does. Environment variables still win over files.
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            NestedSecretsSettingsSource(file_secret_settings),
        )


S = TypeVar("S", bound=BaseSettings)


class SettingsError(click.ClickException):
    """A ``DEPOTWATCH_*`` variable (or secret file) holds a value its setting does not accept.

    A click error, so every command, and every service run as ``python -m``, prints it as one
    line and exits 1 instead of a traceback. The value itself is never shown (it may be a
    secret).
    """


@overload
def load_settings() -> Settings: ...


@overload
def load_settings(cls: type[S]) -> S: ...


def load_settings(cls: type[BaseSettings] = Settings) -> BaseSettings:
    """Settings from the environment and secret files (call once, at the entry point).

    ``cls`` is :class:`Settings` or a service's own settings (``DEPOTWATCH_AGGREGATOR__*``...).
    A bad value raises :class:`SettingsError` naming each variable and what it must be.
    """
    try:
        if cls is Settings:
            secrets = Path(os.environ.get("DEPOTWATCH_SECRETS_DIR", "/run/secrets"))
            return cls(_secrets_dir=secrets if secrets.is_dir() else None)
        return cls()
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(cls, exc)) from None
    except pydantic_settings.SettingsError as exc:
        # A nested setting given as one variable that is not JSON (DEPOTWATCH_KAFKA=...).
        raise SettingsError(
            f"bad setting: {exc} (set nested settings one by one, e.g. "
            f"{cls.model_config.get('env_prefix', '')}KAFKA__BOOTSTRAP_SERVERS, or give JSON)"
        ) from None


def describe_settings_error(cls: type[BaseSettings], exc: ValidationError) -> str:
    """``bad setting DEPOTWATCH_X__Y: <what it must be>; ...`` for each field that failed."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")

    def variable(loc: tuple[int | str, ...]) -> str:
        return prefix + delimiter.join(str(p) for p in loc).upper()

    return (
        f"bad setting {describe_validation_error(exc, name=variable)} "
        "(fix the environment variable or secret file of that name, or unset it for the default)"
    )
