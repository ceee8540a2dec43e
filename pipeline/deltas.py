"""Turning conversations into the TokenDelta streams a frontend would publish, and interleaving them."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Literal, TypeVar

from pipeline.chunking import Chunker
from pipeline.conversations import Conversation
from schemas.messages import TokenDelta

Interleave = Literal["round-robin", "random", "sequential"]
INTERLEAVE_MODES: tuple[Interleave, ...] = ("round-robin", "random", "sequential")
T = TypeVar("T")


def conversation_deltas(conversation: Conversation, chunker: Chunker, *, end: bool = True) -> list[TokenDelta]:
    """Every delta of ``conversation`` in publication order; ``end`` appends the closing ``type: end``.

    Within a message, reasoning chunks come first (``reasoning: true``), then content chunks;
    ``seq`` counts both from 0 and the last content chunk is ``final``.
    """
    deltas: list[TokenDelta] = []
    cid, tenant = conversation.conversation_id, conversation.tenant
    for index, message in enumerate(conversation.messages):
        pieces = [(True, piece) for piece in chunker.split(message.reasoning)] if message.reasoning else []
        pieces += [(False, piece) for piece in chunker.split(message.content)]
        for seq, (is_reasoning, piece) in enumerate(pieces):
            deltas.append(TokenDelta(
                conversation_id=cid, message_index=index, role=message.role, seq=seq, text=piece,
                final=seq == len(pieces) - 1, reasoning=is_reasoning, tenant=tenant,
            ))
    if end:
        deltas.append(TokenDelta(conversation_id=cid, type="end", tenant=tenant))
    return deltas


def interleave(streams: Sequence[Sequence[T]], mode: Interleave, rng: random.Random | None = None) -> Iterator[T]:
    """Merge streams keeping each stream's own order: in turn, at random (seeded), or one after another."""
    if mode == "sequential":
        for stream in streams:
            yield from stream
        return
    cursors = [0] * len(streams)
    live = [i for i, s in enumerate(streams) if s]
    turn = 0
    rng = rng or random.Random(0)
    while live:
        pick = rng.randrange(len(live)) if mode == "random" else turn % len(live)
        index = live[pick]
        yield streams[index][cursors[index]]
        cursors[index] += 1
        if cursors[index] == len(streams[index]):
            live.pop(pick)
            turn = pick  # the next stream has slid into this slot
        else:
            turn = pick + 1
