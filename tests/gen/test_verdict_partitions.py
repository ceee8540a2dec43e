"""Both workers put a conversation's verdicts on one partition of guard.verdicts: the one its deltas used.

The stream worker produces with librdkafka, the generative worker with aiokafka (faust). Unless
both hash keys the same way (murmur2, as the Java client), one conversation's verdicts land on
different partitions and a consumer group of verdict readers loses its per-conversation order.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.kafka import delete_topics
from schemas.messages import TokenDelta
from tests.fixtures.stack import consume_all, consume_verdicts, produce_deltas
from tests.gen.test_worker_kafka import WorkerProcess as GenWorkerProcess
from tests.worker.harness import WorkerProcess as StreamWorkerProcess
from tests.worker.harness import worker_settings
from workers.generative.app import TABLE_NAME

pytestmark = pytest.mark.timeout(900)
CONVERSATIONS = 24


@pytest.fixture
def both_settings(settings: Settings, tiny_onnx_dir: Path) -> Iterator[Settings]:
    yield worker_settings(settings, tiny_onnx_dir, max_context_tokens=1024, gen_max_batch=8)
    group = settings.generative_group
    delete_topics(settings, [f"{group}-{TABLE_NAME}-changelog", f"{group}-__assignor-__leader"])


def _deltas() -> list[TokenDelta]:
    run = uuid.uuid4().hex[:8]   # Redis conversation state is shared by every test run
    return [TokenDelta(conversation_id=f"part-{run}-{i}-{'x' * (i % 5)}", message_index=0, role="user", seq=0,
                       text=f"question {i}: is this fine?", final=True, tenant="acme")
            for i in range(CONVERSATIONS)]


def test_stream_and_generative_verdicts_of_a_conversation_share_its_input_partition(
    both_settings: Settings, gen_checkpoint: Path, tmp_path: Path
) -> None:
    deltas = _deltas()
    produce_deltas(both_settings, deltas)
    input_partition = {r.key.decode(): r.partition for r in consume_all(both_settings, both_settings.topic_in)
                       if r.key is not None}
    assert len(input_partition) == CONVERSATIONS
    assert len(set(input_partition.values())) > 1, "all keys on one partition: the test could not fail"

    stream = StreamWorkerProcess(both_settings, tmp_path).start()
    gen = GenWorkerProcess(both_settings.replace(model=str(gen_checkpoint)), tmp_path / "gen.log")
    try:
        wanted = {(cid, source) for cid in input_partition for source in ("stream", "generative")}
        deadline = time.monotonic() + 300
        seen: set[tuple[str, str]] = set()
        while time.monotonic() < deadline and not wanted <= seen:
            assert stream.alive(), stream.tail()
            assert gen.proc.poll() is None, "generative worker exited"
            seen = {(v.conversation_id, v.source) for v in consume_verdicts(both_settings, timeout_s=20)
                    if v.kind == "final"}
            time.sleep(2)
        assert wanted <= seen, f"missing verdicts: {sorted(wanted - seen)[:5]}"
    finally:
        stream.stop()
        gen.close()

    partitions: dict[str, set[tuple[str, int]]] = defaultdict(set)
    from schemas.messages import decode_verdict

    for record in consume_all(both_settings, both_settings.topic_verdicts):
        assert record.value is not None
        verdict = decode_verdict(record.value)
        partitions[verdict.conversation_id].add((verdict.source, record.partition))
    for cid, placed in partitions.items():
        assert {p for _, p in placed} == {input_partition[cid]}, (cid, placed)
