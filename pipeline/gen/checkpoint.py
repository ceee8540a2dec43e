"""Qwen3Guard-Gen checkpoints: make a random one, load one (local directory or Hugging Face id).

Layout is the Hugging Face one of a Qwen3 causal LM: ``config.json`` (``Qwen3ForCausalLM``),
``model.safetensors``, ``generation_config.json`` and the Qwen3 tokenizer files, whose
``tokenizer_config.json`` carries the chat template that renders the guard instruction. Random
checkpoints carry our own-wording template (:mod:`pipeline.gen.template`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.gen.template import gen_chat_template
from pipeline.jsonfiles import read_json_object
from pipeline.tokens.files import TOKENIZER_FILES, qwen3_tokenizer_dir

GEN_ARCHITECTURE = "Qwen3ForCausalLM"
GEN_SIZES: tuple[str, ...] = ("tiny", "0.6b")
# Qwen3 stops on either end marker; the Gen release does the same.
EOS_TOKEN_IDS: tuple[int, ...] = (151645, 151643)
PAD_TOKEN_ID = 151643

# Random init: embeddings (tied to the LM head) get std LOGIT_STD / sqrt(hidden_size). The final
# RMSNorm makes hidden states unit-RMS, so logits then have std ~LOGIT_STD. transformers' default
# (0.02) gives near-uniform logits whose top-2 margins are float noise; with std 4 the argmax is
# decided by the weights, so greedy rulings are stable across batch shapes and restarts.
LOGIT_STD = 4.0

_SHAPES: dict[str, dict[str, Any]] = {
    # Our own test size: a toy backbone with the real vocabulary, so the real tokenizer applies.
    "tiny": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 8192, "torch_dtype": "float32",
    },
    # Qwen3-0.6B shapes (docs/model.md §2); the Gen context length is *uncertain*: the worker
    # caps it with --max-context-tokens anyway.
    "0.6b": {
        "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 32768, "torch_dtype": "bfloat16",
    },
}


def gen_config_dict(size: str) -> dict[str, Any]:
    """The full config.json of a Gen checkpoint of ``size`` (tiny or 0.6b)."""
    if size not in _SHAPES:
        raise UserError(f"unknown Gen size {size!r}; choose one of {', '.join(GEN_SIZES)}")
    return {
        "architectures": [GEN_ARCHITECTURE],
        "model_type": "qwen3",
        "vocab_size": 151936,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": PAD_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_IDS[0],
        "initializer_range": 0.02,
        **_SHAPES[size],
    }


def generation_config_dict() -> dict[str, Any]:
    # Greedy, as the official evaluation decodes (docs/model.md §7).
    return {
        "do_sample": False,
        "eos_token_id": list(EOS_TOKEN_IDS),
        "pad_token_id": PAD_TOKEN_ID,
        "max_new_tokens": 128,
    }


def write_gen_tokenizer(out: Path, source: Path | None = None) -> None:
    """The Qwen3 tokenizer files into ``out``, with our guard template as ``chat_template``."""
    folder = source or qwen3_tokenizer_dir()
    for name in TOKENIZER_FILES:
        if name != "tokenizer_config.json" and (folder / name).is_file():
            (out / name).write_bytes((folder / name).read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = gen_chat_template()
    # Batched generation pads on the left so every row's next token sits in the last column.
    config["padding_side"] = "left"
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")


def init_random_gen(out: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised Gen checkpoint (config, weights, generation config, tokenizer)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config_dict = gen_config_dict(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Qwen3Config(**{k: v for k, v in config_dict.items() if k not in ("architectures", "model_type")})
    model: Any = Qwen3ForCausalLM(config)
    with torch.no_grad():
        std = LOGIT_STD / math.sqrt(config_dict["hidden_size"])
        model.model.embed_tokens.weight.normal_(0.0, std, generator=torch.Generator().manual_seed(seed))
    dtype = torch.float32 if config_dict["torch_dtype"] == "float32" else torch.bfloat16
    model = model.to(dtype=dtype)
    model.save_pretrained(out, safe_serialization=True)
    # save_pretrained writes its own config.json; ours is the contract (field set, architectures).
    (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n", encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps(generation_config_dict(), indent=2) + "\n",
                                                encoding="utf-8")
    write_gen_tokenizer(out)
    return out


@dataclass
class GenModel:
    """A loaded Gen checkpoint: the causal LM, its tokenizer (with the guard template) and limits."""

    model: Any            # transformers PreTrainedModel (Qwen3ForCausalLM)
    tokenizer: Any        # transformers tokenizer from the checkpoint directory
    name: str
    device: str
    max_position_embeddings: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int


def _check_gen_dir(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} has no config.json; make a Gen checkpoint with "
                        "'guardstream model init-random --arch gen --out DIR' or pass Qwen/Qwen3Guard-Gen-0.6B")
    config = read_json_object(config_file)
    architectures = config.get("architectures") or []
    if GEN_ARCHITECTURE not in architectures:
        raise UserError(f"{config_file} declares architectures {architectures}; the generative worker needs a "
                        f"Qwen3Guard-Gen checkpoint ([\"{GEN_ARCHITECTURE}\"]), not a Stream one")
    tok_config = folder / "tokenizer_config.json"
    has_template = (folder / "chat_template.jinja").is_file() or (
        tok_config.is_file() and "chat_template" in read_json_object(tok_config))
    if not has_template:
        raise UserError(f"{folder} has no chat template (tokenizer_config.json chat_template or chat_template.jinja); "
                        "a Gen checkpoint's template carries the guard instruction and is required")
    return config


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    return device


def pick_dtype(dtype: str, device: str) -> Any:
    """auto: bf16 on CUDA (the released precision), fp32 on CPU (no fast half-precision there)."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in table:
        raise UserError(f"unknown precision {dtype!r}; choose auto, fp32, fp16 or bf16")
    return table[dtype]


