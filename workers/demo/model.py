"""Which model the demo runs: the real Qwen3Guard-Stream when the hub answers, else a random tiny one."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HUB_MODEL = "Qwen/Qwen3Guard-Stream-0.6B"
# The random model's Safe prior in logits (``guardstream model init-random --safe-prior``): most of the
# demo's replies are judged Safe and a few are not, as a deployment's real model would mostly judge
# them. Seed 0 with this prior gives the demo conversations all three outcomes (released, flagged,
# stopped); the verdicts are still random.
SAFE_PRIOR = 4.0
SEED = 0


@dataclass(frozen=True)
class DemoModel:
    export_dir: Path
    source: str
    trained: bool


def hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def prepare_model(state_dir: Path, say: Callable[[str], None]) -> DemoModel:
    """An ONNX export for the worker, made once and reused by later demo runs."""
    from pipeline.errors import UserError
    from pipeline.onnx.export import export_stream_model
    from pipeline.onnx.layout import KV_LAYOUT, has_current_layout

    root = state_dir / "demo"
    # The KV layout in the names: an export made for an older engine is left alone, a new one is made.
    if hub_reachable():
        export_dir = root / f"qwen3guard-stream-0.6b-onnx-{KV_LAYOUT}"
        if has_current_layout(export_dir):
            return DemoModel(export_dir, HUB_MODEL, True)
        say(f"downloading {HUB_MODEL} and exporting it to ONNX (first run only, a few minutes)")
        try:
            export_stream_model(HUB_MODEL, export_dir, progress=say)
            return DemoModel(export_dir, HUB_MODEL, True)
        except UserError as exc:
            say(f"could not use {HUB_MODEL} ({exc}); falling back to a random tiny model")
    name = f"tiny-random-seed{SEED}-safe-prior{SAFE_PRIOR:g}"
    export_dir = root / f"{name}-onnx-{KV_LAYOUT}"
    if not has_current_layout(export_dir):
        from pipeline.model.checkpoint import init_random_stream

        say("the Hugging Face hub is unreachable: making a random tiny checkpoint (UNTRAINED, biased toward "
            f"Safe by {SAFE_PRIOR:g} logits) and exporting it")
        checkpoint = init_random_stream(root / name, "tiny", seed=SEED, safe_prior=SAFE_PRIOR)
        export_stream_model(str(checkpoint), export_dir, progress=say)
    return DemoModel(export_dir, f"random tiny checkpoint (seed {SEED}, Safe prior {SAFE_PRIOR:g})", False)
