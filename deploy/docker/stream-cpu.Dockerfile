# syntax=docker/dockerfile:1
# Stream worker, CPU: ONNX Runtime's CPU provider, no torch. Build from the repository root:
#   docker build -f deploy/docker/stream-cpu.Dockerfile -t guardstream-stream-cpu:0.1.0 .
# The model comes from outside the image: an ONNX export mounted at /models/onnx (or made by an init
# container running `guardstream export`, see deploy/k8s).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY pipeline ./pipeline
COPY workers ./workers
# The base dependencies carry the CPU onnxruntime. The import check fails the build, not the pod.
RUN /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/python -c "import onnxruntime, confluent_kafka, redis, tokenizers, msgspec" \
 && /opt/venv/bin/guardstream --help > /dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 guard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/guardstream --create-home \
      --shell /usr/sbin/nologin guard
COPY --from=build /opt/venv /opt/venv
# Caches go to /tmp so that the root filesystem can be read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/guardstream \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache \
    GUARD_DEVICE=cpu
WORKDIR /var/lib/guardstream
USER 10001:10001
EXPOSE 9400
# Kubernetes uses its own probes; this serves plain `docker run`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GUARD_METRICS_PORT', '9400'), timeout=4)"]
ENTRYPOINT ["guardstream"]
CMD ["worker", "stream", "--model", "/models/onnx"]
