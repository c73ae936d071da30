# syntax=docker/dockerfile:1
# The cpo image: one image for every command (`worker`, `exporter`, `simulate`, `topics`, ...).
#   docker build -t cpo-streams:0.2.0 .
#   docker run --rm cpo-streams:0.2.0 worker
# The base is pinned by tag; pin it by digest in production:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# Stage 1: build the project and its dependencies into a self-contained virtualenv.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
RUN /opt/venv/bin/pip install .

# Stage 2: the runtime, with the virtualenv only (no build tree, no pip cache), as a non-root user.
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/cpo cpo
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/cpo
# CPO_METRICS_PORT (worker) and CPO_EXPORTER_PORT (exporter) defaults.
EXPOSE 9108 9109
ENTRYPOINT ["cpo"]
CMD ["--help"]