def load_gen_model(model: str, device: str = "auto", dtype: str = "auto") -> GenModel:
    """Load a Gen checkpoint from a local directory or a Hugging Face id, ready for inference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.model.checkpoint import resolve_model_dir

    folder = resolve_model_dir(model)
    config = _check_gen_dir(folder)
    chosen_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, chosen_device)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **tokenizer_kwargs(config))
    lm: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    lm = lm.to(device=chosen_device)
    lm.eval()
    generation_file = folder / "generation_config.json"
    generation = read_json_object(generation_file) if generation_file.is_file() else {}
    eos = generation.get("eos_token_id", config.get("eos_token_id", EOS_TOKEN_IDS[0]))
    eos_ids = tuple(eos) if isinstance(eos, list) else (int(eos),)
    pad = generation.get("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else PAD_TOKEN_ID)
    return GenModel(
        model=lm, tokenizer=tokenizer, name=_model_name(model, folder), device=chosen_device,
        max_position_embeddings=int(config.get("max_position_embeddings", 32768)),
        eos_token_ids=eos_ids, pad_token_id=int(pad),
    )


# transformers' own list of model types whose tokenizers may carry the broken regex.
MISTRAL_MODEL_TYPES = ("mistral", "mistral3", "voxtral", "ministral", "pixtral")


def tokenizer_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Tell transformers a Qwen3 tokenizer is not a Mistral one (docs/generative.md, "Quiet logs").

    Without ``transformers_version`` in config.json it warns about Mistral's tokenizer regex on any
    local tokenizer; the warning is spurious for other model types and the flag changes nothing else.
    """
    if config.get("model_type") in MISTRAL_MODEL_TYPES:
        return {}
    return {"fix_mistral_regex": False}


def _model_name(model: str, folder: Path) -> str:
    # Hub ids name themselves; a local directory is named by its folder (and revision when recorded).
    if not Path(model).expanduser().is_dir():
        return model
    return folder.resolve().name
