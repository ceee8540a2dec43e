# syntax=docker/dockerfile:1
# Generative worker (Qwen3Guard-Gen on torch) and model exporter (`guardstream export`, which needs
# torch + onnx). Build from the repository root:
#   docker build -f deploy/docker/generative.Dockerfile -t guardstream-generative:0.1.0 .
# PyPI's Linux torch wheels bring their CUDA runtime as nvidia-* wheels, so a slim Python base is enough:
# hosts need only a recent NVIDIA driver and the container toolkit. Without a GPU it runs on CPU.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY pipeline ./pipeline
COPY workers ./workers
RUN /opt/venv/bin/pip install --no-cache-dir ".[torch]" \
 && /opt/venv/bin/python -c "import torch, transformers, faust, onnx, onnxscript" \
 && /opt/venv/bin/guardstream --help > /dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 guard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/guardstream --create-home \
      --shell /usr/sbin/nologin guard
COPY --from=build /opt/venv /opt/venv
# The working directory is where faust keeps its table data: a volume in Kubernetes.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/guardstream \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /var/lib/guardstream
USER 10001:10001
EXPOSE 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GUARD_METRICS_PORT', '9400'), timeout=4)"]
ENTRYPOINT ["guardstream"]
CMD ["worker", "generative", "--model", "/models/checkpoint"]
