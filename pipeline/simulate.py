"""Simulating a stream worker offline: complete conversations fed as TokenDeltas through the stream
Scorer and a StreamEngine, in one process, without Kafka or Redis.

What ``guardstream moderate --engine onnx`` runs: each message is cut into ``chunk_chars``-character
deltas (0: one delta), reasoning deltas before content deltas, and fed in order exactly as a stream
worker would receive them, looping ``pending`` -> engine -> ``absorb`` after every delta. Its final
verdicts must equal the full-sequence reference's (:mod:`pipeline.reference`) whatever the chunking.
(Not to be confused with a worker's recovery, which replays a partition's Kafka log.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from pipeline.chunking import Chunker
from pipeline.conversations import Conversation
from pipeline.deltas import conversation_deltas
from pipeline.engine.types import StreamEngine
from pipeline.labels import read_label_maps
from pipeline.policy import PolicyBook
from pipeline.scoring.scorer import Scorer
from pipeline.scoring.state import ConversationState, Rejection, SourceRef
from schemas.messages import TokenDelta, Verdict, encode

SIMULATION_TOPIC = "simulation"   # the SourceRef topic of simulated deltas (DLQ-style reports name it)


def simulated_deltas(conversation: Conversation, chunk_chars: int = 0) -> list[TokenDelta]:
    """The conversation's deltas in ``chunk_chars``-character chunks (0: one delta per text), no ``end``."""
    # A chunk as long as the longest possible text is the whole text.
    chunker = Chunker("chars", chunk_chars if chunk_chars > 0 else sys.maxsize)
    return conversation_deltas(conversation, chunker, end=False)


@dataclass
class SimulationResult:
    verdicts: list[Verdict] = field(default_factory=list)      # every verdict, in emission order
    rejections: list[Rejection] = field(default_factory=list)  # what a worker would send to the DLQ
    state: ConversationState | None = None                      # the conversation's state after the last delta


class Simulator:
    def __init__(self, scorer: Scorer, engine: StreamEngine) -> None:
        self.scorer = scorer
        self.engine = engine

    @classmethod
    def from_dir(cls, folder: Path, engine: StreamEngine, policies: PolicyBook, model_name: str, *,
                 include_token_labels: bool = False, max_context_tokens: int = 8192) -> Simulator:
        """A simulator with the tokenizer and label maps of the model directory ``folder``."""
        from pipeline.tokens.files import load_model_tokenizer

        scorer = Scorer(load_model_tokenizer(folder), read_label_maps(folder), policies, model_name,
                        include_token_labels=include_token_labels, max_context_tokens=max_context_tokens)
        return cls(scorer, engine)

    def simulate(self, conversation: Conversation, chunk_chars: int = 0, now_ms: int = 0) -> SimulationResult:
        """Feed the whole conversation, then forget its cache; every verdict and rejection, in order."""
        return self.feed(conversation, simulated_deltas(conversation, chunk_chars), now_ms)

    def feed(self, conversation: Conversation, deltas: Iterable[TokenDelta], now_ms: int = 0,
             topic: str = SIMULATION_TOPIC) -> SimulationResult:
        """Apply ``deltas`` (of ``conversation``, in order) and run the engine after each until nothing is
        pending, then forget the conversation's cache. ``topic`` names the deltas' source in rejections."""
        result = SimulationResult()
        state = self.scorer.new_state(conversation.conversation_id, conversation.tenant)
        for offset, delta in enumerate(deltas):
            result.rejections += self.scorer.apply(state, delta, encode(delta), SourceRef(topic, 0, offset), now_ms)
            while (request := self.scorer.pending(state)) is not None:
                outputs = self.engine.run([request])[0]
                absorbed = self.scorer.absorb(state, outputs, now_ms)
                result.verdicts += absorbed.verdicts
                result.rejections += absorbed.rejections
        self.engine.evict(state.key)
        result.state = state
        return result

    def final_verdicts(self, conversation: Conversation, chunk_chars: int = 0, now_ms: int = 0) -> list[Verdict]:
        return offline_finals(self.simulate(conversation, chunk_chars, now_ms).verdicts)


def offline_finals(verdicts: list[Verdict]) -> list[Verdict]:
    """The final verdicts as an offline file reports them: without ``seq`` and ``cleared_through_seq``,
    which describe one particular chunking (the reference has no chunks)."""
    return [msgspec.structs.replace(v, seq=None, cleared_through_seq=None) for v in verdicts if v.kind == "final"]
