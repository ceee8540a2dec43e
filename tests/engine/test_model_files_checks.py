"""Model directories without their own tokenizer, or with one that does not fit, are refused (never substituted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.tokens.files import load_model_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _copy_without_tokenizer(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (target / name).unlink(missing_ok=True)
    return target


@pytest.mark.parametrize("which", ["checkpoint", "export"])
def test_a_model_without_its_tokenizer_is_refused_naming_the_files(
    which: str, tiny_stream_dir: Path, tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    folder = _copy_without_tokenizer(tiny_stream_dir if which == "checkpoint" else tiny_onnx_dir, tmp_path / which)
    with pytest.raises(UserError) as caught:
        load_model_tokenizer(folder)
    assert "tokenizer.json" in str(caught.value) and str(folder) in str(caught.value)
    assert "copy" in str(caught.value).lower()


@pytest.mark.parametrize("which", ["checkpoint", "export"])
def test_a_tokenizer_larger_than_the_embedding_is_refused(
    which: str, tiny_stream_dir: Path, tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / which
    shutil.copytree(tiny_stream_dir if which == "checkpoint" else tiny_onnx_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 1000   # the Qwen3 tokenizer's ids go far beyond
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="embedding"):
        load_model_tokenizer(folder)


def test_the_real_pair_fits(tiny_stream_dir: Path, tiny_onnx_dir: Path) -> None:
    load_model_tokenizer(tiny_stream_dir)
    load_model_tokenizer(tiny_onnx_dir)


def test_export_refuses_a_checkpoint_without_a_tokenizer_instead_of_copying_one_in(
    tiny_stream_dir: Path, tmp_path: Path
) -> None:
    folder = _copy_without_tokenizer(tiny_stream_dir, tmp_path / "ckpt")
    done = subprocess.run([sys.executable, "-m", "workers.cli", "export", "--model", str(folder),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                          timeout=300, check=False)
    assert done.returncode == 2
    assert "tokenizer.json" in done.stderr
    assert not (tmp_path / "out" / "tokenizer.json").exists()


def test_export_prints_no_torch_warnings(tiny_stream_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "workers.cli", "export", "--model", str(tiny_stream_dir),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "torchvision" not in done.stderr, done.stderr


def test_moderate_with_the_torch_engine_on_an_onnx_export_says_use_onnx(
    tiny_onnx_dir: Path, tmp_path: Path
) -> None:
    conversations = tmp_path / "c.jsonl"
    conversations.write_text('{"conversation_id": "c1", "messages": [{"role": "user", "content": "hi"}]}\n')
    done = subprocess.run([sys.executable, "-m", "workers.cli", "moderate", "--model", str(tiny_onnx_dir),
                           "--engine", "torch", "--input", str(conversations), "--output", str(tmp_path / "v")],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert done.returncode == 2
    assert "this is an ONNX export" in done.stderr.replace(f"{tiny_onnx_dir} is", "this is")
    assert "--engine onnx" in done.stderr
