"""ONNX incremental engine vs torch full sequence on the real 0.6B config (random weights, fp32).

Slow: the session exports the 0.6B model once (1-4 minutes, ~5 GB RAM peak); keep these few.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.onnx.engine import OnnxStreamEngine
from tests.engine.conftest import assert_same_decisions, max_abs_diff, torch_reference
from tests.engine.feeding import feed_in_chunks, feed_together

pytestmark = pytest.mark.slow

FP32_BOUND = 1e-3
CONVERSATIONS = (0, 1, 6)  # English, Chinese, the control-token injection


@pytest.fixture(scope="module")
def torch_06b(stream_06b_dir: Path) -> Any:
    from pipeline.model.checkpoint import load_stream_model

    model, _ = load_stream_model(str(stream_06b_dir), dtype="fp32", device="cpu")
    return model.eval()


@pytest.fixture(scope="module")
def references(torch_06b: Any, sample_token_streams: list[list[int]]) -> dict[int, tuple]:
    return {n: torch_reference(torch_06b, sample_token_streams[n]).heads for n in CONVERSATIONS}


@pytest.fixture(scope="module")
def engine_06b(onnx_06b_dir: Path) -> OnnxStreamEngine:
    return OnnxStreamEngine.from_dir(onnx_06b_dir, device="cpu")


def test_06b_incremental_matches_full_sequence_for_chunk_sizes(
    engine_06b: OnnxStreamEngine, references: dict[int, tuple], sample_token_streams: list[list[int]],
    record_property: Any,
) -> None:
    worst = 0.0
    for n in CONVERSATIONS:
        for chunk in (1, 3, 16, "random"):
            actual = feed_in_chunks(engine_06b, f"c{n}-{chunk}", sample_token_streams[n], chunk, seed=n)
            assert_same_decisions(references[n], actual)
            worst = max(worst, max_abs_diff(references[n], actual))
    record_property("max_abs_diff", worst)
    print(f"0.6B: max |logit diff| {worst:.3e}")
    assert worst < FP32_BOUND


def test_06b_batched_conversations_match_full_sequence(
    engine_06b: OnnxStreamEngine, references: dict[int, tuple], sample_token_streams: list[list[int]],
) -> None:
    streams = {f"b{n}": sample_token_streams[n] for n in CONVERSATIONS}
    together = feed_together(engine_06b, streams, seed=2)
    for n in CONVERSATIONS:
        assert_same_decisions(references[n], together[f"b{n}"])
        assert max_abs_diff(references[n], together[f"b{n}"]) < FP32_BOUND
