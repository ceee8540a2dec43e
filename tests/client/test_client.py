"""The client library against a real worker: publish token by token, follow verdicts, release or stop."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.client import GuardClient, GuardedMessage
from pipeline.config import Settings
from pipeline.conversations import Conversation
from tests.worker.conftest import renamed
from tests.worker.harness import verdicts


async def stream_message(msg: GuardedMessage, text: str, step: int = 3) -> str:
    """Write ``text`` in small chunks like an LLM would, stop when blocked; return what was released."""
    released = []
    for i in range(0, len(text), step):
        if msg.stopped.is_set():
            break
        event = await msg.write(text[i:i + step])
        released.append(event.released)
        await asyncio.sleep(0.01)
    await msg.finish()
    await msg.final(timeout_s=120)
    while not msg.events.empty():
        released.append(msg.events.get_nowait().released)
    return "".join(released)


async def converse(settings: Settings, conv: Conversation) -> list[tuple[GuardedMessage, str, str]]:
    results = []
    async with GuardClient(settings, mode="guarded") as guard:
        for message in conv.messages:
            msg = guard.message(conv.conversation_id, message.role, tenant=conv.tenant)
            released = await stream_message(msg, message.content)
            results.append((msg, message.content, released))
        await guard.end(conv.conversation_id, tenant=conv.tenant)
    return results


def test_guarded_client_releases_only_cleared_text_and_sees_its_final_verdicts(
    settings: Settings, start_worker: Any, sample_conversations: list[Conversation]
) -> None:
    worker = start_worker(settings)
    worker.wait_for_log("partitions assigned")
    conv = renamed(sample_conversations[:1])[0]
    results = asyncio.run(converse(settings, conv))
    published = {(v.conversation_id, v.message_index, v.kind): v for v in verdicts(settings)}
    for msg, text, released in results:
        final = msg.buffer.final_verdict
        assert final is not None
        assert published[(conv.conversation_id, msg.message_index, "final")].verdict_id == final.verdict_id
        if msg.blocked is None:
            assert released == text  # all of it, in order, once cleared
        else:
            assert text.startswith(released) and msg.stopped.is_set()  # never more than was cleared
    assert worker.stop() == 0
