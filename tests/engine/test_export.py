"""`guardstream export`: a self-contained, validated directory, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.onnx.layout import METADATA_FILE, MODEL_FILE, read_model_info
from tests.engine.conftest import assert_same_decisions, max_abs_diff, torch_reference
from tests.engine.feeding import feed_in_chunks


def test_export_dir_is_self_contained_and_validated(tiny_onnx_dir: Path, tiny_stream_dir: Path) -> None:
    import onnx

    from pipeline.labels import LabelMaps
    from pipeline.tokens.files import load_qwen3_tokenizer

    names = {p.name for p in tiny_onnx_dir.iterdir()}
    assert {MODEL_FILE, f"{MODEL_FILE}.data", "config.json", "labels.json", METADATA_FILE, "tokenizer.json",
            "kv_writer.onnx"} <= names
    onnx.checker.check_model(str(tiny_onnx_dir / MODEL_FILE))
    info = read_model_info(tiny_onnx_dir)
    config = json.loads((tiny_stream_dir / "config.json").read_text())
    assert (info.num_layers, info.num_kv_heads, info.head_dim) == (
        config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"])
    assert info.precision == "fp32" and info.opset == 23
    assert info.input_names[:3] == ("input_ids", "attention_mask", "position_ids")
    assert info.output_names[4:6] == ("present.0.key", "present.0.value")
    assert set(info.tool_versions) >= {"torch", "transformers", "onnx", "onnxruntime"}
    metadata = json.loads((tiny_onnx_dir / METADATA_FILE).read_text())
    assert metadata["parity"]["max_abs_diff"] < metadata["parity"]["tolerance"]
    assert LabelMaps.from_config(json.loads((tiny_onnx_dir / "labels.json").read_text())) == \
        LabelMaps.from_config(config)
    # The tokenizer in the export is the checkpoint's (real Qwen3 vocabulary).
    tokenizer = load_qwen3_tokenizer(tiny_onnx_dir)
    assert tokenizer.token_to_id("<|im_end|>") == 151645


def test_export_graph_has_dynamic_batch_sequence_and_past_axes(tiny_onnx_dir: Path) -> None:
    import onnx

    graph = onnx.load(str(tiny_onnx_dir / MODEL_FILE), load_external_data=False).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert all(isinstance(d, str) for d in dims["input_ids"])
    past = dims["past_key_values.0.key"]
    assert isinstance(past[0], str) and isinstance(past[2], str) and past[1] == 2 and past[3] == 16
    # The past buffers are read where they lie: each feeds attention's matrix products, never a Concat.
    consumers = [n.op_type for n in graph.node for name in n.input if name.startswith("past_key_values.")]
    assert consumers and "Concat" not in consumers and "Expand" not in consumers


def test_fp16_export_runs_on_the_cpu_provider_and_agrees_with_torch(
    tiny_stream_dir: Path, tiny_torch_model: Any, sample_token_streams: list[list[int]], tmp_path: Path
) -> None:
    """The pinned onnxruntime's CPU provider has every fp16 kernel the graph needs: the exporter's
    parity run is not skipped, and the engine, fed in chunks through its fp16 cache, gives torch's
    fp32 logits within the fp16 tolerance and the same decisions."""
    from pipeline.onnx.engine import OnnxStreamEngine
    from pipeline.onnx.export import export_stream_model
    from pipeline.onnx.parity import PARITY_TOLERANCE

    out = export_stream_model(str(tiny_stream_dir), tmp_path / "fp16", precision="fp16")
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["precision"] == "fp16"
    parity = metadata["parity"]
    assert parity["skipped"] == "", f"the fp16 parity run was skipped on CPU: {parity['skipped']}"
    assert parity["max_abs_diff"] < parity["tolerance"] == PARITY_TOLERANCE["fp16"]

    engine = OnnxStreamEngine.from_dir(out, device="cpu", warmup=False)
    assert engine.info.precision == "fp16"
    for n, ids in enumerate(sample_token_streams[:2]):
        expected = torch_reference(tiny_torch_model, ids).heads
        actual = feed_in_chunks(engine, f"fp16-{n}", ids, chunk="random", seed=n)
        assert all(a.dtype == np.float32 for a in actual)
        scale = max(1.0, max(float(np.abs(e).max()) for e in expected))
        assert max_abs_diff(expected, actual) / scale < PARITY_TOLERANCE["fp16"]
        assert_same_decisions(expected, actual, margin=PARITY_TOLERANCE["fp16"] * scale)


def test_the_fp16_parity_run_records_why_it_was_skipped_when_a_kernel_is_missing(
    tiny_stream_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU build without an fp16 kernel: the reason is written down, never a silent pass; the same
    failure in fp32 is an export error."""
    from pipeline.onnx import engine as engine_module
    from pipeline.onnx.export import export_stream_model

    def missing_kernel(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
                           "SimplifiedLayerNormalization(1) node with name ''")

    monkeypatch.setattr(engine_module.OnnxStreamEngine, "from_dir", missing_kernel)
    out = export_stream_model(str(tiny_stream_dir), tmp_path / "fp16", precision="fp16")
    parity = json.loads((out / METADATA_FILE).read_text())["parity"]
    assert parity["skipped"].startswith("ORT CPU lacks an fp16 kernel") and "NOT_IMPLEMENTED" in parity["skipped"]
    with pytest.raises(UserError, match=r"failed to run in onnxruntime.*NOT_IMPLEMENTED"):
        export_stream_model(str(tiny_stream_dir), tmp_path / "fp32", precision="fp32")
    assert not (tmp_path / "fp32").exists()


