"""The client library a platform team embeds in its LLM frontend.

    async with GuardClient(settings, mode="guarded") as guard:
        msg = guard.message("conv-1", "assistant")
        async for token in llm.stream(...):
            if msg.stopped.is_set():
                break                      # the guard blocked the response: stop generating
            await msg.write(token)         # publishes a delta; text is released once cleared
        await msg.finish()
        verdict = await msg.final(timeout_s=30)

Released text, blocks and retractions arrive as :class:`ReleaseEvent`s on ``msg.events``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType

from pipeline.client.release import ReleaseBuffer, ReleaseEvent, ReleaseMode
from pipeline.client.transport import DeltaPublisher, VerdictFollower
from pipeline.clock import now_ms
from pipeline.config import Settings
from schemas.messages import Role, TokenDelta, Verdict


@dataclass
class GuardedMessage:
    """One chat message being generated (or typed) and moderated while it streams."""

    client: GuardClient
    conversation_id: str
    message_index: int
    role: Role
    tenant: str | None
    buffer: ReleaseBuffer
    reasoning: bool = False
    events: asyncio.Queue[ReleaseEvent] = field(default_factory=asyncio.Queue)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)   # set by a blocking verdict
    verdicts: list[Verdict] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _final: asyncio.Future[Verdict] | None = None
    _finished: bool = False

    @property
    def blocked(self) -> Verdict | None:
        return self.buffer.blocked_by

    async def write(self, text: str, *, wait_ack: bool = False) -> ReleaseEvent:
        """Publish the next chunk. Returns what may be shown right away (optimistic mode: the chunk)."""
        if self._finished:
            raise RuntimeError("message already finished")
        seq, event = self.buffer.write(text)
        await self.client._publish(self._delta(seq, text, final=False), wait_ack)
        self._emit(event)
        return event

    async def finish(self, text: str = "", *, wait_ack: bool = True) -> None:
        """Publish the last chunk (``final``): the guard then rules on the whole message."""
        if self._finished:
            return
        seq, event = self.buffer.write(text)
        self._finished = True
        await self.client._publish(self._delta(seq, text, final=True), wait_ack)
        self._emit(event)

    async def final(self, timeout_s: float = 30.0) -> Verdict:
        """The end-of-message verdict (raises TimeoutError when none came in time)."""
        return await asyncio.wait_for(asyncio.shield(self._final_future()), timeout_s)

    def _final_future(self) -> asyncio.Future[Verdict]:
        if self._final is None:
            self._final = asyncio.get_running_loop().create_future()
        return self._final

    def _delta(self, seq: int, text: str, final: bool) -> TokenDelta:
        return TokenDelta(
            conversation_id=self.conversation_id, message_index=self.message_index, role=self.role, seq=seq,
            text=text, final=final, reasoning=self.reasoning, tenant=self.tenant, ts_ms=now_ms(),
        )

    def _on_verdict(self, verdict: Verdict) -> None:
        if verdict.verdict_id in self._seen:
            return  # a worker crash may re-deliver a verdict; duplicates carry identical content
        self._seen.add(verdict.verdict_id)
        self.verdicts.append(verdict)
        event = self.buffer.on_verdict(verdict)
        if event.blocked is not None:
            self.stopped.set()
        if verdict.kind == "final":
            future = self._final_future()
            if not future.done():
                future.set_result(verdict)
        self._emit(event)

    def _emit(self, event: ReleaseEvent) -> None:
        if event.released or event.blocked is not None or event.retracted or event.final is not None:
            self.events.put_nowait(event)


class GuardClient:
    """Publishes deltas to ``guard.in`` and follows the verdicts of its own conversations."""

    def __init__(self, settings: Settings, *, mode: ReleaseMode = "guarded", tenant: str | None = None) -> None:
        self.settings = settings
        self.mode: ReleaseMode = mode
        self.tenant = tenant
        self._publisher: DeltaPublisher | None = None
        self._follower: VerdictFollower | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._messages: dict[tuple[str, int], GuardedMessage] = {}
        self._next_index: dict[str, int] = {}

    async def start(self) -> GuardClient:
        self._loop = asyncio.get_running_loop()
        loop = self._loop
        # Blocking Kafka setup runs in a thread so the event loop stays responsive.
        def hand_over(verdict: Verdict) -> None:
            loop.call_soon_threadsafe(self._dispatch, verdict)

        self._follower = await asyncio.to_thread(VerdictFollower, self.settings, hand_over)
        self._publisher = await asyncio.to_thread(DeltaPublisher, self.settings)
        return self

    async def close(self) -> None:
        if self._publisher is not None:
            await asyncio.to_thread(self._publisher.close)
        if self._follower is not None:
            await asyncio.to_thread(self._follower.close)

    async def __aenter__(self) -> GuardClient:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def message(
        self,
        conversation_id: str,
        role: Role,
        *,
        tenant: str | None = None,
        message_index: int | None = None,
        reasoning: bool = False,
        mode: ReleaseMode | None = None,
    ) -> GuardedMessage:
        """A new message of a conversation; its index follows the previous one unless given."""
        if self._follower is None:
            raise RuntimeError("GuardClient.start() (or 'async with') first")
        index = self._next_index.get(conversation_id, 0) if message_index is None else message_index
        self._next_index[conversation_id] = index + 1
        msg = GuardedMessage(self, conversation_id, index, role, tenant or self.tenant,
                             ReleaseBuffer(mode or self.mode), reasoning=reasoning)
        self._messages[(conversation_id, index)] = msg
        self._follower.watch(conversation_id)
        return msg

    async def end(self, conversation_id: str, *, tenant: str | None = None) -> None:
        """Close the conversation: the workers free its state."""
        delta = TokenDelta(conversation_id=conversation_id, type="end", tenant=tenant or self.tenant,
                           ts_ms=now_ms())
        await self._publish(delta, True)
        self.forget(conversation_id)

    def end_soon(self, conversation_id: str, *, tenant: str | None = None) -> None:
        """Like :meth:`end` without waiting for the broker's acknowledgement: for cleanup paths
        (a request cancelled mid-way) that must not block."""
        if self._publisher is None:
            raise RuntimeError("GuardClient.start() (or 'async with') first")
        self._publisher.publish(TokenDelta(conversation_id=conversation_id, type="end",
                                           tenant=tenant or self.tenant, ts_ms=now_ms()))
        self.forget(conversation_id)

    def forget(self, conversation_id: str) -> None:
        """Stop following a conversation's verdicts (after its last final verdict)."""
        if self._follower is not None:
            self._follower.unwatch(conversation_id)
        for key in [k for k in self._messages if k[0] == conversation_id]:
            del self._messages[key]
        self._next_index.pop(conversation_id, None)

    async def _publish(self, delta: TokenDelta, wait_ack: bool) -> None:
        if self._publisher is None:
            raise RuntimeError("GuardClient.start() (or 'async with') first")
        if wait_ack:
            await self._publisher.publish_async(delta)
        else:
            self._publisher.publish(delta)

    def _dispatch(self, verdict: Verdict) -> None:
        msg = self._messages.get((verdict.conversation_id, verdict.message_index))
        if msg is not None:
            msg._on_verdict(verdict)
