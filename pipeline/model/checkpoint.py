"""Loading and saving Qwen3Guard-Stream checkpoints in the official Hugging Face layout.

Tensors are matched by their official names; anything missing, unexpected or mis-shaped is a
UserError naming the tensor, because a silently half-loaded guard is worse than none. Finding a
checkpoint and the file layout live in :mod:`pipeline.model.layout`, random checkpoints in
:mod:`pipeline.model.random_init`; both entry points are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from pipeline.errors import UserError
from pipeline.model.hub import resolve_model_dir
from pipeline.model.layout import (
    DEFAULT_MAX_SHARD_BYTES,
    copy_tokenizer_files,
    read_stream_config,
    resolve_device,
    torch_dtype,
    weight_files,
    write_config,
    write_weights,
)
from pipeline.model.modeling import Qwen3GuardStream, expected_tensor_shapes
from pipeline.model.random_init import init_random_stream

# Checkpoint tensors we knowingly skip: the LM head is never used by the Stream model and is tied
# to the embeddings where it exists at all (0.6B/4B); an untied 8B release may still carry one.
IGNORED_TENSORS = frozenset({"lm_head.weight"})


def load_stream_state(folder: Path, config: Mapping[str, Any], dtype: torch.dtype,
                      device: str = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by official name, checked against ``config``, cast to ``dtype``."""
    expected = expected_tensor_shapes(config)
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                if name in IGNORED_TENSORS:
                    continue
                if name not in expected:
                    unexpected.append(name)
                    continue
                # The shape is read from the header, before any data is loaded.
                shape = tuple(handle.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise UserError(
                        f"tensor {name} in {file.name} has shape {list(shape)} but config.json implies "
                        f"{list(expected[name])}: the weights and config.json belong to different models"
                    )
                state[name] = handle.get_tensor(name).to(device=device, dtype=dtype)
    if unexpected:
        raise UserError(
            f"{folder} holds tensors this Qwen3Guard-Stream model does not have: {_few(unexpected)} "
            "(a different architecture, or a config.json with too few layers?)"
        )
    missing = [name for name in expected if name not in state]
    if missing:
        raise UserError(f"{folder} lacks tensors the model needs: {_few(missing)} (incomplete checkpoint?)")
    return state


def _few(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def build_stream_model(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], device: str = "cpu",
                       attn_implementation: str = "sdpa") -> Qwen3GuardStream:
    """A model holding exactly ``state``'s tensors, without ever allocating a random init."""
    with torch.device("meta"):
        model = Qwen3GuardStream(config, attn_implementation=attn_implementation)
    model.load_state_dict(state, strict=True, assign=True)
    # The rotary frequencies are non-persistent buffers computed at construction: on the meta
    # device they hold nothing, so build that one module for real (fp32, as transformers keeps it).
    model.model.rotary_emb = Qwen3RotaryEmbedding(config=model.model.config).to(device)
    return model.eval()


def load_stream_model(model: str, dtype: str = "fp32", device: str = "cpu", *,
                      attn_implementation: str = "sdpa") -> tuple[Qwen3GuardStream, dict[str, Any]]:
    """(model in eval mode, config.json dict) from a checkpoint directory or Hugging Face id."""
    folder = resolve_model_dir(model)
    config = read_stream_config(folder)
    where = resolve_device(device)
    state = load_stream_state(folder, config, torch_dtype(dtype, where), where)
    return build_stream_model(config, state, where, attn_implementation), config


def save_stream_checkpoint(model: Qwen3GuardStream, out: Path, *, dtype: str | None = None,
                           max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                           tokenizer_dir: Path | None = None) -> Path:
    """Write ``model`` in the official layout (config, weights, tokenizer) and return ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    config = dict(model.guard_config)
    target = torch_dtype(dtype) if dtype is not None else next(model.parameters()).dtype
    state = {n: t.to(target) for n, t in model.state_dict().items()}
    config["torch_dtype"] = str(target).removeprefix("torch.")
    write_config(out, config)
    write_weights(out, {n: t.detach().cpu() for n, t in state.items()}, max_shard_bytes)
    copy_tokenizer_files(out, tokenizer_dir)
    return out


__all__ = [
    "IGNORED_TENSORS", "build_stream_model", "init_random_stream", "load_stream_model", "load_stream_state",
    "read_stream_config", "resolve_model_dir", "save_stream_checkpoint",
]
