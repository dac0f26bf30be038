# syntax=docker/dockerfile:1
#
# One Dockerfile, one image per dependency set. Light services must not pull torch (~6 GB), so
# the optional extras are a build argument:
#
#   docker build -t depotwatch:0.1.0 .                                   # capture, aggregator,
#                                                                        # infra init
#   docker build -t depotwatch-detect:0.1.0 --build-arg EXTRAS=detect .  # position-estimator
#   docker build -t depotwatch-ocr:0.1.0 --build-arg EXTRAS=ocr .        # plate-ocr (reads the
#                                                                        # detector's plate boxes)
#   docker build -t depotwatch-state:0.1.0  --build-arg EXTRAS=state .   # state-estimator
#   docker build -t depotwatch-dashboard:0.1.0 --build-arg EXTRAS=dashboards .  # dashboard
#
# (`docker compose build` builds all five.) Versions come from requirements.lock, so images get
# exactly what CI tested. On CPU-only hosts, PyTorch's CPU wheels are much smaller:
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# The entry point is the `depotwatch` CLI: `docker run depotwatch:0.1.0 capture --camera cam-s1`.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# Comma-separated extras from pyproject.toml: "", "detect", "ocr", "state", "dashboards".
ARG EXTRAS=""
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, in their own layer: editing the code does not re-download torch. Empty
# package stubs let pip resolve the project's dependencies before the sources are copied.
COPY pyproject.toml requirements.lock README.md ./
RUN mkdir -p schemas services \
    && touch schemas/__init__.py services/__init__.py \
    && pip install --constraint requirements.lock ".${EXTRAS:+[${EXTRAS}]}" \
    && pip uninstall --yes depotwatch \
    && rm -rf schemas services build *.egg-info
# The sources (and trained weights under models/, when the repository ships them); see
# .dockerignore for what stays out.
COPY . .
# Editable install: the code runs from /app, so data files (dashboard pages, scenarios) and
# every subpackage are found exactly as in the repository.
RUN pip install --no-deps --editable . && depotwatch --version

FROM python:${PYTHON_VERSION}-slim AS runtime
ARG EXTRAS=""
LABEL org.opencontainers.image.title="depotwatch" \
      org.opencontainers.image.description="Multi-camera locomotive depot monitoring" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.depotwatch.extras="${EXTRAS}"
RUN groupadd --system --gid 10001 depotwatch \
    && useradd --system --uid 10001 --gid depotwatch --home-dir /app --shell /usr/sbin/nologin depotwatch
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    YOLO_OFFLINE=1 \
    DEPOTWATCH_FACILITY_CONFIG=/etc/depotwatch/facility.yaml \
    DEPOTWATCH_SECRETS_DIR=/run/secrets \
    DEPOTWATCH_HTTP_HOST=0.0.0.0 \
    DEPOTWATCH_HTTP_PORT=9100 \
    DEPOTWATCH_LOG_FORMAT=json
USER depotwatch
# /metrics and /healthz of every service.
EXPOSE 9100
# python:slim has no curl; urlopen raises (exit 1) on connection errors and on HTTP 503. The
# dashboard serves /healthz on its own port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request as u; p=os.environ.get('DEPOTWATCH_DASHBOARD_PORT') or os.environ.get('DEPOTWATCH_HTTP_PORT', '9100'); u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4)"]
ENTRYPOINT ["depotwatch"]
CMD ["--help"]
