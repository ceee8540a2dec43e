"""Through real Kafka and Redis, chunked and interleaved deltas get the offline reference's verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.conversations import Conversation
from pipeline.decision import ResponseDebouncer, judge_tokens
from pipeline.labels import LabelMaps
from tests.fixtures.stack import produce_deltas
from tests.worker.conftest import chunked_deltas, renamed
from tests.worker.harness import dlq_records, verdicts, wait_caught_up


def reference_outcomes(checkpoint: Path, conversations: Sequence[Conversation]) -> dict[tuple[str, int], Any]:
    """(conversation, message) -> (final (risk, category, token_index), flags [(risk, category, token_index)])."""
    from pipeline.model.checkpoint import load_stream_model
    from pipeline.reference import judge_conversation
    from pipeline.tokens.files import load_qwen3_tokenizer
    from pipeline.tokens.text import TextTokenizer

    model, config = load_stream_model(str(checkpoint))
    labels = LabelMaps.from_config(config)
    text = TextTokenizer.of(load_qwen3_tokenizer(checkpoint))
    out: dict[tuple[str, int], Any] = {}
    for conv in conversations:
        for j in judge_conversation(model, text, conv, labels):
            flags = []
            if j.role == "assistant":
                debouncer = ResponseDebouncer()
                for token in judge_tokens(j.scored.risk_logits, j.scored.category_logits, labels.response_risk,
                                          labels.response_category):
                    event = debouncer.push(token)
                    if event is not None:
                        flags.append((event.risk, event.category, event.token_index))
            d = j.decision
            out[(conv.conversation_id, j.message_index)] = ((d.risk, d.category, d.token_index), flags)
    return out


def test_chunked_interleaved_deltas_get_the_reference_verdicts(
    settings: Any, start_worker: Any, tiny_stream_dir: Path, sample_conversations: list[Conversation]
) -> None:
    conversations = renamed(sample_conversations)
    deltas = chunked_deltas(conversations, seed=7)
    produce_deltas(settings, deltas)
    worker = start_worker(settings)
    wait_caught_up(settings, workers=[worker])
    assert worker.stop() == 0

    found = verdicts(settings)
    got: dict[tuple[str, int], Any] = {}
    for key in {(v.conversation_id, v.message_index) for v in found}:
        finals = [v for v in found if (v.conversation_id, v.message_index) == key and v.kind == "final"]
        flags = sorted((v.risk, v.category, v.token_index) for v in found
                       if (v.conversation_id, v.message_index) == key and v.kind == "flag")
        assert len(finals) == 1, f"{key}: {len(finals)} final verdicts"
        got[key] = ((finals[0].risk, finals[0].category, finals[0].token_index), flags)
    expected = reference_outcomes(tiny_stream_dir, conversations)
    assert got == {k: (final, sorted(flags)) for k, (final, flags) in expected.items()}
    assert dlq_records(settings) == []
