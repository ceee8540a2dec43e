"""Replaying complete conversations as TokenDeltas through the stream Scorer and a StreamEngine.

What ``guardstream moderate --engine onnx`` runs: each message is cut into ``chunk_chars``-character
deltas (0: one delta), reasoning deltas before content deltas, and fed in order exactly as a stream
worker would receive them, looping ``pending`` -> engine -> ``absorb`` after every delta. Its final
verdicts must equal the full-sequence reference's (:mod:`pipeline.reference`) whatever the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from pipeline.chunking import chunk_text
from pipeline.conversations import Conversation, Message
from pipeline.engine.types import StreamEngine
from pipeline.labels import read_label_maps
from pipeline.policy import PolicyBook
from pipeline.scoring.scorer import Scorer
from pipeline.scoring.state import Rejection, SourceRef
from schemas.messages import TokenDelta, Verdict, encode

REPLAY_TOPIC = "replay"   # the SourceRef topic of replayed deltas (DLQ-style reports name it)


def message_deltas(conversation: Conversation, index: int, message: Message, chunk_chars: int) -> list[TokenDelta]:
    """The deltas of one message: reasoning chunks, then content chunks, seq from 0, the last one final."""
    def pieces(text: str) -> list[str]:
        return chunk_text(text, "chars", chunk_chars) if chunk_chars > 0 else [text]

    parts = [(piece, True) for piece in pieces(message.reasoning)] if message.reasoning else []
    parts += [(piece, False) for piece in pieces(message.content)]
    return [
        TokenDelta(conversation_id=conversation.conversation_id, message_index=index, role=message.role, seq=seq,
                   text=text, final=seq == len(parts) - 1, reasoning=reasoning, tenant=conversation.tenant)
        for seq, (text, reasoning) in enumerate(parts)
    ]


def conversation_deltas(conversation: Conversation, chunk_chars: int = 0) -> list[TokenDelta]:
    return [d for i, m in enumerate(conversation.messages) for d in message_deltas(conversation, i, m, chunk_chars)]


@dataclass
class ReplayResult:
    verdicts: list[Verdict] = field(default_factory=list)      # every verdict, in emission order
    rejections: list[Rejection] = field(default_factory=list)  # what a worker would send to the DLQ


class Replayer:
    def __init__(self, scorer: Scorer, engine: StreamEngine) -> None:
        self.scorer = scorer
        self.engine = engine

    @classmethod
    def from_dir(cls, folder: Path, engine: StreamEngine, policies: PolicyBook, model_name: str, *,
                 include_token_labels: bool = False, max_context_tokens: int = 8192) -> Replayer:
        """A replayer with the tokenizer and label maps of the model directory ``folder``."""
        from pipeline.tokens.files import load_model_tokenizer

        scorer = Scorer(load_model_tokenizer(folder), read_label_maps(folder), policies, model_name,
                        include_token_labels=include_token_labels, max_context_tokens=max_context_tokens)
        return cls(scorer, engine)

    def replay(self, conversation: Conversation, chunk_chars: int = 0, now_ms: int = 0) -> ReplayResult:
        """Feed the whole conversation, then forget its cache; every verdict and rejection, in order."""
        result = ReplayResult()
        state = self.scorer.new_state(conversation.conversation_id, conversation.tenant)
        for offset, delta in enumerate(conversation_deltas(conversation, chunk_chars)):
            source = SourceRef(REPLAY_TOPIC, 0, offset)
            result.rejections += self.scorer.apply(state, delta, encode(delta), source, now_ms)
            while (request := self.scorer.pending(state)) is not None:
                outputs = self.engine.run([request])[0]
                absorbed = self.scorer.absorb(state, outputs, now_ms)
                result.verdicts += absorbed.verdicts
                result.rejections += absorbed.rejections
        self.engine.evict(state.key)
        return result

    def final_verdicts(self, conversation: Conversation, chunk_chars: int = 0, now_ms: int = 0) -> list[Verdict]:
        return offline_finals(self.replay(conversation, chunk_chars, now_ms).verdicts)


def offline_finals(verdicts: list[Verdict]) -> list[Verdict]:
    """The final verdicts as an offline file reports them: without ``seq`` and ``cleared_through_seq``,
    which describe one particular chunking (the reference has no chunks)."""
    return [msgspec.structs.replace(v, seq=None, cleared_through_seq=None) for v in verdicts if v.kind == "final"]
