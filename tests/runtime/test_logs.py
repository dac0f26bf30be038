"""JSON and console log formats, with plain log records."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from services.runtime.logs import ConsoleFormatter, JsonFormatter, configure_logging


def _record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("depotwatch.test", level, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_json_line_has_fields_and_extras() -> None:
    line = JsonFormatter("capture").format(_record("frame stored", camera_id="cam-s1", seq=12))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["msg"] == "frame stored"
    assert doc["level"] == "info"
    assert doc["service"] == "capture"
    assert doc["logger"] == "depotwatch.test"
    assert doc["camera_id"] == "cam-s1"
    assert doc["seq"] == 12
    assert doc["ts"].endswith("+00:00")
    assert "args" not in doc
    assert "levelno" not in doc


def test_json_line_renders_odd_values_and_exceptions() -> None:
    try:
        raise ValueError("bad frame")
    except ValueError:
        record = _record("failed", logging.ERROR, path=object())
        record.exc_info = sys.exc_info()
    doc = json.loads(JsonFormatter("aggregator").format(record))
    assert doc["level"] == "error"
    assert doc["path"].startswith("<object object")
    assert "ValueError: bad frame" in doc["exc"]


def test_console_line_appends_extras() -> None:
    line = ConsoleFormatter().format(_record("frame stored", camera_id="cam-s1"))
    assert "INFO" in line
    assert "depotwatch.test: frame stored" in line
    assert line.endswith("camera_id=cam-s1")


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """configure_logging replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_writes_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("plate-ocr", level="debug", fmt="json")
    logging.getLogger("depotwatch.x").debug("read plate", extra={"flow": "dev"})
    logging.getLogger("urllib3").info("chatty library line")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert (doc["service"], doc["msg"], doc["flow"]) == ("plate-ocr", "read plate", "dev")
