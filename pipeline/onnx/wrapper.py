"""The torch module that is exported: backbone + heads with the past KV as explicit tensors.

ONNX needs plain tensors in and out, so the transformers ``DynamicCache`` is rebuilt from the past
tensors inside ``forward`` and its grown contents are returned as the presents. The 4-D additive
mask is built here from the 2-D key mask, so callers of the graph only pass ``[B, P+S]`` ones and
zeros: padding may sit anywhere in the past and after the real new tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache

GQA_ATTENTION = "guardstream_sdpa_gqa"


def _sdpa_gqa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    # transformers' own sdpa repeats K/V to all query heads whenever a mask is given; with
    # enable_gqa the exporter emits ONNX's Attention op with grouped KV heads (no Expand per step).
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def gqa_attention(stream: Any) -> Iterator[None]:
    """Run ``stream``'s backbone with the GQA sdpa attention for the duration of the block."""
    AttentionInterface.register(GQA_ATTENTION, _sdpa_gqa_attention)
    config: Any = stream.model.config
    previous = config._attn_implementation
    config._attn_implementation = GQA_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


class ExportableStream(nn.Module):
    """forward(input_ids [B,S], attention_mask [B,P+S], position_ids [B,S], *past) -> (4 logits, *presents).

    ``past`` is flat: key0, value0, key1, value1, ... each ``[B, kv_heads, P, head_dim]``.
    """

    stream: Any  # Qwen3GuardStream: .model (Qwen3Model) and .heads(hidden)

    def __init__(self, stream: nn.Module) -> None:
        super().__init__()
        self.stream = stream
        backbone: Any = stream.model
        self.num_layers = int(backbone.config.num_hidden_layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        backbone: Any = self.stream.model
        cache = DynamicCache(config=backbone.config)
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        dtype = backbone.embed_tokens.weight.dtype
        additive = additive_mask(attention_mask, input_ids.shape[1], dtype)
        out = backbone(
            input_ids=input_ids,
            attention_mask={"full_attention": additive},
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        logits = self.stream.heads(out.last_hidden_state)
        presents: list[torch.Tensor] = []
        for layer in range(self.num_layers):
            filled: Any = cache.layers[layer]
            presents.append(filled.keys)
            presents.append(filled.values)
        return (*logits, *presents)


def additive_mask(key_mask: torch.Tensor, new_tokens: int | torch.SymInt, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, S, P+S] additive mask: 0 where query i may read key j, the most negative finite float elsewhere.

    Query i sits at concatenated index P+i; it reads key j if j is not padding and j <= P+i. The
    finite minimum (never -inf) keeps rows that are all padding finite instead of NaN.
    """
    total = key_mask.shape[1]
    past = total - new_tokens
    query_index = torch.arange(new_tokens, device=key_mask.device).unsqueeze(1) + past
    key_index = torch.arange(total, device=key_mask.device).unsqueeze(0)
    allowed = (key_index <= query_index).unsqueeze(0) & (key_mask > 0).unsqueeze(1)
    zero = torch.zeros((), dtype=dtype, device=key_mask.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=key_mask.device)
    return torch.where(allowed, zero, blocked).unsqueeze(1)
