"""The stream worker's inference path must not need torch (it is an optional extra)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_engine_does_not_import_torch() -> None:
    code = ("import sys, pipeline.onnx.engine, pipeline.onnx.kv_cache, pipeline.onnx.batching; "
            "bad = sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stream_worker_resolving_a_hub_id_does_not_import_torch() -> None:
    # A hub id that cannot be fetched offline still goes through the resolver's whole path.
    code = ("import os, sys; os.environ['HF_HUB_OFFLINE'] = '1'\n"
            "import workers.stream.app as app\n"
            "from pipeline.errors import UserError\n"
            "try:\n    app.model_files_dir('Qwen/Qwen3Guard-Stream-0.6B')\nexcept UserError:\n    pass\n"
            "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
