"""Camera changes to the facility file: validated like `config check`, atomic, comments kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_builders import REPO

from schemas.facility import ConfigError, load_facility
from services.dashboard.config_edit import (
    CameraExistsError,
    ConfigChangedError,
    ConfigEditor,
    ConfigWriteError,
    UnknownCameraError,
)


class Clock:
    """Each call one second later, so every backup gets its own name."""

    def __init__(self) -> None:
        self.t = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "facility.yaml"
    p.write_text((REPO / "facility.yaml").read_text())
    return p


def _new_camera(path: Path, cid: str = "cam-n9") -> dict[str, Any]:
    """A copy of the first camera under another id (valid by construction)."""
    cam = dict(yaml.safe_load(path.read_text())["cameras"][0])
    cam["id"] = cid
    return cam


def _backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.*.bak"))


def test_add_change_remove_keep_comments_and_the_old_versions(path: Path) -> None:
    original = path.read_text()
    editor = ConfigEditor(path, clock=Clock())
    cam = editor.add_camera(_new_camera(path)).camera("cam-n9")
    assert cam.id == "cam-n9"
    assert load_facility(path).camera("cam-n9").enabled
    text = path.read_text()
    assert "# depotwatch facility config" in text  # the operators' comments survive
    # The new camera is written in the file's own style (short lists inline).
    assert text.count("  tracks: [T1, T2]") == original.count("  tracks: [T1, T2]") + 1
    assert _backups(path)[0].read_text() == original

    assert not editor.update_camera("cam-n9", {"enabled": False}).camera("cam-n9").enabled
    assert not load_facility(path).camera("cam-n9").enabled
    editor.remove_camera("cam-n9")
    assert "cam-n9" not in {c.id for c in load_facility(path).cameras}
    assert len(_backups(path)) == 3


def test_a_change_that_breaks_the_config_writes_nothing(path: Path) -> None:
    before = path.read_text()
    editor = ConfigEditor(path, clock=Clock())
    bad = {**_new_camera(path), "fps": 0, "tracks": ["T9"]}
    with pytest.raises(ConfigError) as err:
        editor.add_camera(bad)
    # The same lines `config check` prints for the same file.
    broken = path.parent / "broken.yaml"
    data = yaml.safe_load(before)
    data["cameras"].append(bad)
    broken.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as check:
        load_facility(broken)
    assert err.value.problems == check.value.problems
    assert any(p.startswith("cameras[8].fps:") for p in err.value.problems)
    assert path.read_text() == before
    assert _backups(path) == []


def test_ids_must_be_new_to_add_and_known_to_change(path: Path) -> None:
    editor = ConfigEditor(path, clock=Clock())
    with pytest.raises(CameraExistsError, match="cam-s1"):
        editor.add_camera(_new_camera(path, "cam-s1"))
    with pytest.raises(UnknownCameraError, match="cam-zz"):
        editor.update_camera("cam-zz", {"enabled": False})
    with pytest.raises(UnknownCameraError):
        editor.remove_camera("cam-zz")


def test_a_source_sent_back_redacted_keeps_its_password(path: Path) -> None:
    editor = ConfigEditor(path, clock=Clock())
    editor.update_camera("cam-s1", {"source": "rtsp://op:hunter2@192.0.2.7:554/s1"})
    cam = _new_camera(path, "cam-s1")
    cam["source"] = "rtsp://***@192.0.2.7:554/s1"
    cam["fps"] = 1
    replaced = editor.replace_camera("cam-s1", cam).camera("cam-s1")
    assert replaced.source == "rtsp://op:hunter2@192.0.2.7:554/s1"
    # A new URL is taken as sent.
    editor.update_camera("cam-s1", {"source": "rtsp://192.0.2.8:554/s1"})
    assert load_facility(path).camera("cam-s1").source == "rtsp://192.0.2.8:554/s1"


def test_only_the_newest_backups_are_kept(path: Path) -> None:
    editor = ConfigEditor(path, keep=2, clock=Clock())
    for fps in (1, 2, 3, 4):
        editor.update_camera("cam-s1", {"fps": fps})
    kept = _backups(path)
    assert len(kept) == 2
    assert "fps: 3" in kept[-1].read_text()


def test_an_edit_changes_only_the_lines_it_changes(path: Path) -> None:
    before = path.read_text().splitlines()
    ConfigEditor(path, clock=Clock()).update_camera("cam-s2", {"fps": 1})
    after = path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [("  fps: 2", "  fps: 1")]


def test_a_failed_write_leaves_the_file_and_no_backup(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    before = path.read_text()

    def busy(src: str, dst: Path) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")  # a bind-mounted single file

    monkeypatch.setattr("services.dashboard.config_edit.os.replace", busy)
    with pytest.raises(ConfigWriteError, match="mounted read-only"):
        ConfigEditor(path, clock=Clock()).update_camera("cam-s1", {"fps": 1})
    assert path.read_text() == before
    assert _backups(path) == []
    assert [p.name for p in path.parent.iterdir()] == ["facility.yaml"]


def test_an_edit_keeps_the_files_mode(path: Path) -> None:
    path.chmod(0o644)
    ConfigEditor(path, clock=Clock()).update_camera("cam-s1", {"fps": 1})
    assert path.stat().st_mode & 0o777 == 0o644


def test_strings_yaml_1_1_would_misread_are_quoted(path: Path) -> None:
    ConfigEditor(path, clock=Clock()).add_camera(_new_camera(path, "no"))
    assert 'id: "no"' in path.read_text()
    assert load_facility(path).camera("no").id == "no"


def test_a_file_edited_meanwhile_is_not_overwritten(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.dashboard import config_edit

    real = config_edit.parse_facility_yaml

    def validate_while_an_operator_saves(text: str, source: str) -> object:
        path.write_text(path.read_text() + "# saved by hand\n")
        return real(text, source)

    monkeypatch.setattr(config_edit, "parse_facility_yaml", validate_while_an_operator_saves)
    with pytest.raises(ConfigChangedError, match="send the change again"):
        ConfigEditor(path, clock=Clock()).update_camera("cam-s1", {"fps": 1})
    assert path.read_text().endswith("# saved by hand\n")
    assert "  fps: 1\n" not in path.read_text()
    assert _backups(path) == []


def test_a_repeated_key_that_config_check_accepts_does_not_stop_edits(path: Path) -> None:
    path.write_text(path.read_text().replace("facility_id:", "facility_id: other\nfacility_id:", 1))
    load_facility(path)  # config check reads it (the last value wins)
    ConfigEditor(path, clock=Clock()).update_camera("cam-s1", {"fps": 1})
    assert load_facility(path).camera("cam-s1").fps == 1
