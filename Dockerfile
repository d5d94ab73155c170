# syntax=docker/dockerfile:1
#
# tokenscale: the OTLP receiver (gRPC 4317, HTTP 4318) writing to TimescaleDB or PostgreSQL.
#
#   docker build -t tokenscale .
#   docker run -p 4317:4317 -p 4318:4318 \
#       -e TOKENSCALE_DATABASE_URL=postgresql://tokenscale@db:5432/tokenscale -e PGPASSWORD=... tokenscale
#
# Migrations are applied when the service starts. See docs/deployment.md for the full stack.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a wheel of this project, installed with its dependencies into /opt/tokenscale ----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/tokenscale
WORKDIR /src

# The dependencies first (the base and the `server` extra), read from pyproject.toml alone, so that editing the source does not
# invalidate this (slow) layer. Every dependency ships manylinux wheels: no compiler is needed.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" \
        > /tmp/requirements.txt \
 && /opt/tokenscale/bin/pip install -r /tmp/requirements.txt

COPY . .
# Fails the build, not the container, when a module the service imports lacks a declared dependency.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/tokenscale/bin/pip install --no-deps /wheels/tokenscale-*.whl \
 && /opt/tokenscale/bin/python -c "import tokenscale.cli, tokenscale.receiver.server, tokenscale.store" \
 && /opt/tokenscale/bin/tokenscale --version

# ---- runtime: the same slim base, the virtual environment, a non-root user -------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
RUN groupadd --system --gid ${UID} tokenscale \
 && useradd --system --uid ${UID} --gid tokenscale --home-dir /var/lib/tokenscale --create-home \
        --shell /usr/sbin/nologin tokenscale

COPY --from=build /opt/tokenscale /opt/tokenscale

ENV PATH=/opt/tokenscale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENSCALE_HOST=0.0.0.0 \
    TOKENSCALE_GRPC_PORT=4317 \
    TOKENSCALE_HTTP_PORT=4318 \
    TOKENSCALE_DATA_DIR=/var/lib/tokenscale

# Numeric, so that orchestrators enforcing "run as non-root" can verify it.
USER ${UID}:${UID}
WORKDIR /var/lib/tokenscale

# OTLP/gRPC and OTLP/HTTP (the OTLP default ports).
EXPOSE 4317 4318

# The slim image has no curl: ask /healthz with the standard library (a non-2xx answer raises).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TOKENSCALE_HTTP_PORT', '4318') + '/healthz', timeout=4)"]

CMD ["tokenscale", "serve", "--host", "0.0.0.0"]
