"""Export a Qwen3Guard-Stream checkpoint to a self-contained, validated ONNX directory.

The directory holds ``model.onnx`` (+ ``model.onnx.data``), ``config.json``, ``labels.json``, the
tokenizer files and ``guardstream-onnx.json`` (what the engine needs to drive the graph without
torch). Export follows docs/onnx-export.md: dynamo exporter, explicit Dims with the past as one nested
tuple, opset 23 with sdpa and grouped KV heads (native ``Attention`` op), example sizes > 1.

Validation before the directory appears: ``onnx.checker`` on the path (works past 2 GB) and a
parity run of the incremental engine against the torch full-sequence forward.

fp16 (for the CUDA provider) is exported from the model cast to fp16; past/present tensors are
fp16, logits are returned as float32 by the engine. ORT 1.32's CPU provider runs it (tiny model:
5e-4 from fp32 torch), so its parity run is checked with a looser bound; if a CPU build lacks an
fp16 kernel the run is skipped and the reason recorded in ``guardstream-onnx.json``.

transformers 5.17 has no ``TRANSFORMERS_SDPA_FORCE_GQA`` switch (later releases have it): the
wrapper registers its own sdpa attention with ``enable_gqa`` for the export instead.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.onnx import io_names
from pipeline.onnx.layout import (
    CONFIG_FILE,
    KV_LAYOUT,
    LABELS_FILE,
    METADATA_FILE,
    MODEL_FILE,
    TOKENIZER_FILE_NAMES,
    WRITER_FILE,
    OnnxModelInfo,
)
from pipeline.onnx.parity import PARITY_TOLERANCE, ExportError, ParityReport, check_parity

PRECISIONS = ("fp32", "fp16")
# Example sizes for torch.export: never 0 or 1 (they get specialised), past > 0 (notes).
_EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST = 2, 3, 5
_MAX_TOKENS = 1 << 16

Progress = Callable[[str], None]


def export_stream_model(
    model: str,
    out: Path,
    precision: str = "fp32",
    opset: int = 23,
    *,
    progress: Progress | None = None,
) -> Path:
    """Export checkpoint ``model`` (local dir or hub id) into ``out``; returns ``out`` once validated.

    ``out`` must not exist or be empty. Work happens in a sibling temporary directory that is
    renamed into place only after validation, so a failed export never leaves a half directory.
    """
    say = progress or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if opset < 23:
        raise ExportError(f"opset {opset} is too old: the graph uses ONNX Attention/RotaryEmbedding (opset >= 23)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty directory; pick a new --out or remove it")

    from pipeline.model.checkpoint import load_stream_model, resolve_model_dir

    source = resolve_model_dir(model)
    from pipeline.tokens.files import load_model_tokenizer

    # Before the slow part: the export carries the checkpoint's own tokenizer, never a substitute,
    # and it must fit the model's embedding rows (docs/token-stream.md, "Tokenizer").
    load_model_tokenizer(source)
    say(f"loading checkpoint {source}")
    stream, config = load_stream_model(str(source), dtype="fp32", device="cpu")
    stream.eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        started = time.monotonic()
        say(f"exporting {precision} graph (opset {opset}); the 0.6B model takes 1-2 minutes")
        _export_graph(stream, work / MODEL_FILE, precision, opset)
        say(f"exported in {time.monotonic() - started:.0f} s; checking the graph")
        _check_graph(work / MODEL_FILE)
        _write_kv_writer(work / WRITER_FILE, int(config["num_hidden_layers"]), precision)
        info = _write_companions(work, source, config, precision, opset, model)
        _write_metadata(work, info, ParityReport(float("nan"), PARITY_TOLERANCE[precision], False, "pending"))
        say("parity run: ONNX incremental vs torch full sequence")
        parity = check_parity(work, stream, precision)
        if parity.skipped:
            say(f"parity skipped: {parity.skipped}")
        else:
            say(f"parity ok: max |diff| {parity.max_abs_diff:.2e} (tolerance {parity.tolerance:.0e})")
        _write_metadata(work, info, parity)
        if out.exists():
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"wrote {out}")
    return out


def _export_graph(stream: Any, path: Path, precision: str, opset: int) -> None:
    import torch

    from pipeline.onnx.wrapper import ExportableStream

    dtype = torch.float16 if precision == "fp16" else torch.float32
    stream = stream.to(dtype)
    cfg = stream.model.config
    layers, kv_heads = int(cfg.num_hidden_layers), int(cfg.num_key_value_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    b, s, p = _EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST
    example = (
        torch.randint(0, int(cfg.vocab_size), (b, s)),
        torch.ones(b, p + s, dtype=torch.int64),
        torch.arange(p, p + s).repeat(b, 1),
        *(torch.zeros(b, kv_heads, p, head_dim, dtype=dtype) for _ in range(2 * layers)),
    )
    batch = torch.export.Dim("batch", min=1, max=_MAX_TOKENS)
    seq = torch.export.Dim("seq", min=1, max=_MAX_TOKENS)
    past = torch.export.Dim("past", min=0, max=_MAX_TOKENS)
    total = torch.export.Dim("total", min=1, max=2 * _MAX_TOKENS)
    dynamic_shapes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
        "past": tuple({0: batch, 2: past} for _ in range(2 * layers)),  # one nested tuple (docs/onnx-export.md)
    }
    wrapper = ExportableStream(stream).eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper, example, str(path), dynamo=True, opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                input_names=io_names.input_names(layers), output_names=io_names.output_names(layers),
                external_data=True, optimize=True, verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        stream.to(torch.float32)


def _write_kv_writer(path: Path, layers: int, precision: str) -> None:
    """The scatter graph of device-resident KV: ``slab_out.j = ScatterND(slab.j, indices, update.j)``.

    Bound with input and output on one buffer, ONNX Runtime writes only the scattered positions.
    """
    import onnx
    from onnx import TensorProto, helper

    from pipeline.onnx.device_kv import writer_input_names, writer_output_names

    element = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    count = 2 * layers
    slab_dims, update_dims = ["slots", "kv_heads", "capacity", "head_dim"], ["rows", "kv_heads", "width", "head_dim"]
    inputs = [helper.make_tensor_value_info(name, element, slab_dims) for name in writer_input_names(count)[:count]]
    inputs.append(helper.make_tensor_value_info("indices", TensorProto.INT64, ["rows", "kv_heads", "width", 3]))
    inputs += [helper.make_tensor_value_info(name, element, update_dims)
               for name in writer_input_names(count)[count + 1:]]
    outputs = [helper.make_tensor_value_info(name, element, slab_dims) for name in writer_output_names(count)]
    nodes = [helper.make_node("ScatterND", [f"slab.{j}", "indices", f"update.{j}"], [f"slab_out.{j}"])
             for j in range(count)]
    graph = helper.make_graph(nodes, "guardstream_kv_writer", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _check_graph(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))  # the path form handles external data past 2 GB
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected {path.name}: {exc}") from exc


def _copy_tokenizer(source: Path, out: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILE_NAMES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
            copied.append(name)
    return copied


def _write_companions(
    out: Path, source: Path, config: dict[str, Any], precision: str, opset: int, model: str
) -> OnnxModelInfo:
    from pipeline.labels import LabelMaps

    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out / LABELS_FILE).write_text(json.dumps(LabelMaps.from_config(config).to_config(), indent=2) + "\n")
    tokenizer_files = _copy_tokenizer(source, out)
    layers = int(config["num_hidden_layers"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))
    return OnnxModelInfo(
        model_name=str(config.get("_name_or_path") or Path(model).name or source.name),
        precision=precision,
        opset=opset,
        num_layers=layers,
        num_kv_heads=int(config["num_key_value_heads"]),
        head_dim=head_dim,
        vocab_size=int(config["vocab_size"]),
        max_position_embeddings=int(config.get("max_position_embeddings", 8192)),
        input_names=tuple(io_names.input_names(layers)),
        output_names=tuple(io_names.output_names(layers)),
        source_checkpoint=str(source.resolve()) if source.exists() else model,
        tool_versions=_tool_versions(),
        tokenizer_files=tuple(tokenizer_files),
        kv_layout=KV_LAYOUT,
    )


def _write_metadata(out: Path, info: OnnxModelInfo, parity: ParityReport) -> None:
    payload = info.as_dict()
    payload["parity"] = parity.as_dict()
    (out / METADATA_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def _tool_versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions
