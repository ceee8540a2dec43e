"""Checkpoints in the official layout: load, save, shard, dtypes, random init, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import UserError
from pipeline.model.checkpoint import (
    init_random_stream,
    load_stream_model,
    resolve_model_dir,
    save_stream_checkpoint,
)
from pipeline.model.presets import stream_config_dict
from pipeline.model.random_init import random_stream_state
from pipeline.tokens.files import load_qwen3_tokenizer

IDS = torch.tensor([[151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198]])


def logits(model: torch.nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(IDS)
    return [out.risk_level_logits, out.category_logits, out.query_risk_level_logits, out.query_category_logits]


def copy_checkpoint(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def rewrite_weights(folder: Path, change: dict[str, torch.Tensor | None]) -> None:
    """Replace (tensor) or drop (None) tensors of a single-file checkpoint."""
    tensors = load_file(str(folder / "model.safetensors"))
    for name, tensor in change.items():
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    save_file(tensors, str(folder / "model.safetensors"))


def test_init_random_writes_the_official_layout_with_the_real_tokenizer(tiny_stream_dir: Path) -> None:
    names = {p.name for p in tiny_stream_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((tiny_stream_dir / "config.json").read_text())
    assert config == stream_config_dict("tiny")
    tokenizer = load_qwen3_tokenizer(tiny_stream_dir)
    assert tokenizer.token_to_id("<|im_end|>") == 151645
    assert tokenizer.get_vocab_size() <= config["vocab_size"]


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    config = stream_config_dict("tiny")
    first, again, other = (random_stream_state(config, s) for s in (3, 3, 4))
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first["risk_level_head.weight"], other["risk_level_head.weight"])


def test_random_heads_give_every_risk_class_on_ordinary_text(tiny_stream_dir: Path) -> None:
    model, _ = load_stream_model(str(tiny_stream_dir))
    tokenizer = load_qwen3_tokenizer(tiny_stream_dir)
    text = ("The quick brown fox jumps over the lazy dog. 你好，世界！ How do I bake bread at home without "
            "yeast? Mix flour, water and salt, then let the dough rest overnight before baking it.")
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False).ids])
    with torch.no_grad():
        out = model(ids)
    for head in (out.risk_level_logits, out.query_risk_level_logits):
        assert set(head[0].argmax(-1).tolist()) == {0, 1, 2}


def test_save_then_load_gives_the_same_outputs(tiny_stream_dir: Path, tmp_path: Path) -> None:
    model, _ = load_stream_model(str(tiny_stream_dir))
    saved = save_stream_checkpoint(model, tmp_path / "copy")
    again, config = load_stream_model(str(saved))
    assert config["architectures"] == ["Qwen3ForGuardModel"]
    for a, b in zip(logits(model), logits(again), strict=True):
        assert torch.equal(a, b)


def test_sharded_checkpoint_loads_like_the_single_file(tiny_stream_dir: Path, tmp_path: Path) -> None:
    model, _ = load_stream_model(str(tiny_stream_dir))
    sharded = save_stream_checkpoint(model, tmp_path / "sharded", max_shard_bytes=8 * 1024**2)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shard_files = set(index["weight_map"].values())
    assert len(shard_files) > 1 and not (sharded / "model.safetensors").exists()
    again, _ = load_stream_model(str(sharded))
    for a, b in zip(logits(model), logits(again), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("dtype", "torch_dtype", "tolerance"),
                         [("fp32", torch.float32, 0.0), ("fp16", torch.float16, 0.05),
                          ("bf16", torch.bfloat16, 0.3)])
def test_dtypes_load_and_stay_close_to_fp32(tiny_stream_dir: Path, dtype: str, torch_dtype: torch.dtype,
                                            tolerance: float) -> None:
    reference, _ = load_stream_model(str(tiny_stream_dir), dtype="fp32")
    model, _ = load_stream_model(str(tiny_stream_dir), dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {torch_dtype}
    for a, b in zip(logits(reference), logits(model), strict=True):
        assert (a - b.float()).abs().max().item() <= tolerance


def test_bf16_checkpoint_on_disk_loads_as_fp32(tiny_stream_dir: Path, tmp_path: Path) -> None:
    model, _ = load_stream_model(str(tiny_stream_dir))
    saved = save_stream_checkpoint(model, tmp_path / "bf16", dtype="bf16")
    assert json.loads((saved / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_file(str(saved / "model.safetensors"))["model.norm.weight"].dtype == torch.bfloat16
    again, _ = load_stream_model(str(saved), dtype="fp32")
    assert {p.dtype for p in again.parameters()} == {torch.float32}


def test_lm_head_weight_is_ignored(tiny_stream_dir: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_stream_dir, tmp_path / "with-lm-head")
    rewrite_weights(folder, {"lm_head.weight": torch.zeros(151936, 64)})
    model, _ = load_stream_model(str(folder))
    assert "lm_head.weight" not in model.state_dict()


def test_missing_tensor_is_named(tiny_stream_dir: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_stream_dir, tmp_path / "missing")
    rewrite_weights(folder, {"query_category_head.weight": None})
    with pytest.raises(UserError, match=r"lacks tensors.*query_category_head\.weight"):
        load_stream_model(str(folder))


def test_unexpected_tensor_is_named(tiny_stream_dir: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_stream_dir, tmp_path / "unexpected")
    rewrite_weights(folder, {"model.layers.2.input_layernorm.weight": torch.ones(64)})
    with pytest.raises(UserError, match=r"does not have: model\.layers\.2\.input_layernorm\.weight"):
        load_stream_model(str(folder))


def test_wrong_shape_names_the_tensor_and_both_shapes(tiny_stream_dir: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_stream_dir, tmp_path / "shape")
    rewrite_weights(folder, {"risk_level_head.weight": torch.zeros(4, 32)})
    with pytest.raises(UserError, match=r"risk_level_head\.weight .*\[4, 32\].*\[3, 32\]"):
        load_stream_model(str(folder))


def test_wrong_architecture_is_refused(tiny_stream_dir: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_stream_dir, tmp_path / "gen")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Qwen3ForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"Qwen3ForCausalLM.*Qwen3ForGuardModel"):
        load_stream_model(str(folder))


def test_missing_config_is_refused(tiny_stream_dir: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_stream_dir, tmp_path / "no-config")
    (folder / "config.json").unlink()
    with pytest.raises(UserError, match=r"no config\.json"):
        load_stream_model(str(folder))


def test_missing_weights_are_refused(tiny_stream_dir: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_stream_dir, tmp_path / "no-weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"model\.safetensors"):
        load_stream_model(str(folder))


def test_hub_id_without_hub_access_says_to_pass_a_local_directory(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"hub is unreachable.*local checkpoint directory.*init-random"):
        resolve_model_dir("Qwen/Qwen3Guard-Stream-0.6B")


def test_nonexistent_local_path_is_not_mistaken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "no" / "such" / "model"))


def test_init_random_refuses_unknown_sizes(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown size"):
        init_random_stream(tmp_path / "x", "70b")
