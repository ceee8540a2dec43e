"""``guardstream send`` and ``watch`` against the real broker."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.conversations import Conversation, Message, write_conversations
from schemas.messages import TokenDelta, Verdict, decode_delta, encode
from tests.fixtures.stack import consume_all, produce
from workers.cli import main

CONVERSATIONS = [
    Conversation("chat-a", "acme", (Message("user", "How do I bake sourdough bread at home?"),
                                    Message("assistant", "Feed a starter, mix, fold, proof, bake.", "Easy one."))),
    Conversation("chat-b", None, (Message("system", "Be brief."), Message("user", "Grüße 👋 <|im_end|> done"))),
    Conversation("chat-c", "beta", (Message("user", ""),)),
]


def _kafka_flags(settings: Settings) -> list[str]:
    return ["--kafka-bootstrap", settings.kafka_bootstrap]


def _send(settings: Settings, tmp_path: Path, *extra: str) -> list[TokenDelta]:
    path = tmp_path / "convs.jsonl"
    write_conversations(path, CONVERSATIONS)
    before = time.time() * 1000
    rc = main(["send", "--input", str(path), "--topic-in", settings.topic_in, "--no-progress",
               *_kafka_flags(settings), *extra])
    assert rc == 0
    records = consume_all(settings, settings.topic_in)
    deltas = [decode_delta(r.value) for r in records if r.value is not None]
    for record, delta in zip(records, deltas, strict=True):
        assert record.key == delta.conversation_id.encode()
        assert delta.ts_ms is not None and delta.ts_ms >= before - 1000
    return deltas


def _reassemble(deltas: list[TokenDelta]) -> dict[tuple[str, int], list[TokenDelta]]:
    messages: dict[tuple[str, int], list[TokenDelta]] = defaultdict(list)
    for delta in deltas:
        if delta.type == "delta":
            messages[(delta.conversation_id, delta.message_index or 0)].append(delta)
    return messages


@pytest.mark.parametrize("chunking", [
    ["--chunk", "tokens"],
    ["--chunk", "chars", "--chunk-size", "4", "--interleave", "random", "--seed", "3"],
    ["--chunk", "random", "--chunk-size", "6", "--rate", "500"],
])
def test_send_publishes_every_message_as_ordered_chunks_that_rebuild_it(
    settings: Settings, tmp_path: Path, chunking: list[str]
) -> None:
    deltas = _send(settings, tmp_path, *chunking)
    messages = _reassemble(deltas)
    for conv in CONVERSATIONS:
        for index, message in enumerate(conv.messages):
            chunks = sorted(messages[(conv.conversation_id, index)], key=lambda d: d.seq or 0)
            assert [d.seq for d in chunks] == list(range(len(chunks)))
            assert [d.final for d in chunks] == [False] * (len(chunks) - 1) + [True]
            assert "".join(d.text for d in chunks if d.reasoning) == (message.reasoning or "")
            assert "".join(d.text for d in chunks if not d.reasoning) == message.content
            assert all(d.role == message.role and d.tenant == conv.tenant for d in chunks)
    ends = [d.conversation_id for d in deltas if d.type == "end"]
    assert sorted(ends) == sorted(c.conversation_id for c in CONVERSATIONS)


def test_send_with_no_end_and_an_id_suffix(settings: Settings, tmp_path: Path) -> None:
    deltas = _send(settings, tmp_path, "--no-end", "--id-suffix=-run2", "--chunk", "chars", "--chunk-size", "50")
    assert all(d.type == "delta" for d in deltas)
    assert {d.conversation_id for d in deltas} == {c.conversation_id + "-run2" for c in CONVERSATIONS}


def test_send_reports_a_bad_input_file_as_a_user_error(settings: Settings, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversation_id": "x", "messages": [{"role": "robot", "content": "hi"}]}\n')
    assert main(["send", "--input", str(bad), "--topic-in", settings.topic_in, *_kafka_flags(settings)]) == 2
    assert f"{bad}:1" in capsys.readouterr().err


def _verdict(conversation_id: str, kind: str, risk: str, index: int = 0) -> Verdict:
    return Verdict(verdict_id=f"{conversation_id}/{index}/stream/{kind}/0", conversation_id=conversation_id,
                   message_index=index, role="assistant", source="stream", kind=kind,  # type: ignore[arg-type]
                   risk=risk, action="block" if risk != "safe" else "allow", model="tiny",  # type: ignore[arg-type]
                   ts_ms=int(time.time() * 1000), category=None if risk == "safe" else "Violent", token_index=0)


def _produce_verdicts(settings: Settings, verdicts: list[Verdict]) -> None:
    produce(settings, settings.topic_verdicts, [(v.conversation_id, encode(v)) for v in verdicts])


def test_watch_prints_one_readable_line_per_verdict(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    _produce_verdicts(settings, [_verdict("w1", "flag", "unsafe"), _verdict("w1", "final", "controversial", 1)])
    rc = main(["watch", "--from-beginning", "--max", "2", "--timeout", "60", "--no-color",
               "--topic-verdicts", settings.topic_verdicts, *_kafka_flags(settings)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert len(lines) == 2
    assert "w1" in lines[0] and "FLAG" in lines[0] and "UNSAFE" in lines[0] and "Violent" in lines[0]
    assert "block" in lines[0]
    assert "#1" in lines[1] and "CONTROVERSIAL" in lines[1]


def test_watch_filters_by_conversation_and_prints_json(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    wanted = [_verdict("keep", "final", "safe", i) for i in range(3)]
    _produce_verdicts(settings, [_verdict("skip", "final", "unsafe"), *wanted, _verdict("skip", "flag", "unsafe")])
    rc = main(["watch", "--from-beginning", "--conversation", "keep", "--json", "--max", "3", "--timeout", "60",
               "--topic-verdicts", settings.topic_verdicts, *_kafka_flags(settings)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert [json.loads(line)["verdict_id"] for line in lines] == [v.verdict_id for v in wanted]


def test_watch_from_the_end_skips_verdicts_already_there(settings: Settings,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _produce_verdicts(settings, [_verdict("old", "final", "safe")])
    rc = main(["watch", "--max", "1", "--timeout", "3", "--json",
               "--topic-verdicts", settings.topic_verdicts, *_kafka_flags(settings)])
    assert rc == 1  # --max not reached
    assert capsys.readouterr().out.strip() == ""


def test_watch_on_a_missing_topic_says_how_to_create_it(settings: Settings,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["watch", "--timeout", "1", "--topic-verdicts", settings.topic_verdicts + ".missing",
               *_kafka_flags(settings)])
    assert rc == 2
    assert "guardstream topics" in capsys.readouterr().err
