"""config.json contents of Qwen3Guard-Stream checkpoints, per size (docs/model.md §2).

``0.6b``, ``4b`` and ``8b`` follow the released architecture; values the spec marks *uncertain*
are marked below too, and a real checkpoint's own config.json always wins over these (the loader
reads the checkpoint's file, never this table). ``tiny`` is our own test size: a toy backbone but the
REAL vocabulary (151,936 rows), so the real Qwen3 tokenizer and its special ids work unchanged.
"""

from __future__ import annotations

from typing import Any

from pipeline.labels import LabelMaps

ARCHITECTURE = "Qwen3ForGuardModel"
SIZES: tuple[str, ...] = ("tiny", "0.6b", "4b", "8b")

# Qwen3 special ids (docs/model.md §4); <|endoftext|> doubles as padding in Qwen's tokenizer config.
BOS_TOKEN_ID = 151643
EOS_TOKEN_ID = 151645
PAD_TOKEN_ID = 151643
VOCAB_SIZE = 151936

# Backbone shape per size: the fields that differ between sizes.
_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "guard_inner_size": 32,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    },
    "0.6b": {
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
        "guard_inner_size": 512,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
    "4b": {
        "hidden_size": 2560,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 9728,
        "guard_inner_size": 1280,          # uncertain: no official file seen; hidden/2 as at 0.6B
        "max_position_embeddings": 8192,   # uncertain
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
    "8b": {
        "hidden_size": 4096,               # uncertain
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 12288,        # uncertain
        "guard_inner_size": 2048,          # uncertain: hidden/2 as at 0.6B
        "max_position_embeddings": 8192,   # uncertain
        "tie_word_embeddings": False,      # uncertain
        "torch_dtype": "bfloat16",
    },
}

# Fields every size shares: standard Qwen3, in the spelling of the released config.json files
# (rope_theta, torch_dtype), which transformers 5 still reads.
_COMMON: dict[str, Any] = {
    "model_type": "qwen3",
    "vocab_size": VOCAB_SIZE,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "sliding_window": None,
    "initializer_range": 0.02,
    # The release says false; the pipeline ignores it and always uses the KV cache (docs/model.md §2).
    "use_cache": False,
    "bos_token_id": BOS_TOKEN_ID,
    "eos_token_id": EOS_TOKEN_ID,
    "pad_token_id": PAD_TOKEN_ID,
    "num_risk_level": 3,
    "num_category": 8,
    "num_query_risk_level": 3,
    "num_query_category": 9,
}


def stream_config_dict(size: str) -> dict[str, Any]:
    """The full config.json of a Qwen3Guard-Stream checkpoint of ``size`` (tiny|0.6b|4b|8b)."""
    key = size.lower()
    if key not in _SHAPES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    shape = _SHAPES[key]
    config: dict[str, Any] = {"architectures": [ARCHITECTURE], **_COMMON, **shape}
    # max_window_layers only matters with sliding windows (off); the release sets it to the depth.
    config["max_window_layers"] = shape["num_hidden_layers"]
    config.update(LabelMaps().to_config())
    return config
