"""config.json presets follow docs/model.md (§2 sizes, §3 label maps, §4 special ids)."""

from __future__ import annotations

import pytest

from pipeline.labels import LabelMaps
from pipeline.model.presets import SIZES, stream_config_dict

# Model facts §2, certain values only: uncertain ones are configurable and read from checkpoints.
SPEC_TABLE = {
    "0.6b": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 128, "intermediate_size": 3072, "max_position_embeddings": 8192,
             "guard_inner_size": 512, "tie_word_embeddings": True},
    "4b": {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
           "head_dim": 128, "intermediate_size": 9728, "tie_word_embeddings": True},
    "8b": {"num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},
}


@pytest.mark.parametrize("size", sorted(SPEC_TABLE))
def test_released_sizes_match_the_spec_table(size: str) -> None:
    config = stream_config_dict(size)
    for field, value in SPEC_TABLE[size].items():
        assert config[field] == value, field


@pytest.mark.parametrize("size", SIZES)
def test_every_size_is_a_qwen3_guard_stream_config(size: str) -> None:
    config = stream_config_dict(size)
    assert config["architectures"] == ["Qwen3ForGuardModel"]
    assert config["model_type"] == "qwen3"
    assert config["vocab_size"] == 151936
    assert config["rope_theta"] == 1e6
    assert config["rms_norm_eps"] == 1e-6
    assert (config["num_risk_level"], config["num_category"]) == (3, 8)
    assert (config["num_query_risk_level"], config["num_query_category"]) == (3, 9)
    assert (config["bos_token_id"], config["eos_token_id"]) == (151643, 151645)


@pytest.mark.parametrize("size", SIZES)
def test_label_maps_in_config_keep_the_official_index_order(size: str) -> None:
    config = stream_config_dict(size)
    assert config["response_risk_level_map"] == {"0": "Safe", "1": "Unsafe", "2": "Controversial"}
    assert config["query_risk_level_map"] == {"0": "Safe", "1": "Unsafe", "2": "Controversial"}
    response = ["Violent", "Sexual Content", "Self-Harm", "Political", "PII", "Copyright", "Illegal Acts",
                "Unethical"]
    assert config["response_category_map"] == {str(i): name for i, name in enumerate(response)}
    assert config["query_category_map"] == {str(i): name for i, name in enumerate([*response, "Jailbreak"])}
    assert LabelMaps.from_config(config) == LabelMaps()


def test_tiny_keeps_the_real_vocabulary_so_the_real_tokenizer_fits() -> None:
    tiny = stream_config_dict("tiny")
    assert tiny["vocab_size"] == stream_config_dict("0.6b")["vocab_size"]
    assert tiny["max_position_embeddings"] >= 8192


def test_unknown_size_is_refused() -> None:
    with pytest.raises(ValueError, match="tiny"):
        stream_config_dict("70b")
