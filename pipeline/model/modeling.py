"""Qwen3Guard-Stream in torch: transformers' ``Qwen3Model`` plus the two guard head pathways.

Built from the checkpoint's config.json without ``trust_remote_code`` (docs/model.md §2). Parameter
names equal the official checkpoint's, so its safetensors load by name. The heads read the backbone
output after the final norm; each pathway is ``pre`` Linear -> RMSNorm -> two Linear heads, with no
bias and no activation anywhere. Every position gets all four outputs; the caller reads the pair
for the role it is scoring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.cache_utils import Cache
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from pipeline.labels import LabelMaps

# config.json keys that are ours, not Qwen3's; they stay out of the backbone config.
GUARD_FIELDS: tuple[str, ...] = (
    "guard_inner_size", "num_risk_level", "num_category", "num_query_risk_level", "num_query_category",
    "response_risk_level_map", "response_category_map", "query_risk_level_map", "query_category_map",
)
# The dtype a checkpoint was saved in is informational: the loader's dtype argument decides.
_DTYPE_FIELDS = ("torch_dtype", "dtype")
# Cache is transformers' cache protocol (DynamicCache in practice).
KVCache = Cache


def backbone_config(config: Mapping[str, Any], attn_implementation: str = "sdpa") -> Qwen3Config:
    """The ``Qwen3Config`` of the backbone from a Stream config.json dict.

    sdpa is the default because the ONNX export relies on it (docs/onnx-export.md);
    eager is available for debugging and gives the same numbers up to float rounding.
    """
    fields = {k: v for k, v in config.items() if k not in GUARD_FIELDS and k not in _DTYPE_FIELDS}
    qwen3 = Qwen3Config(**fields)
    qwen3._attn_implementation = attn_implementation
    return qwen3


@dataclass
class GuardStreamOutput:
    """Per-position logits [B, T, n] of both pathways and, with use_cache, the updated cache."""

    risk_level_logits: torch.Tensor          # response pathway, [B, T, num_risk_level]
    category_logits: torch.Tensor            # [B, T, num_category]
    query_risk_level_logits: torch.Tensor    # query pathway, [B, T, num_query_risk_level]
    query_category_logits: torch.Tensor      # [B, T, num_query_category]
    past_key_values: KVCache | None = None


HeadLogits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Qwen3GuardStream(nn.Module):
    """The Stream model. ``self.model`` is the Qwen3 backbone; head modules carry the official names."""

    def __init__(self, config: Mapping[str, Any], *, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.guard_config: dict[str, Any] = dict(config)
        self.labels = LabelMaps.from_config(config)
        qwen3 = backbone_config(config, attn_implementation)
        hidden = int(qwen3.hidden_size)
        inner = int(config["guard_inner_size"])
        eps = float(qwen3.rms_norm_eps)

        self.model = Qwen3Model(qwen3)
        # Response (assistant) pathway.
        self.risk_level_category_pre = nn.Linear(hidden, inner, bias=False)
        self.risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
        self.risk_level_head = nn.Linear(inner, int(config.get("num_risk_level", 3)), bias=False)
        self.category_head = nn.Linear(inner, int(config.get("num_category", 8)), bias=False)
        # Query (user) pathway.
        self.query_risk_level_category_pre = nn.Linear(hidden, inner, bias=False)
        self.query_risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
        self.query_risk_level_head = nn.Linear(inner, int(config.get("num_query_risk_level", 3)), bias=False)
        self.query_category_head = nn.Linear(inner, int(config.get("num_query_category", 9)), bias=False)

    def heads(self, hidden_states: torch.Tensor) -> HeadLogits:
        """(risk, category, query_risk, query_category) logits from final-normed hidden states."""
        response = self.risk_level_category_layernorm(self.risk_level_category_pre(hidden_states))
        query = self.query_risk_level_category_layernorm(self.query_risk_level_category_pre(hidden_states))
        return (
            self.risk_level_head(response),
            self.category_head(response),
            self.query_risk_level_head(query),
            self.query_category_head(query),
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
    ) -> GuardStreamOutput:
        """Run the backbone on ``input_ids`` [B, T] (after ``past_key_values`` if given) and all heads.

        ``attention_mask`` is the 2-D padding mask over past + new positions (1 = real token).
        With ``use_cache`` the given cache (or a new DynamicCache) is extended and returned.
        """
        backbone = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        risk, category, query_risk, query_category = self.heads(backbone.last_hidden_state)
        return GuardStreamOutput(
            risk_level_logits=risk,
            category_logits=category,
            query_risk_level_logits=query_risk,
            query_category_logits=query_category,
            past_key_values=backbone.past_key_values if use_cache else None,
        )


def expected_tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Official tensor name -> shape for ``config``, without allocating any weights."""
    with torch.device("meta"):
        model = Qwen3GuardStream(config)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}
