"""Camera changes written to the facility file: validated first, written atomically, undoable.

A change is applied to the YAML document (ruamel.yaml round trip, so the operators' comments
and key order survive), the new text is validated exactly as ``depotwatch config check``
validates a file (:func:`schemas.facility.parse_facility_yaml`), and only then written: to a
temporary file beside it, fsynced, renamed over the old one. The previous version is kept as
``<name>.<UTC time>.bak`` (the newest ``keep`` of them). Running services pick the change up
as they pick up any edit of the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from schemas.facility import ConfigError, FacilityConfig, parse_facility_yaml, redact_url

log = logging.getLogger(__name__)

Document = MutableMapping[str, Any]


class UnknownCameraError(LookupError):
    """No camera with that id in the facility file."""


class CameraExistsError(ValueError):
    """A camera with that id is already configured."""


class ConfigWriteError(RuntimeError):
    """The facility file cannot be written here (read-only mount, permissions, disk)."""


class ConfigChangedError(RuntimeError):
    """The file changed on disk while an edit was being made; nothing was written."""


class ConfigEditor:
    """Read-validate-write of the facility file, one change at a time."""

    def __init__(self, path: Path, keep: int = 10, clock: Callable[[], datetime] | None = None):
        self.path = path
        self.keep = keep
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._yaml = YAML(typ="rt")
        self._yaml.preserve_quotes = True
        # `config check` accepts what PyYAML reads (a repeated key: the last wins).
        self._yaml.allow_duplicate_keys = True
        self._yaml.width = 4096

    # ---- changes -----------------------------------------------------------------------

    def add_camera(self, camera: dict[str, Any]) -> FacilityConfig:
        """Append a camera; :class:`CameraExistsError` if its id is taken. Returns the new
        config (as every change does)."""

        def change(doc: Document) -> str:
            cams = _cameras(doc)
            cid = camera.get("id")
            if any(c.get("id") == cid for c in cams):
                raise CameraExistsError(f"camera {cid!r} exists; change it with PUT or PATCH")
            cams.append(_styled(camera))
            return str(cid)

        return self._edit(change)

    def replace_camera(self, camera_id: str, camera: dict[str, Any]) -> FacilityConfig:
        """Replace a camera whole. A source sent back redacted (``***@``) keeps the stored one."""

        def change(doc: Document) -> str:
            cams = _cameras(doc)
            i = _index(cams, camera_id)
            new = dict(camera)
            new.setdefault("id", camera_id)
            _keep_secret_source(new, cams[i])
            cams[i] = _styled(new)
            return str(new["id"])

        return self._edit(change)

    def update_camera(self, camera_id: str, fields: dict[str, Any]) -> FacilityConfig:
        """Change some fields of a camera (``{"enabled": false}`` disables it)."""

        def change(doc: Document) -> str:
            cams = _cameras(doc)
            i = _index(cams, camera_id)
            new = dict(fields)
            _keep_secret_source(new, cams[i])
            for key, value in new.items():
                cams[i][key] = _styled(value)
            return str(cams[i].get("id"))

        return self._edit(change)

    def remove_camera(self, camera_id: str) -> FacilityConfig:
        """Delete a camera from the file."""

        def change(doc: Document) -> str:
            cams = _cameras(doc)
            del cams[_index(cams, camera_id)]
            return ""

        return self._edit(change)

    # ---- the one write path ------------------------------------------------------------

    def _edit(self, change: Callable[[Document], str]) -> FacilityConfig:
        with self._lock:
            source = str(self.path)
            try:
                text = self.path.read_text()
            except OSError as exc:
                raise ConfigError(source, [f"cannot be read ({exc.strerror})"]) from None
            try:
                doc = self._yaml.load(text)
            except YAMLError:
                doc = None
            if not isinstance(doc, MutableMapping):
                parse_facility_yaml(text, source)  # raises with the config-check wording
                raise ConfigError(source, ["the file must be a YAML mapping"])
            camera_id = change(doc)
            out = io.StringIO()
            self._yaml.dump(doc, out)
            new_text = out.getvalue()
            cfg = parse_facility_yaml(new_text, source)
            self._write(text, new_text)
        log.info(
            "facility config changed through the API",
            extra={"path": source, "camera_id": camera_id or None},
        )
        return cfg

    def _write(self, old_text: str, new_text: str) -> None:
        folder = self.path.parent
        stamp = self._clock().strftime("%Y%m%dT%H%M%S%fZ")
        backup = folder / f"{self.path.name}.{stamp}.bak"
        tmp: str | None = None
        try:
            before = self.path.stat()
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
            with os.fdopen(fd, "w") as f:
                f.write(new_text)
                f.flush()
                os.fsync(f.fileno())
            # The new file keeps the old one's mode and owner: mkstemp makes it 0600, and the
            # services reading it may run as another user.
            os.chmod(tmp, stat.S_IMODE(before.st_mode))
            with contextlib.suppress(PermissionError):
                os.chown(tmp, before.st_uid, before.st_gid)
            if self.path.read_text() != old_text:
                raise ConfigChangedError(
                    f"{self.path} changed on disk while this edit was made; nothing was "
                    "written; send the change again"
                )
            backup.write_text(old_text)
            os.replace(tmp, self.path)
            tmp = None
        except OSError as exc:
            backup.unlink(missing_ok=True)
            raise ConfigWriteError(
                f"cannot write {self.path} ({exc.strerror or exc}); is it mounted read-only? "
                "camera changes through the API need a writable facility file"
            ) from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        for old in sorted(folder.glob(f"{self.path.name}.*.bak"))[: -self.keep]:
            old.unlink(missing_ok=True)


def _styled(value: Any) -> Any:
    """JSON values in the file's own style: mappings as blocks, short lists of numbers or
    names inline (``tracks: [T1, T2]``, ``pixel: [139.4, 549.5]``). A string PyYAML would read
    as something else (``no``, ``1e3``, ``null``) is quoted: ruamel writes YAML 1.2, the
    services read YAML 1.1."""
    if isinstance(value, str) and not _reads_back(value):
        return DoubleQuotedScalarString(value)
    if isinstance(value, dict):
        out = CommentedMap()
        for k, v in value.items():
            out[k] = _styled(v)
        return out
    if isinstance(value, list):
        seq = CommentedSeq(_styled(v) for v in value)
        if all(not isinstance(v, dict | list) for v in value):
            seq.fa.set_flow_style()
        return seq
    return value


def _reads_back(value: str) -> bool:
    """PyYAML reads ``value`` written unquoted as this very string."""
    try:
        return bool(yaml.safe_load(value) == value)
    except yaml.YAMLError:
        return False


def _cameras(doc: Document) -> list[Any]:
    cams = doc.get("cameras")
    if cams is None:
        doc["cameras"] = cams = []
    if not isinstance(cams, list):
        raise ConfigError("<facility>", ["cameras: must be a list; fix the file first"])
    return cams


def _index(cams: list[Any], camera_id: str) -> int:
    for i, cam in enumerate(cams):
        if isinstance(cam, MutableMapping) and cam.get("id") == camera_id:
            return i
    raise UnknownCameraError(f"no camera {camera_id!r}; GET /api/v1/cameras lists the ids")


def _keep_secret_source(new: dict[str, Any], old: Any) -> None:
    """A source the API showed redacted and got back unchanged means "keep the stored one"."""
    src = new.get("source")
    if not isinstance(src, str) or not isinstance(old, MutableMapping):
        return
    stored = old.get("source")
    if isinstance(stored, str) and src != stored and src == redact_url(stored):
        new["source"] = stored
