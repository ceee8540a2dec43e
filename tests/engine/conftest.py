"""Shared helpers of the engine tests: token streams and the torch full-sequence reference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.engine.types import HeadOutputs


def conversation_ids(tokenizer: Any, conversation: dict[str, Any]) -> list[int]:
    """A conversation as Qwen3 template token ids (enough for engine parity; rendering is tested elsewhere)."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conversation["messages"])
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


@dataclass(frozen=True)
class Reference:
    """Torch full-sequence logits of one token sequence: [T, n] per head, float32."""

    heads: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

    def rows(self, start: int, end: int | None = None) -> tuple[np.ndarray, ...]:
        return tuple(h[start:end] for h in self.heads)


def torch_reference(model: Any, token_ids: Sequence[int]) -> Reference:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([list(token_ids)]))
    heads = (out.risk_level_logits, out.category_logits, out.query_risk_level_logits, out.query_category_logits)
    return Reference(tuple(h[0].float().numpy() for h in heads))  # type: ignore[arg-type]


def as_heads(outputs: HeadOutputs) -> tuple[np.ndarray, ...]:
    return (outputs.risk_logits, outputs.category_logits, outputs.query_risk_logits, outputs.query_category_logits)


def max_abs_diff(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    assert [e.shape for e in expected] == [a.shape for a in actual]
    return max(float(np.abs(e - a).max()) if e.size else 0.0 for e, a in zip(expected, actual, strict=True))


def assert_same_decisions(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], margin: float = 1e-4) -> None:
    """Argmax equal at every row whose top-2 margin in the expected logits exceeds ``margin``."""
    for want, have in zip(expected, actual, strict=True):
        top2 = np.sort(want, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > margin
        mismatched = np.flatnonzero(clear & (want.argmax(-1) != have.argmax(-1)))
        assert mismatched.size == 0, f"argmax differs at rows {mismatched.tolist()[:10]}"


@pytest.fixture(scope="session")
def tiny_torch_model(tiny_stream_dir: Path) -> Any:
    from pipeline.model.checkpoint import load_stream_model

    model, _ = load_stream_model(str(tiny_stream_dir), dtype="fp32", device="cpu")
    return model.eval()


@pytest.fixture(scope="session")
def sample_token_streams(qwen_tokenizer: Any, sample_conversation_dicts: list[dict[str, Any]]) -> list[list[int]]:
    return [conversation_ids(qwen_tokenizer, c) for c in sample_conversation_dicts]
