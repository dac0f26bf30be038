"""`depotwatch config check` and `depotwatch schemas export`, driven through click."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from schemas import FrameRef, encode
from schemas.base import with_schema_version
from schemas.topics import MESSAGE_MODELS
from services.cli import cli

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "facility.yaml"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_config_check_accepts_the_shipped_facility(runner: CliRunner) -> None:
    data = yaml.safe_load(SHIPPED.read_text())
    result = runner.invoke(cli, ["config", "check", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    cameras = len(data["cameras"])
    assert result.stdout == (
        f"{SHIPPED}: ok: facility {data['facility_id']}, {len(data['tracks'])} tracks, "
        f"{cameras} cameras ({cameras} enabled), flows {', '.join(data['flows'])}, "
        f"{len(data['locomotive_models'])} locomotive models\n"
    )
    assert result.stderr == ""


def test_config_check_quiet_prints_nothing(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["config", "check", "-q", str(SHIPPED)])
    assert (result.exit_code, result.output) == (0, "")


def test_config_check_lists_every_problem_and_fails(runner: CliRunner, tmp_path: Path) -> None:
    data = yaml.safe_load(SHIPPED.read_text())
    data["cameras"][0]["source"] = "ftp://192.0.2.1/cam"
    data["cameras"][1]["fsp"] = 2
    data["cameras"][2]["id"] = "cam-s1"
    bad = tmp_path / "facility.yaml"
    bad.write_text(yaml.safe_dump(data))

    result = runner.invoke(cli, ["config", "check", str(bad)])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}: cameras[0].source: URL scheme 'ftp' is not supported; "
        "use one of rtsp://, rtsps://, http://, https://, file://, webrtc://",
        f"{bad}: cameras[1].fsp: is not a known field; remove it or check its spelling",
        f"{bad}: cameras: id 'cam-s1' is used twice; give each entry its own id",
        f"3 problem(s) in {bad}",
    ]


def test_config_check_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "facility.yaml"
    result = runner.invoke(cli, ["config", "check", str(missing)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{missing}: file not found; pass --config PATH or set DEPOTWATCH_FACILITY_CONFIG",
        f"1 problem(s) in {missing}",
    ]


def test_config_check_bad_yaml_names_the_line(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "facility.yaml"
    bad.write_text("facility_id: depot\n  tracks: 3\n")
    result = runner.invoke(cli, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"{bad}: line 2, column 9: not valid YAML (mapping values are not allowed here); "
        "fix the syntax"
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("schemas") / "out"
    result = CliRunner().invoke(cli, ["schemas", "export", str(directory)])
    assert result.exit_code == 0, result.output
    return directory


def test_schemas_export_writes_one_file_per_model(exported: Path) -> None:
    names = sorted(p.name for p in exported.iterdir())
    expected = sorted(
        [f"{m.__name__}.schema.json" for m in MESSAGE_MODELS] + ["FacilityConfig.schema.json"]
    )
    assert names == expected
    for model in MESSAGE_MODELS:
        doc = json.loads((exported / f"{model.__name__}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(doc)
        assert doc["x-kafka-topic"] == model.TOPIC
        assert doc["x-kafka-key"] == model.KEY_FIELD
        assert doc["x-schema-version"] == model.SCHEMA_VERSION
        assert doc["additionalProperties"] is True  # a newer minor version's fields


def _frame_ref() -> FrameRef:
    return FrameRef(
        camera_id="cam-s1",
        seq=7,
        captured_at=datetime(2026, 11, 21, 12, 0, tzinfo=UTC),
        bucket="depotwatch-frames",
        key="cam-s1/000007.jpg",
        width=1280,
        height=720,
        size=1000,
        sha256="0" * 64,
    )


def test_encoded_message_validates_against_exported_schema(exported: Path) -> None:
    schema = json.loads((exported / "FrameRef.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)

    validator.validate(json.loads(encode(_frame_ref())))


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"seq": -1}, "-1 is less than the minimum of 0"),
        ({"sha256": "xyz"}, "'xyz' does not match '^[0-9a-f]{64}$'"),
        ({"width": "wide"}, "'wide' is not of type 'integer'"),
    ],
)
def test_exported_schema_rejects_what_the_model_rejects(
    exported: Path, change: dict[str, object], complaint: str
) -> None:
    schema = json.loads((exported / "FrameRef.schema.json").read_text())
    doc = json.loads(encode(_frame_ref())) | change
    with pytest.raises(jsonschema.ValidationError) as caught:
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    assert caught.value.message == complaint


def test_missing_field_is_rejected_by_exported_schema(exported: Path) -> None:
    schema = json.loads((exported / "FrameRef.schema.json").read_text())
    doc = json.loads(encode(_frame_ref()))
    del doc["bucket"]
    with pytest.raises(jsonschema.ValidationError, match="'bucket' is a required property"):
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


def test_shipped_facility_validates_against_exported_config_schema(exported: Path) -> None:
    schema = json.loads((exported / "FacilityConfig.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = yaml.safe_load(SHIPPED.read_text())
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)
    data["cameras"][0]["fsp"] = 2
    with pytest.raises(jsonschema.ValidationError, match="'fsp' was unexpected"):
        jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)


def test_exported_files_are_the_published_schemas(exported: Path) -> None:
    for model in MESSAGE_MODELS:
        doc = json.loads((exported / f"{model.__name__}.schema.json").read_text())
        assert doc.pop("$schema") == "https://json-schema.org/draft/2020-12/schema"
        assert doc == json.loads(json.dumps(with_schema_version(model)))
