"""Random Stream checkpoints: the real architecture and tokenizer, seeded random weights.

What ``guardstream model init-random --arch stream`` writes, so every test and demo has a model
offline. The init is ours, not transformers': see the notes on the scalings below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.labels import LabelMaps
from pipeline.model.layout import (
    DEFAULT_MAX_SHARD_BYTES,
    copy_tokenizer_files,
    torch_dtype,
    write_config,
    write_weight_stream,
)
from pipeline.model.modeling import expected_tensor_shapes
from pipeline.model.presets import SIZES, stream_config_dict

# A random deep Qwen3 "collapses": every layer's pre-norm makes
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

# The Safe prior (opt-in, ``--safe-prior LOGITS``). A deployed model says Safe for most text; a
# random one gives each risk class about a third of the tokens, and the pair debounce then finds two
# consecutive risky tokens in almost every reply. The heads have no bias parameter and their input
# is RMS-normalised with no common direction to speak of, so no head weight alone can favour a
# class; the prior adds a "bias unit" instead. The last hidden dimension holds the same value in
# every embedding row and no layer writes to it (its rows of o_proj and down_proj are zero), so the
# residual stream carries that value at every position; each head pathway's last inner dimension
# reads only that hidden dimension, and of all head rows only the two risk heads' Safe rows read
# that inner dimension. Every token's Safe logit then rises by about LOGITS (0.6 to 1.6 times it on
# the demo's conversations with the tiny config: the RMS norms rescale it per position); the other
# dimensions stay random, so risky tokens still occur, just rarely (docs/model.md section 1).
# The pre weight from the bias unit to its inner unit: the inner unit then averages about 1 after
# the pathway's RMSNorm (measured: mean 1.01 on the demo conversations, tiny config, seed 0), so the
# Safe rows' weight is the prior in logits.
BIAS_UNIT_GAIN = 1.1
MAX_SAFE_PRIOR = 50.0


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


def random_stream_tensors(config: Mapping[str, Any], seed: int = 0, safe_prior: float = 0.0
                          ) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded random tensors for every official name (in state-dict order), in the config's torch_dtype.

    Drawn one at a time in fp32 from one generator, so a seed always gives the same checkpoint,
    independent of transformers' own init code and of how the file is sharded. A non-zero
    ``safe_prior`` (logits) adds the bias unit described above; the random draws stay the same.
    """
    store = torch_dtype(str(config.get("torch_dtype", "float32")))
    generator = torch.Generator().manual_seed(seed)
    for name, shape in expected_tensor_shapes(config).items():
        mean = 1.0 if _is_norm(name) else 0.0
        std = _init_std(name, shape, config)
        tensor = torch.empty(shape, dtype=torch.float32).normal_(mean, std, generator=generator)
        if safe_prior:
            _add_bias_unit(name, tensor, config, safe_prior)
        yield name, tensor.to(store)


def _add_bias_unit(name: str, tensor: torch.Tensor, config: Mapping[str, Any], safe_prior: float) -> None:
    """Edit ``tensor`` in place for the Safe prior's bias unit (see the note on the prior above)."""
    k, j = -1, -1   # the hidden and the inner dimension that carry it
    if name == "model.embed_tokens.weight":
        tensor[:, k] = _init_std(name, tuple(tensor.shape), config)   # one typical value, every token
    elif name.endswith(RESIDUAL_OUTPUTS):
        tensor[k, :] = 0.0            # no layer writes to the bias unit
    elif name == "model.norm.weight":
        tensor[k] = 1.0
    elif name.endswith("_pre.weight"):
        tensor[j, :] = 0.0
        tensor[:, k] = 0.0
        tensor[j, k] = BIAS_UNIT_GAIN
    elif name.endswith("category_layernorm.weight"):
        tensor[j] = 1.0
    elif name.endswith("_head.weight"):
        tensor[:, j] = 0.0
        if name in ("risk_level_head.weight", "query_risk_level_head.weight"):
            labels = LabelMaps.from_config(config)
            risk = labels.response_risk if name == "risk_level_head.weight" else labels.query_risk
            tensor[risk.index("Safe"), j] = safe_prior


def random_stream_state(config: Mapping[str, Any], seed: int = 0, safe_prior: float = 0.0
                        ) -> dict[str, torch.Tensor]:
    """All of random_stream_tensors in memory (tests; small configs)."""
    return dict(random_stream_tensors(config, seed, safe_prior))


def init_random_stream(out: Path, size: str = "tiny", seed: int = 0, *, safe_prior: float = 0.0,
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                       progress: ProgressCallback | None = None) -> Path:
    """Write a Stream checkpoint of ``size`` with random weights to ``out`` and return ``out``.

    Weights are stored like the release: bf16 for 0.6b/4b/8b (half the disk; loaders upcast to
    fp32 for CPU parity runs, so both sides of a comparison see the same values) and fp32 for tiny.
    No generation_config.json: the Stream model never generates. ``safe_prior`` (logits, 0: none)
    biases both risk heads toward Safe (the note on the Safe prior above).
    """
    if not math.isfinite(safe_prior) or not 0.0 <= safe_prior <= MAX_SAFE_PRIOR:
        raise UserError(f"the Safe prior must be between 0 and {MAX_SAFE_PRIOR:g} logits, not {safe_prior!r}")
    if size.lower() not in SIZES:
        raise UserError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    config = stream_config_dict(size)
    out.mkdir(parents=True, exist_ok=True)
    store = torch_dtype(str(config["torch_dtype"]))
    shapes = expected_tensor_shapes(config)
    sizes = {n: math.prod(shape) * store.itemsize for n, shape in shapes.items()}
    write_config(out, config)
    write_weight_stream(out, sizes, _reporting(random_stream_tensors(config, seed, safe_prior), len(shapes), progress),
                        max_shard_bytes)
    copy_tokenizer_files(out)
    return out


def _reporting(tensors: Iterator[tuple[str, torch.Tensor]], total: int,
               progress: ProgressCallback | None) -> Iterator[tuple[str, torch.Tensor]]:
    for done, (name, tensor) in enumerate(tensors, start=1):
        if progress is not None:
            progress(name, done, total)
        yield name, tensor
