"""The torch Stream model: official parameter names and shapes, head wiring, KV-cache invariance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from pipeline.model.checkpoint import load_stream_model
from pipeline.model.modeling import Qwen3GuardStream
from pipeline.model.presets import stream_config_dict

LAYER_TENSORS = (
    "input_layernorm.weight",
    "mlp.down_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "post_attention_layernorm.weight",
    "self_attn.k_norm.weight",
    "self_attn.k_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.q_norm.weight",
    "self_attn.q_proj.weight",
    "self_attn.v_proj.weight",
)


def expected_shapes(hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int, ffn: int,
                    inner: int, vocab: int = 151936) -> dict[str, tuple[int, ...]]:
    """The official tensor layout, written out from the architecture description (docs/model.md §2)."""
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "risk_level_category_pre.weight": (inner, hidden),
        "risk_level_category_layernorm.weight": (inner,),
        "risk_level_head.weight": (3, inner),
        "category_head.weight": (8, inner),
        "query_risk_level_category_pre.weight": (inner, hidden),
        "query_risk_level_category_layernorm.weight": (inner,),
        "query_risk_level_head.weight": (3, inner),
        "query_category_head.weight": (9, inner),
    }
    per_layer = {
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
        "mlp.gate_proj.weight": (ffn, hidden),
        "mlp.up_proj.weight": (ffn, hidden),
        "mlp.down_proj.weight": (hidden, ffn),
        "self_attn.q_proj.weight": (heads * head_dim, hidden),
        "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.o_proj.weight": (hidden, heads * head_dim),
        "self_attn.q_norm.weight": (head_dim,),
        "self_attn.k_norm.weight": (head_dim,),
    }
    assert sorted(per_layer) == sorted(LAYER_TENSORS)
    for i in range(layers):
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def state_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def test_tiny_parameter_names_and_shapes_are_the_official_ones() -> None:
    with torch.device("meta"):
        model = Qwen3GuardStream(stream_config_dict("tiny"))
    assert state_shapes(model) == expected_shapes(64, 2, 4, 2, 16, 128, 32)


def test_06b_parameter_names_and_shapes_are_the_official_ones() -> None:
    with torch.device("meta"):
        model = Qwen3GuardStream(stream_config_dict("0.6b"))
    assert state_shapes(model) == expected_shapes(1024, 28, 16, 8, 128, 3072, 512)
    # ~0.6B parameters in all: the embedding table alone is 155.6M.
    assert 590e6 < sum(p.numel() for p in model.parameters()) < 610e6


def test_head_norms_are_bias_free_rmsnorms_with_the_config_eps() -> None:
    config = stream_config_dict("tiny") | {"rms_norm_eps": 1e-5}
    with torch.device("meta"):
        model = Qwen3GuardStream(config)
    for norm in (model.risk_level_category_layernorm, model.query_risk_level_category_layernorm):
        assert isinstance(norm, Qwen3RMSNorm)
        assert norm.variance_epsilon == 1e-5
    for linear in (model.risk_level_category_pre, model.risk_level_head, model.category_head,
                   model.query_risk_level_category_pre, model.query_risk_level_head, model.query_category_head):
        assert linear.bias is None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def manual_heads(model: Qwen3GuardStream, hidden: torch.Tensor) -> list[torch.Tensor]:
    """pre -> RMSNorm -> heads, written out by hand with no activation, from the module weights."""
    eps = float(model.guard_config["rms_norm_eps"])
    response = rms_norm(F.linear(hidden, model.risk_level_category_pre.weight),
                        model.risk_level_category_layernorm.weight, eps)
    query = rms_norm(F.linear(hidden, model.query_risk_level_category_pre.weight),
                     model.query_risk_level_category_layernorm.weight, eps)
    return [F.linear(response, model.risk_level_head.weight), F.linear(response, model.category_head.weight),
            F.linear(query, model.query_risk_level_head.weight), F.linear(query, model.query_category_head.weight)]


def outputs(out: object) -> list[torch.Tensor]:
    names = ("risk_level_logits", "category_logits", "query_risk_level_logits", "query_category_logits")
    return [getattr(out, n) for n in names]


@torch.no_grad()
def test_heads_read_the_backbone_output_after_the_final_norm(tiny_stream_dir: Path) -> None:
    model, _ = load_stream_model(str(tiny_stream_dir))
    ids = torch.tensor([[151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198]])
    seen: list[torch.Tensor] = []
    hook = model.model.norm.register_forward_hook(lambda _module, args, _out: seen.append(args[0]))
    try:
        backbone = model.model(ids)
    finally:
        hook.remove()
    got = outputs(model(ids))
    for actual, manual in zip(got, manual_heads(model, backbone.last_hidden_state), strict=True):
        torch.testing.assert_close(actual, manual)
    # The same computation on the last layer's output before model.norm gives other logits,
    # so the comparison above would catch heads wired to the un-normed states.
    before_norm = seen[0]
    assert not torch.allclose(manual_heads(model, before_norm)[0], got[0], atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("chunks", [(11,), (1,) * 11, (4, 1, 3, 3), (10, 1)])
def test_kv_cached_forward_equals_the_full_forward(tiny_stream_dir: Path, chunks: tuple[int, ...]) -> None:
    model, _ = load_stream_model(str(tiny_stream_dir))
    ids = torch.tensor([[151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198]])
    full = outputs(model(ids))
    cache = None
    pieces: list[list[torch.Tensor]] = []
    start = 0
    for size in chunks:
        out = model(ids[:, start:start + size], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        pieces.append(outputs(out))
        start += size
    assert start == ids.shape[1]
    for head, whole in enumerate(full):
        torch.testing.assert_close(torch.cat([p[head] for p in pieces], dim=1), whole, atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_left_padded_batch_equals_unbatched_runs(tiny_stream_dir: Path) -> None:
    model, _ = load_stream_model(str(tiny_stream_dir))
    short = [151644, 872, 198, 9707, 151645]
    long = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198]
    pad = len(long) - len(short)
    ids = torch.tensor([[0] * pad + short, long])
    mask = torch.tensor([[0] * pad + [1] * len(short), [1] * len(long)])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = outputs(model(ids, attention_mask=mask, position_ids=positions))
    alone_short = outputs(model(torch.tensor([short])))
    alone_long = outputs(model(torch.tensor([long])))
    for head in range(4):
        torch.testing.assert_close(batched[head][0, pad:], alone_short[head][0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(batched[head][1], alone_long[head][0], atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_cache_is_returned_only_with_use_cache(tiny_stream_dir: Path) -> None:
    model, _ = load_stream_model(str(tiny_stream_dir))
    ids = torch.tensor([[151644, 872, 198]])
    assert model(ids).past_key_values is None
    cache = model(ids, use_cache=True).past_key_values
    assert cache is not None and cache.get_seq_length() == 3


@pytest.mark.slow
@torch.no_grad()
def test_06b_random_checkpoint_is_non_degenerate_and_cache_invariant(stream_06b_dir: Path,
                                                                     qwen_tokenizer: object) -> None:
    model, _ = load_stream_model(str(stream_06b_dir), dtype="fp32")
    text = ("The quick brown fox jumps over the lazy dog. 你好，世界！ How do I bake bread at home without "
            "yeast? Mix flour, water and salt, then let the dough rest overnight before baking it.")
    ids = torch.tensor([qwen_tokenizer.encode(text, add_special_tokens=False).ids])  # type: ignore[attr-defined]
    full = outputs(model(ids))
    # 28 random layers must not collapse every position onto one class (the init's scalings).
    for head in (full[0], full[2]):
        assert set(head[0].argmax(-1).tolist()) == {0, 1, 2}
    split = ids.shape[1] // 2
    first = model(ids[:, :split], use_cache=True)
    second = model(ids[:, split:split + 1], past_key_values=first.past_key_values, use_cache=True)
    rest = model(ids[:, split + 1:], past_key_values=second.past_key_values, use_cache=True)
    pieces = [outputs(first), outputs(second), outputs(rest)]
    for index, whole in enumerate(full):
        cached = torch.cat([piece[index] for piece in pieces], dim=1)
        torch.testing.assert_close(cached, whole, atol=1e-4, rtol=1e-4)