def test_export_refuses_a_non_empty_out_dir(tiny_stream_dir: Path, tmp_path: Path) -> None:
    from pipeline.onnx.export import export_stream_model

    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="not an empty directory"):
        export_stream_model(str(tiny_stream_dir), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize(("kwargs", "message"), [({"precision": "int8"}, "unknown precision"),
                                                 ({"opset": 17}, "opset 17 is too old")])
def test_export_rejects_bad_options(tiny_stream_dir: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    from pipeline.onnx.export import export_stream_model

    with pytest.raises(UserError, match=message):
        export_stream_model(str(tiny_stream_dir), tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_export_command_reports_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workers.cli import main

    code = main(["export", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_command_writes_a_loadable_dir(tiny_stream_dir: Path, tmp_path: Path) -> None:
    from pipeline.onnx.engine import OnnxStreamEngine
    from workers.cli import main

    assert main(["export", "--model", str(tiny_stream_dir), "--out", str(tmp_path / "cli")]) == 0
    engine = OnnxStreamEngine.from_dir(tmp_path / "cli", device="cpu", warmup=False)
    assert engine.info.num_layers == 2


def test_engine_refuses_a_dir_that_is_not_an_export(tiny_stream_dir: Path) -> None:
    from pipeline.onnx.engine import OnnxStreamEngine

    with pytest.raises(UserError, match="guardstream export"):
        OnnxStreamEngine.from_dir(tiny_stream_dir, device="cpu")


def test_open_stream_engine_exports_a_checkpoint_once_and_reuses_it(tiny_stream_dir: Path, tmp_path: Path) -> None:
    from pipeline.config import Settings
    from pipeline.onnx.loader import open_stream_engine

    settings = Settings(state_dir=str(tmp_path / "state"), device="cpu")
    first = open_stream_engine(str(tiny_stream_dir), settings)
    cached = list((tmp_path / "state" / "onnx-cache").iterdir())
    assert len(cached) == 1 and (cached[0] / MODEL_FILE).is_file()
    stamp = (cached[0] / MODEL_FILE).stat().st_mtime_ns
    second = open_stream_engine(str(tiny_stream_dir), settings)
    assert (cached[0] / MODEL_FILE).stat().st_mtime_ns == stamp
    assert first.model_name == second.model_name
