# syntax=docker/dockerfile:1
# The observer image: one image, every role (`observer bridge|worker|sink|topics apply|...`).
#   docker build -t krx-observer:latest .
# tests/test_dockerfile.py checks the rules below (multi-stage, non-root, health check, no secrets).

# --- build: a virtualenv with the project and its dependencies ------------------------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/observer/venv
WORKDIR /opt/observer/src
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py \
    && /opt/observer/venv/bin/pip install . \
    && /opt/observer/venv/bin/pip uninstall -y krx-observer
COPY app ./app
COPY schemas ./schemas
COPY topics ./topics
# Editable: the code finds schemas/ and topics/ beside app/, as in a checkout.
RUN /opt/observer/venv/bin/pip install --no-deps -e . \
    && /opt/observer/venv/bin/python -m compileall -q app

# --- runtime: the virtualenv and the sources only, as an unprivileged user ------------------------------------
FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 observer \
    && useradd --system --uid 10001 --gid observer --home-dir /var/lib/observer --create-home observer
COPY --from=build /opt/observer /opt/observer
ENV PATH=/opt/observer/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OBSERVER_HOME=/var/lib/observer \
    OBSERVER_DATA_ROOT=/var/lib/observer/data
WORKDIR /var/lib/observer
USER 10001:10001
# Each service sets OBSERVER_HEALTHCHECK_URL (worker /api/health, sink and bridge /metrics).
HEALTHCHECK --interval=15s --timeout=6s --start-period=90s --retries=4 CMD ["observer", "healthcheck"]
ENTRYPOINT ["observer"]
CMD ["--help"]
