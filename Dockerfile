# One image per service: `docker build --build-arg SERVICE=loader -t jetl-loader .` installs jetl and that service
# only. Each service package asks for the jetl extras its stage needs (extractor: jetl[http,db]; transformer: jetl;
# loader: jetl[clickhouse]; scheduler: jetl[http]), so only the loader image carries chdb and clickhouse-connect
# (tests/deploy/test_packaging.py checks the lock). Without SERVICE, the workspace and every extra are installed.
# compose.yaml builds the four images from this file.

ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.13 /uv /usr/local/bin/uv
ARG SERVICE=""
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# dependencies first (a layer that survives code edits), then the workspace itself
COPY pyproject.toml uv.lock ./
COPY shared/pyproject.toml shared/pyproject.toml
COPY services/extractor/pyproject.toml services/extractor/pyproject.toml
COPY services/transformer/pyproject.toml services/transformer/pyproject.toml
COPY services/loader/pyproject.toml services/loader/pyproject.toml
COPY services/scheduler/pyproject.toml services/scheduler/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace ${SERVICE:+--package jetl-$SERVICE}
COPY shared shared
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev ${SERVICE:+--package jetl-$SERVICE}

FROM python:${PYTHON}-slim
RUN useradd --uid 10001 --create-home jetl && mkdir /data && chown jetl /data
COPY --from=build --chown=jetl /app /app
COPY --chown=jetl pipelines /app/pipelines
COPY --chown=jetl migrations /app/migrations
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JETL_PIPELINES_DIR=/app/pipelines \
    JETL_DATA_DIR=/data \
    JETL_LOG_FORMAT=json
WORKDIR /app
USER jetl
VOLUME ["/data"]
ENTRYPOINT ["jetl"]
CMD ["--help"]
