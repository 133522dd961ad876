# capos-sched: the daemon, the CLI and the example services in one image.
#
#   docker build -t capos-sched .
#   docker run --rm capos-sched capos-sched simulate --json
#   docker compose up          # the daemon and the tuner (docker-compose.yml)
#
# Stage 1 builds wheels for capos-sched and its dependencies; stage 2 installs
# them offline, so a container never needs the network and never installs at
# start. The schema and the manifests ship inside the wheel (package data);
# /app keeps the manifests and the services for commands that name them.
# tests/rpc/test_compose.py checks this file and docker-compose.yml statically.

FROM python:3.11-slim AS wheels
WORKDIR /src
# setup.py builds the optional C accelerator where the build stage has a
# compiler (the slim image has none: the pure-Python core runs, as designed).
COPY pyproject.toml setup.py README.md ./
COPY schema schema
COPY manifests manifests
COPY bench bench
COPY capos_sched capos_sched
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels capos-sched \
    && rm -rf /wheels
# An unprivileged user owns the grant tokens and the admin socket; named
# volumes mounted on these folders start with their ownership.
RUN useradd --system --uid 10001 --home-dir /app capos \
    && mkdir -p /grants /run/capos \
    && chown capos:capos /grants /run/capos
WORKDIR /app
COPY manifests manifests
COPY services services
USER capos
ENV CAPOS_SCHED_RUN_DIR=/run/capos
CMD ["capos-sched", "--help"]
