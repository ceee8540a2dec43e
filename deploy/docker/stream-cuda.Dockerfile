# syntax=docker/dockerfile:1
# Stream worker, GPU: ONNX Runtime's CUDA provider (onnxruntime-gpu), no torch. Build from the repository root:
#   docker build -f deploy/docker/stream-cuda.Dockerfile -t guardstream-stream-cuda:0.1.0 .
# The onnxruntime-gpu pinned in pyproject's `gpu` extra (1.31.x on PyPI) is built for CUDA 13 and
# cuDNN 9, hence this base; hosts need an NVIDIA driver >= 580 and the NVIDIA container toolkit.
# The model comes from outside the image: an ONNX export mounted at /models/onnx (or made by an init
# container running `guardstream export`, see deploy/k8s).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's python3 is 3.12, inside the project's >=3.11,<3.13.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY pipeline ./pipeline
COPY workers ./workers
# onnxruntime (a base dependency) and onnxruntime-gpu unpack into the same `onnxruntime` package, so
# with both installed the files are a mix of the two and uninstalling either breaks the other. Install,
# remove both, then reinstall only the GPU build (its own dependencies are already there). The version
# is read from pyproject's `gpu` extra so the image and the project cannot disagree.
RUN /opt/venv/bin/pip install --no-cache-dir ".[gpu]" \
 && ORT_GPU="$(/opt/venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"][0])')" \
 && /opt/venv/bin/pip uninstall -y onnxruntime onnxruntime-gpu \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps "${ORT_GPU}" \
 && /opt/venv/bin/python -c "import importlib.metadata as m, onnxruntime as ort; \
names = {d.metadata['Name'].lower() for d in m.distributions()}; \
assert 'onnxruntime' not in names, 'the CPU onnxruntime is still installed'; \
assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()" \
 && /opt/venv/bin/guardstream --help > /dev/null

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Only the interpreter: no pip, no venv module, no compilers in the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 guard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/guardstream --create-home \
      --shell /usr/sbin/nologin guard
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/guardstream \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GUARD_DEVICE=cuda
WORKDIR /var/lib/guardstream
USER 10001:10001
EXPOSE 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GUARD_METRICS_PORT', '9400'), timeout=4)"]
ENTRYPOINT ["guardstream"]
CMD ["worker", "stream", "--model", "/models/onnx"]
