"""Process settings: DEPOTWATCH_* environment, nested fields, mounted secret files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from services.aggregator.config import AggregatorSettings
from services.cli import cli
from services.runtime.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Start every test from no DEPOTWATCH_* variables and no secrets directory."""
    for name in list(os.environ):
        if name.upper().startswith("DEPOTWATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DEPOTWATCH_SECRETS_DIR", str(tmp_path / "no-secrets-here"))


def _secrets(tmp_path: Path, files: dict[str, str]) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    for name, value in files.items():
        (directory / name).write_text(value)
    return directory


def test_defaults_point_at_the_embedded_stack() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.s3.endpoint == "127.0.0.1:18333"
    assert settings.facility_config == Path("facility.yaml")
    assert settings.http_port == 0


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        ({"DEPOTWATCH_HTTP_PORT": "9100"}, ("http_port",), 9100),
        ({"DEPOTWATCH_LOG_FORMAT": "console"}, ("log_format",), "console"),
        ({"depotwatch_log_level": "DEBUG"}, ("log_level",), "DEBUG"),  # case-insensitive
        (
            {"DEPOTWATCH_FACILITY_CONFIG": "/etc/dw/f.yaml"},
            ("facility_config",),
            Path("/etc/dw/f.yaml"),
        ),
        (
            {"DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": "kafka:9092"},
            ("kafka", "bootstrap_servers"),
            "kafka:9092",
        ),
        ({"DEPOTWATCH_S3__ENDPOINT": "minio:9000"}, ("s3", "endpoint"), "minio:9000"),
        ({"DEPOTWATCH_S3__SECURE": "true"}, ("s3", "secure"), True),
        ({"DEPOTWATCH_TOPICS__FRAME_PARTITIONS": "12"}, ("topics", "frame_partitions"), 12),
        ({"DEPOTWATCH_INFRA__DATA_DIR": "/var/dw"}, ("infra", "data_dir"), Path("/var/dw")),
        # Without the prefix a variable belongs to someone else and is ignored.
        ({"HTTP_PORT": "9100"}, ("http_port",), 0),
        (
            {"KAFKA__BOOTSTRAP_SERVERS": "elsewhere:1"},
            ("kafka", "bootstrap_servers"),
            "127.0.0.1:19092",
        ),
        # One underscore is not the nested delimiter.
        (
            {"DEPOTWATCH_KAFKA_BOOTSTRAP_SERVERS": "x:1"},
            ("kafka", "bootstrap_servers"),
            "127.0.0.1:19092",
        ),
    ],
)
def test_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    attribute: tuple[str, ...],
    expected: object,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    value: object = load_settings()
    for part in attribute:
        value = getattr(value, part)
    assert value == expected


def test_nested_settings_keep_their_other_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    settings = load_settings()
    assert settings.kafka.session_timeout_ms == 6000
    assert settings.kafka.client_config() == {
        "bootstrap.servers": "kafka:9092",
        "security.protocol": "PLAINTEXT",
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEPOTWATCH_HTTP_PORT", "ninety"),
        ("DEPOTWATCH_HTTP_PORT", "70000"),
        ("DEPOTWATCH_LOG_FORMAT", "xml"),
        ("DEPOTWATCH_KAFKA__SECURITY_PROTOCOL", "TLS"),
        ("DEPOTWATCH_S3__BUCKET", "ab"),
    ],
)
def test_bad_values_name_the_variable_not_the_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = caught.value.format_message()
    assert message.startswith(f"bad setting {name}: ")
    assert "unset it for the default" in message
    assert f"'{value}'" not in message  # pydantic's own text quotes the input; ours never


def test_a_bad_secret_file_is_named_without_its_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        "DEPOTWATCH_SECRETS_DIR",
        str(_secrets(tmp_path, {"depotwatch_s3__secure": "yes-please-x9"})),
    )
    with pytest.raises(SettingsError, match="DEPOTWATCH_S3__SECURE") as caught:
        load_settings()
    assert "yes-please-x9" not in caught.value.format_message()


