"""Pick up facility config edits in a running service (new cameras, moved calibration).

The file is re-read when its modification time changes; an edit that does not validate is
logged (every problem, one line each) and the last good config stays in use.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from schemas.facility import ConfigError, FacilityConfig, load_facility

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int]


def file_stamp(path: Path | None) -> Stamp | None:
    """What tells that a file changed: modification time, size and inode (an atomic rewrite,
    as the API's camera changes do it, gives a new inode even within one mtime tick); None when
    it cannot be read. The one change test of every config watcher."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FacilityWatch:
    """Holds the current facility config and reloads it when the file changes."""

    def __init__(self, path: Path, check_every_s: float = 5.0) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self.config: FacilityConfig = load_facility(path)
        self._stamp = file_stamp(path)
        self._checked = time.monotonic()

    def refresh(self, force: bool = False) -> bool:
        """Reload if the file changed (looked at every ``check_every_s``); True if reloaded."""
        now = time.monotonic()
        if not force and now - self._checked < self.check_every_s:
            return False
        self._checked = now
        stamp = file_stamp(self.path)
        if stamp is None or (stamp == self._stamp and not force):
            return False
        self._stamp = stamp
        try:
            self.config = load_facility(self.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("facility config edit rejected", extra={"problem": problem})
            return False
        log.info("facility config reloaded", extra={"path": str(self.path)})
        return True

    def current(self) -> FacilityConfig:
        """The facility config, re-read if the file changed (new cameras join without a
        restart); what a frame handler asks for on every batch."""
        self.refresh()
        return self.config
