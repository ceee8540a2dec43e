"""The files of an exported ONNX directory and its metadata record (read by the engine, no torch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.tokens.files import TOKENIZER_FILES

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.json"
METADATA_FILE = "guardstream-onnx.json"
# The small graph that scatters new keys/values into device-resident KV slabs (pipeline/onnx/device_kv.py).
WRITER_FILE = "kv_writer.onnx"
# The graph's KV contract (docs/onnx-export.md): past inputs are fixed-capacity buffers with a key
# mask, outputs are only the new tokens' keys and values. Exports without it use an older contract.
KV_LAYOUT = "buffer-in-place-v1"
# What an export copies next to its graph: the tokenizer files plus the checkpoint's other companions.
TOKENIZER_FILE_NAMES: tuple[str, ...] = (
    *TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json", "generation_config.json",
)


@dataclass(frozen=True)
class OnnxModelInfo:
    """What ``guardstream-onnx.json`` records about an export."""

    model_name: str
    precision: str                 # fp32 | fp16: the dtype of past/present tensors and logits
    opset: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source_checkpoint: str
    tool_versions: dict[str, str] = field(default_factory=dict)
    tokenizer_files: tuple[str, ...] = ()
    kv_layout: str = ""

    @property
    def kv_bytes_per_token(self) -> int:
        itemsize = 2 if self.precision == "fp16" else 4
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OnnxModelInfo:
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        for name in ("input_names", "output_names", "tokenizer_files"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)


def is_export_dir(path: Path) -> bool:
    return (path / MODEL_FILE).is_file() and (path / METADATA_FILE).is_file()


def has_current_layout(export_dir: Path) -> bool:
    """An export this version's engine can drive (an older one must be exported again)."""
    try:
        return is_export_dir(export_dir) and read_model_info(export_dir).kv_layout == KV_LAYOUT
    except UserError:
        return False


def read_model_info(export_dir: Path) -> OnnxModelInfo:
    path = Path(export_dir) / METADATA_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: {export_dir} is not a guardstream ONNX export "
                        "(create one with `guardstream export --model CHECKPOINT --out DIR`)")
    try:
        return OnnxModelInfo.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); re-run `guardstream export`") from exc