def test_a_service_s_own_settings_are_named_with_their_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEPOTWATCH_AGGREGATOR__BUFFER_FRAMES", "many")
    with pytest.raises(SettingsError, match=r"^bad setting DEPOTWATCH_AGGREGATOR__BUFFER_FRAMES: "):
        load_settings(AggregatorSettings)


def test_commands_print_one_line_instead_of_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOTWATCH_KAFKA__REQUEST_TIMEOUT_MS", "abc")
    result = CliRunner().invoke(cli, ["schemas", "topics"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: bad setting DEPOTWATCH_KAFKA__REQUEST_TIMEOUT_MS: ")
    assert result.output.count("\n") == 1


def test_secret_files_fill_nested_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    directory = _secrets(
        tmp_path,
        {
            # Docker and Kubernetes secret files often end in a newline; it is not part of it.
            "depotwatch_s3__secret_key": "minio-secret-from-file\n",
            "depotwatch_s3__access_key": "minio-user",
            "depotwatch_kafka__sasl_password": "kafka-pass",
        },
    )
    monkeypatch.setenv("DEPOTWATCH_SECRETS_DIR", str(directory))

    settings = load_settings()

    assert settings.s3.secret_key.get_secret_value() == "minio-secret-from-file"
    assert settings.s3.access_key.get_secret_value() == "minio-user"
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "kafka-pass"
    assert settings.s3.endpoint == "127.0.0.1:18333", "other S3 fields keep their defaults"


def test_kubernetes_secret_volume_layout_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A mounted Secret is a timestamped folder, a ..data link to it, and one link per key; other
    # keys (the dashboard token) sit beside ours and must be ignored.
    directory = tmp_path / "secrets"
    payload = directory / "..2026_11_21_12_00_00.000000001"
    payload.mkdir(parents=True)
    (payload / "depotwatch_s3__secret_key").write_text("from-k8s\n")
    (payload / "dashboard_token").write_text("not-a-setting")
    (directory / "..data").symlink_to(payload.name)
    for key in ("depotwatch_s3__secret_key", "dashboard_token"):
        (directory / key).symlink_to(f"..data/{key}")
    monkeypatch.setenv("DEPOTWATCH_SECRETS_DIR", str(directory))

    assert load_settings().s3.secret_key.get_secret_value() == "from-k8s"


def test_environment_wins_over_secret_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = _secrets(tmp_path, {"depotwatch_s3__secret_key": "from-file"})
    monkeypatch.setenv("DEPOTWATCH_SECRETS_DIR", str(directory))
    monkeypatch.setenv("DEPOTWATCH_S3__SECRET_KEY", "from-env")
    assert load_settings().s3.secret_key.get_secret_value() == "from-env"


def test_missing_secrets_dir_is_fine() -> None:
    assert load_settings().s3.secret_key.get_secret_value() == "depotwatch-local-only"


SECRETS = {
    "depotwatch_s3__secret_key": "s3-secret-8f2c",
    "depotwatch_s3__access_key": "s3-access-41aa",
    "depotwatch_kafka__sasl_password": "sasl-secret-77d1",
}


def test_secrets_are_never_printed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DEPOTWATCH_SECRETS_DIR", str(_secrets(tmp_path, SECRETS)))
    settings = load_settings()
    logging.getLogger("test").warning("settings: %s %r", settings, settings)

    shown = [
        str(settings),
        repr(settings),
        repr(settings.s3),
        str(settings.kafka),
        settings.model_dump_json(),
        json.dumps(settings.model_dump(mode="json")),
        caplog.text,
    ]
    for text in shown:
        assert "**********" in text
        for secret in SECRETS.values():
            assert secret not in text
    # ...but the clients that need them still get them.
    assert settings.kafka.client_config()["sasl.password"] == "sasl-secret-77d1"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.http_port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        settings.kafka.bootstrap_servers = "x:1"  # type: ignore[misc]


def test_explicit_values_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOTWATCH_HTTP_PORT", "9100")
    assert Settings(http_port=9200).http_port == 9200


def test_a_nested_setting_given_whole_and_not_json_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEPOTWATCH_KAFKA", "notjson")
    with pytest.raises(SettingsError, match=r'field "kafka".*DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS'):
        load_settings()
