"""The torch module that is exported: backbone + heads, reading a preallocated KV buffer in place.

ONNX needs plain tensors in and out, so each layer's past keys and values come in as explicit
tensors (the conversation's fixed-capacity buffer) and only the new tokens' keys and values go out.
Attention is computed against the buffer and the new tokens separately and merged in one softmax,
so the graph never concatenates the whole past (docs/onnx-export.md). The 4-D additive mask is
built here from the 2-D key mask, so callers of the graph only pass ``[B, C+S]`` ones and zeros.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


class ExportableStream(nn.Module):
    """forward(input_ids [B,S], attention_mask [B,C+S], position_ids [B,S], *past) -> (4 logits, *new K/V).

    ``past`` is flat: key0, value0, key1, value1, ... each ``[B, kv_heads, C, head_dim]``: the
    conversation's preallocated KV buffer of capacity C, of which the key mask says which
    positions hold real tokens. The outputs after the logits are only the new tokens' keys and
    values ``[B, kv_heads, S, head_dim]``; the engine writes them into the buffer itself. No
    Concat of past and new: attention reads the past where it lies (docs/onnx-export.md).
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
        dtype = backbone.embed_tokens.weight.dtype
        additive = additive_mask(attention_mask, input_ids.shape[1], dtype)
        new_kv: list[torch.Tensor] = []
        with split_past_attention(self.stream, past, new_kv):
            out = backbone(
                input_ids=input_ids,
                attention_mask={"full_attention": additive},
                position_ids=position_ids,
                past_key_values=None,
                use_cache=False,
            )
        logits = self.stream.heads(out.last_hidden_state)
        return (*logits, *new_kv)


SPLIT_ATTENTION = "guardstream_split_past"


@contextmanager
def split_past_attention(stream: Any, past: tuple[torch.Tensor, ...], new_kv: list[torch.Tensor]) -> Iterator[None]:
    """Attention over (past buffer, new tokens) without joining them; records the new K/V per layer."""

    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        layer = int(getattr(module, "layer_idx", 0))
        new_kv.extend((key, value))
        out = split_attention(query, past[2 * layer], past[2 * layer + 1], key, value, attention_mask, scaling)
        return out, None

    # A local entry of transformers' attention table, removed again: nothing stays registered.
    ALL_ATTENTION_FUNCTIONS[SPLIT_ATTENTION] = attention
    config: Any = stream.model.config
    previous = config._attn_implementation
    config._attn_implementation = SPLIT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
        del ALL_ATTENTION_FUNCTIONS[SPLIT_ATTENTION]


def split_attention(
    query: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """softmax(q [past|new]^T + mask) [past|new] computed as two products, returned as [B, S, Hq, D].

    Query heads are grouped by KV head (head h reads KV head h // G, as transformers' repeat_kv
    does), so a reshape gives [B, Hkv, G*S, D] and K/V are never repeated or copied. Only the
    scores (G*S x (C+S), far smaller than the KV) are joined for the softmax.
    """
    batch, q_heads, new, dim = query.shape
    kv_heads, capacity = past_key.shape[1], past_key.shape[2]
    groups = q_heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    q = (query * scale).reshape(batch, kv_heads, groups * new, dim)
    scores = torch.cat([torch.matmul(q, past_key.transpose(-1, -2)), torch.matmul(q, key.transpose(-1, -2))], dim=-1)
    scores = scores.reshape(batch, kv_heads, groups, new, -1)
    if mask is not None:
        scores = scores + mask.unsqueeze(1)  # [B, 1, S, C+S] -> broadcast over KV heads and groups
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype).reshape(batch, kv_heads, groups * new, -1)
    out = torch.matmul(probs[..., :capacity], past_value) + torch.matmul(probs[..., capacity:], value)
    return out.reshape(batch, q_heads, new, dim).transpose(1, 2).contiguous()


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
