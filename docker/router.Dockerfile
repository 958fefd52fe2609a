# syntax=docker/dockerfile:1.7
# Router service image: slim Python, the router package without extras (no ML runtime: the
# classifier runs inside Triton), gunicorn as the entrypoint, non-root, read-only-root friendly.
#
#   docker build -f docker/router.Dockerfile -t <registry>/llm-router/router:0.1.0 .
#
# PYTHON_IMAGE is any Debian-family image with Python 3.11 and pip: `make router-image` builds on
# a base made from Debian's own packages where no registry is reachable (tests/test_router_image.py).
#
# The Helm chart (helm/llm-router) runs it as uid 10001 with a read-only root filesystem, an
# in-memory /tmp, the config at /etc/llm-router/router.yaml (env ROUTER_CONFIG) and port 8080.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: wheels for the service and its dependencies (nothing of this stage ships) --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY router_service ./router_service
# For `python -m export.promote` (router-model releases) in router pods; the rest of export/
# needs PyTorch and is never imported here.
COPY export ./export
# The versions the test suite passed with (constraints.txt), as `make install` gets them.
RUN pip wheel -c constraints.txt --wheel-dir /wheels .

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ROUTER_CONFIG=/etc/llm-router/router.yaml \
    ROUTER_HOST=0.0.0.0 \
    ROUTER_PORT=8080
RUN groupadd --system --gid 10001 router \
 && useradd --system --uid 10001 --gid router --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin router
# `pip install .` without extras, from the wheels built above (no compilers in this image).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels triton-llm-router
# The embedded default config (the chart mounts its ConfigMap over /etc/llm-router).
COPY config/router.yaml /etc/llm-router/router.yaml
USER 10001:10001
EXPOSE 8080
# router_service/wsgi.py: app = create_app(), reading env ROUTER_CONFIG; gunicorn settings from
# router_service/gunicorn_conf.py (env ROUTER_HOST, ROUTER_PORT, WEB_CONCURRENCY, ROUTER_THREADS,
# ROUTER_WORKER_TIMEOUT); its heartbeat files go to $TMPDIR (/tmp, an emptyDir under the chart).
ENTRYPOINT ["gunicorn", "-c", "python:router_service.gunicorn_conf", "router_service.wsgi:app"]
