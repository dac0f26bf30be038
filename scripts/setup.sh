#!/usr/bin/env bash
# One-time (and idempotent) set-up of a fresh machine: system packages and the virtualenv.
# Called by `make setup`, `make test` and `make up`; safe to run again (it only does what changed).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Debian packages: GStreamer's RTSP server for the simulated cameras (it runs under the system
# python3, where `gi` lives), Prometheus for the scrape test, Chromium for the dashboard test,
# Redis for the job engine (Celery's broker and the job store).
APT_PACKAGES=(
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-ugly gstreamer1.0-rtsp
  chromium prometheus redis-server
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: warning: apt-get not found; install ${missing[*]} for the RTSP simulator" >&2
  fi
fi

PY=${PYTHON:-python3}
if ! command -v uv >/dev/null; then
  echo "setup: installing uv"
  "$PY" -m pip install -q uv
fi

# The venv is rebuilt only when the lock file or pyproject.toml changed since the last sync.
STAMP=.venv/.depotwatch-synced
if [ ! -f "$STAMP" ] || [ requirements.lock -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  [ -x .venv/bin/python ] || uv venv -q -p "$PY" .venv
  echo "setup: syncing .venv with requirements.lock (first run downloads ~3 GB: torch and CUDA libs)"
  VIRTUAL_ENV=.venv uv pip sync -q requirements.lock
  VIRTUAL_ENV=.venv uv pip install -q --no-deps -e .
  touch "$STAMP"
fi
