"""Export a Qwen3Guard-Stream checkpoint to a self-contained, validated ONNX directory.

The directory holds ``model.onnx`` (+ ``model.onnx.data``), ``config.json``, ``labels.json``, the
tokenizer files and ``guardstream-onnx.json`` (what the engine needs to drive the graph without
torch). Export follows onnx-notes.md: dynamo exporter, explicit Dims with the past as one nested
tuple, opset 23 with sdpa and grouped KV heads (native ``Attention`` op), example sizes > 1.

Validation before the directory appears: ``onnx.checker`` on the path (works past 2 GB) and a
parity run of the incremental engine against the torch full-sequence forward.

fp16 (for the CUDA provider) is exported from the model cast to fp16; past/present tensors are
fp16, logits are returned as float32 by the engine. ORT 1.32's CPU provider runs it (tiny model:
5e-4 from fp32 torch), so its parity run is checked with a looser bound; if a CPU build lacks an
fp16 kernel the run is skipped and the reason recorded in ``guardstream-onnx.json``.

transformers 5.17 has no ``TRANSFORMERS_SDPA_FORCE_GQA`` switch (onnx-notes used 5.23): the
wrapper registers its own sdpa attention with ``enable_gqa`` for the export instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.onnx import io_names
from pipeline.onnx.layout import (
    CONFIG_FILE,
    LABELS_FILE,
    METADATA_FILE,
    MODEL_FILE,
    TOKENIZER_FILE_NAMES,
    OnnxModelInfo,
)

PRECISIONS = ("fp32", "fp16")
# |ORT - torch| allowed in the post-export parity run, relative to max(1, |torch logits|).
PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
# Example sizes for torch.export: never 0 or 1 (they get specialised), past > 0 (notes).
_EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST = 2, 3, 5
_MAX_TOKENS = 1 << 16

Progress = Callable[[str], None]


class ExportError(UserError):
    """The export or its validation failed; the message says what differed or what to fix."""


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    tolerance: float
    argmax_equal: bool
    skipped: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "argmax_equal": self.argmax_equal, "skipped": self.skipped}


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

    from pipeline.onnx.wrapper import ExportableStream, gqa_attention

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
        "past": tuple({0: batch, 2: past} for _ in range(2 * layers)),  # one nested tuple (notes)
    }
    wrapper = ExportableStream(stream).eval()
    # Kept for transformers versions that read it (onnx-notes); our own GQA attention does the same.
    os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    try:
        with gqa_attention(stream), torch.no_grad():
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


def check_parity(export_dir: Path, stream: Any, precision: str) -> ParityReport:
    """Two batched incremental steps of the ORT engine vs one torch forward per sequence.

    Sequences of different lengths in one batch exercise padding of new tokens and of the past;
    the second step continues from the cache. Raises ExportError with the max diff on mismatch.
    """
    import torch

    from pipeline.engine.types import FeedRequest
    from pipeline.onnx.engine import OnnxStreamEngine

    tolerance = PARITY_TOLERANCE[precision]
    vocab = int(stream.model.config.vocab_size)
    rng = np.random.default_rng(7)
    full = [rng.integers(0, vocab, size=n).tolist() for n in (9, 6)]
    steps = [[seq[: len(seq) - 3] for seq in full], full]
    try:
        engine = OnnxStreamEngine.from_dir(export_dir, device="cpu", warmup=False)
        got: list[list[np.ndarray]] = [[], []]
        for step in steps:
            starts = [len(got[i][0]) if got[i] else 0 for i in range(2)]
            results = engine.run([FeedRequest(f"parity-{i}", ids, starts[i]) for i, ids in enumerate(step)])
            for i, result in enumerate(results):
                rows = list(_as_tuple(result))
                got[i] = rows if not got[i] else [np.concatenate([a, b]) for a, b in zip(got[i], rows, strict=True)]
    except Exception as exc:
        if precision == "fp16" and "NOT_IMPLEMENTED" in str(exc):
            return ParityReport(float("nan"), tolerance, False, skipped=f"ORT CPU lacks an fp16 kernel: {exc}")
        raise ExportError(f"the exported graph failed to run in onnxruntime: {exc}") from exc
    worst, argmax_equal = 0.0, True
    with torch.no_grad():
        for i, seq in enumerate(full):
            reference = stream(torch.tensor([seq]))
            expected = [t[0].float().numpy() for t in (reference.risk_level_logits, reference.category_logits,
                                                       reference.query_risk_level_logits,
                                                       reference.query_category_logits)]
            for want, have in zip(expected, got[i], strict=True):
                scale = max(1.0, float(np.abs(want).max()))
                worst = max(worst, float(np.abs(want - have).max()) / scale)
                argmax_equal &= bool((want.argmax(-1) == have.argmax(-1)).all())
    if not worst <= tolerance:
        raise ExportError(
            f"parity failed: ONNX {precision} differs from torch by max |diff| {worst:.3e} "
            f"(tolerance {tolerance:.0e}); the export is not usable"
        )
    return ParityReport(worst, tolerance, argmax_equal)


def _as_tuple(result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (result.risk_logits, result.category_logits, result.query_risk_logits, result.query_category_logits)
