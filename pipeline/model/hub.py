"""Finding a checkpoint: a local directory, or a Hugging Face id fetched with huggingface_hub.

Kept free of torch so that the stream worker, which may be handed a hub id only to read its
config and tokenizer, never imports torch on its way to the ONNX engine.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --- finding a checkpoint ------------------------------------------------------------------------
def resolve_model_dir(model: str) -> Path:
    """A local checkpoint directory as is; otherwise a Hugging Face id fetched with huggingface_hub."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{model} is a file; pass the checkpoint directory that holds config.json")
    if not _HUB_ID.match(model):
        raise UserError(
            f"model directory {model} does not exist; pass a checkpoint directory or a Hugging Face id "
            "like Qwen/Qwen3Guard-Stream-0.6B (guardstream model init-random --out DIR makes a local one)"
        )
    return _download(model)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        folder = snapshot_download(
            repo_id=repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        raise UserError(
            f"cannot fetch {repo_id}: the Hugging Face hub is unreachable or offline "
            f"({type(exc).__name__}: {exc}). Pass a local checkpoint directory instead, or make a random one "
            "with: guardstream model init-random --arch stream --size tiny --out DIR"
        ) from None
    return Path(folder)
