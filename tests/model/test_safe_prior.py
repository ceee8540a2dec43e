"""The Safe prior of random checkpoints (``guardstream model init-random --safe-prior``): most text
judged Safe, some not, exactly as the demo's model is made; the ONNX export still matches torch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from pipeline.errors import UserError
from pipeline.labels import LabelMaps
from pipeline.model.checkpoint import init_random_stream, load_stream_model
from pipeline.model.presets import stream_config_dict
from pipeline.model.random_init import random_stream_state
from pipeline.reference import judge_conversation
from pipeline.tokens.files import load_model_tokenizer
from pipeline.tokens.text import TextTokenizer
from workers.demo.model import SAFE_PRIOR, SEED
from workers.demo.samples import SAMPLES


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_random_stream(tmp_path_factory.mktemp("safe-prior"), "tiny", seed=SEED, safe_prior=SAFE_PRIOR)


def demo_labels(folder: Path) -> tuple[Counter[str], list[str]]:
    """Per-token risk labels over the demo conversations, and each reply's decided risk."""
    model, config = load_stream_model(str(folder))
    text = TextTokenizer.of(load_model_tokenizer(folder))
    tokens: Counter[str] = Counter()
    replies = []
    for _, conv in SAMPLES:
        for judged in judge_conversation(model, text, conv, LabelMaps.from_config(config)):
            tokens.update(judged.decision.token_labels)
            if judged.role == "assistant":
                replies.append(judged.decision.risk)
    return tokens, replies


def test_the_prior_makes_most_demo_text_safe_but_not_all(prior_dir: Path, tiny_stream_dir: Path) -> None:
    tokens, replies = demo_labels(prior_dir)
    safe_share = tokens["safe"] / sum(tokens.values())
    assert 0.8 <= safe_share < 1.0, tokens
    assert tokens["unsafe"] > 0 and tokens["controversial"] > 0, tokens
    assert replies.count("safe") > len(replies) / 2, replies
    assert set(replies) == {"safe", "controversial", "unsafe"}, f"the demo shows every outcome: {replies}"

    plain_tokens, plain_replies = demo_labels(tiny_stream_dir)   # same seed, no prior
    assert plain_tokens["safe"] / sum(plain_tokens.values()) < 0.5 < safe_share
    assert plain_replies.count("safe") < replies.count("safe")


def test_the_prior_changes_only_the_bias_unit_and_keeps_the_random_draws() -> None:
    config = stream_config_dict("tiny")
    plain, prior = random_stream_state(config, 3), random_stream_state(config, 3, safe_prior=4.0)
    assert torch.equal(plain["model.layers.0.self_attn.q_proj.weight"], prior["model.layers.0.self_attn.q_proj.weight"])
    embed, embed_prior = plain["model.embed_tokens.weight"], prior["model.embed_tokens.weight"]
    assert torch.equal(embed[:, :-1], embed_prior[:, :-1])
    assert embed_prior[:, -1].unique().numel() == 1, "the bias unit holds one value in every embedding row"
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert torch.count_nonzero(prior[name][-1]) == 0, f"{name} must not write to the bias unit"
    risk, category = prior["risk_level_head.weight"], prior["category_head.weight"]
    safe = LabelMaps().response_risk.index("Safe")
    assert risk[safe, -1] == 4.0 and torch.count_nonzero(risk[:, -1]) == 1
    assert torch.count_nonzero(category[:, -1]) == 0, "no category is favoured"
    assert torch.equal(risk[:, :-1], plain["risk_level_head.weight"][:, :-1])


def test_an_out_of_range_prior_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Safe prior"):
        init_random_stream(tmp_path / "x", "tiny", safe_prior=-1.0)


def test_a_prior_checkpoint_exports_to_onnx_with_torch_parity(prior_dir: Path, tmp_path: Path) -> None:
    from pipeline.onnx.export import export_stream_model

    out = export_stream_model(str(prior_dir), tmp_path / "onnx")
    parity = json.loads((out / "guardstream-onnx.json").read_text())["parity"]
    assert parity["argmax_equal"] and parity["max_abs_diff"] <= parity["tolerance"], parity


def test_init_random_cli_writes_the_prior_and_refuses_it_for_gen(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    from pipeline.model.layout import weight_files
    from workers.cli import main

    out = tmp_path / "prior"
    assert main(["model", "init-random", "--size", "tiny", "--safe-prior", "2.5", "--out", str(out)]) == 0
    assert "Safe prior 2.5" in capsys.readouterr().err
    state = {k: v for f in weight_files(out) for k, v in load_file(str(f)).items()}
    assert float(state["query_risk_level_head.weight"][LabelMaps().query_risk.index("Safe"), -1]) == 2.5

    assert main(["model", "init-random", "--arch", "gen", "--safe-prior", "2", "--out", str(tmp_path / "g")]) == 2
    assert "--safe-prior applies to --arch stream only" in capsys.readouterr().err
    assert main(["model", "init-random", "--safe-prior", "nan", "--out", str(tmp_path / "n")]) == 2
    assert "Safe prior must be between 0 and" in capsys.readouterr().err
