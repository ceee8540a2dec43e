"""Shared test setup. Fixture families live in their own plugin modules, one owner each."""

from __future__ import annotations

import os

# Tests never reach a model hub: every model is made locally by `guardstream model init-random`.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.stack",   # real Kafka + Redis on loopback
    "tests.fixtures.models",  # tokenizer, random torch checkpoints
    "tests.fixtures.onnx",    # ONNX exports of those checkpoints
]
