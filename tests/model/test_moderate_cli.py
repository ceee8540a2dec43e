"""`guardstream moderate`: one valid final verdict per user/assistant message, equal across engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from schemas.messages import decode_verdict
from workers.cli import main

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "v1" / "verdict.schema.json").read_text())


@pytest.fixture()
def conversations_file(tmp_path: Path, sample_conversation_dicts: list[dict[str, Any]]) -> Path:
    file = tmp_path / "conversations.jsonl"
    file.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in sample_conversation_dicts))
    return file


def moderate(model: Path, conversations: Path, output: Path, *extra: str) -> int:
    return main(["moderate", "--model", str(model), "--input", str(conversations), "--output", str(output),
                 "--model-name", "tiny", *extra])


def test_reference_writes_one_valid_final_verdict_per_judged_message(
    tiny_stream_dir: Path, conversations_file: Path, tmp_path: Path, sample_conversation_dicts: list[dict[str, Any]],
) -> None:
    output = tmp_path / "verdicts.jsonl"
    assert moderate(tiny_stream_dir, conversations_file, output, "--tokens") == 0
    lines = output.read_bytes().splitlines()
    expected = [(c["conversation_id"], i, m["role"]) for c in sample_conversation_dicts
                for i, m in enumerate(c["messages"]) if m["role"] in ("user", "assistant")]
    verdicts = [decode_verdict(line) for line in lines]
    assert [(v.conversation_id, v.message_index, v.role) for v in verdicts] == expected
    for line, verdict in zip(lines, verdicts, strict=True):
        jsonschema.validate(json.loads(line), SCHEMA)
        assert (verdict.kind, verdict.source, verdict.model, verdict.ts_ms) == ("final", "stream", "tiny", 0)
        assert verdict.token_labels
        assert verdict.action == ("allow" if verdict.risk == "safe" else "block")   # strict by default
        assert (verdict.category is None) == (verdict.risk == "safe")
        if verdict.role == "user":
            assert verdict.token_index == 0 and len(verdict.token_labels) == 1


def test_loose_policy_allows_controversial(tiny_stream_dir: Path, conversations_file: Path, tmp_path: Path) -> None:
    strict, loose = tmp_path / "strict.jsonl", tmp_path / "loose.jsonl"
    assert moderate(tiny_stream_dir, conversations_file, strict) == 0
    assert moderate(tiny_stream_dir, conversations_file, loose, "--policy", "loose") == 0
    pairs = list(zip(map(decode_verdict, strict.read_bytes().splitlines()),
                     map(decode_verdict, loose.read_bytes().splitlines()), strict=True))
    assert any(s.risk == "controversial" for s, _ in pairs), "the sample should hold a controversial message"
    for s, lo in pairs:
        assert s.risk == lo.risk
        assert lo.action == ("block" if lo.risk == "unsafe" else "allow")


@pytest.mark.parametrize("chunk_chars", ["0", "3"])
def test_onnx_engine_writes_the_same_bytes_as_the_reference(
    tiny_stream_dir: Path, tiny_onnx_dir: Path, conversations_file: Path, tmp_path: Path, chunk_chars: str,
) -> None:
    reference, streamed = tmp_path / "torch.jsonl", tmp_path / "onnx.jsonl"
    assert moderate(tiny_stream_dir, conversations_file, reference, "--tokens") == 0
    assert moderate(tiny_onnx_dir, conversations_file, streamed, "--tokens", "--engine", "onnx",
                    "--chunk-chars", chunk_chars, "--device", "cpu") == 0
    assert streamed.read_bytes() == reference.read_bytes()


def test_missing_model_is_a_usage_error(conversations_file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["moderate", "--model", str(tmp_path / "nowhere"), "--input", str(conversations_file),
                 "--output", str(tmp_path / "out.jsonl")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
