"""Scoring one conversation's TokenDeltas into Verdicts (docs/token-stream.md), engine-agnostic.

The stages, each its own module with typed inputs and outputs, and each writing its own fields of
:class:`ConversationState`:

    delta ─▶ order (ordering.py) ─▶ render (render.py) ─▶ FeedRequest ─▶ engine ─▶ HeadOutputs
          ─▶ take (render.py: rows -> messages) ─▶ judge (judge.py) ─▶ verdicts (verdicts.py)

:class:`Scorer` only composes them. The caller (stream worker, ``moderate --engine onnx``, tests)
drives it: ``apply`` each delta, then ``pending`` -> engine -> ``absorb`` until ``pending`` is None,
and ``encode_state`` for durable storage. The state is a pure function of the deltas applied (plus
the model outputs), so replaying the same deltas rebuilds it, and every verdict's content (all but
``ts_ms``/``latency_ms``) is independent of how deltas were grouped into engine calls: progress
watermarks are tied to scored-token indices, flags to the debounced pair, finals to the message end.

More than one engine round per batch: when a message begins while earlier assistant tokens still
await outputs and the history must be re-rendered (see :mod:`pipeline.scoring.render`), the new
deltas are queued and rendered by the ``absorb`` that completes the earlier message. Callers loop
``pending``/``absorb`` until ``pending`` returns None; each extra round is one such message boundary.

Context limit (``max_context_tokens``): see :mod:`pipeline.scoring.render`. Messages cut short get
their final verdict on what fit, plus one Rejection saying so; later messages are not judged and
each is reported once. Nothing crashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from tokenizers import Tokenizer

from pipeline.engine.types import FeedRequest, HeadOutputs
from pipeline.labels import LabelMaps
from pipeline.policy import PolicyBook
from pipeline.scoring.judge import Judge
from pipeline.scoring.ordering import AFTER_END, Ordering, gap_since_ms, held_bytes
from pipeline.scoring.render import StreamRenderer, Taken
from pipeline.scoring.state import ConversationState, Rejection, SourceRef, tombstone
from pipeline.state.keys import conversation_key
from pipeline.tokens.text import TextTokenizer
from schemas.messages import TokenDelta, Verdict

__all__ = ["AFTER_END", "Absorbed", "ConversationState", "Rejection", "Scorer", "SourceRef", "gap_since_ms",
           "held_bytes"]


@dataclass(slots=True)
class Absorbed:
    """One conversation's engine answer, judged: the verdicts due, and the reports of deltas that
    waited for a re-render and were rendered now (the context limit)."""

    verdicts: list[Verdict] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class Scorer:
    def __init__(
        self,
        tokenizer: Tokenizer | TextTokenizer,
        labels: LabelMaps,
        policies: PolicyBook,
        model_name: str,
        *,
        progress_every_tokens: int = 16,
        max_context_tokens: int = 8192,
        include_token_labels: bool = False,
        max_held_deltas: int = 1_000,
        max_held_bytes: int = 1024 * 1024,
    ) -> None:
        self.text = TextTokenizer.of(tokenizer)
        self.ordering = Ordering(max_held_deltas=max_held_deltas, max_held_bytes=max_held_bytes)
        self.renderer = StreamRenderer(self.text, max_context_tokens)
        self.judge = Judge(labels, policies, model_name, progress_every_tokens=progress_every_tokens,
                           include_token_labels=include_token_labels)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ConversationState)

    # -- state ----------------------------------------------------------------------------------
    def new_state(self, conversation_id: str, tenant: str | None) -> ConversationState:
        return ConversationState(conversation_id, tenant, conversation_key(tenant, conversation_id))

    def encode_state(self, state: ConversationState) -> bytes:
        return self._encoder.encode(state)

    def decode_state(self, data: bytes) -> ConversationState:
        return self._decoder.decode(data)

    @staticmethod
    def tombstone(state: ConversationState) -> ConversationState:
        """What an ended conversation leaves in the store: enough to report later deltas of its id."""
        return tombstone(state)

    # -- input: order, then render --------------------------------------------------------------
    def apply(
        self, state: ConversationState, delta: TokenDelta, raw: bytes, source: SourceRef, now_ms: int,
    ) -> list[Rejection]:
        """Take one delta (any order); return what must go to the DLQ. ``type: end`` goes to :meth:`end`.

        ``now_ms`` is the delta's log time (the input record's timestamp): a held delta's deadline
        counts from it.
        """
        out: list[Rejection] = []
        for step in self.ordering.apply(state, delta, raw, source, now_ms):
            if isinstance(step, Rejection):
                out.append(step)
            else:
                out += self.renderer.render(state, step)
        return out

    def expire(self, state: ConversationState, now_ms: int, gap_timeout_ms: int) -> list[Rejection]:
        """Report held deltas whose gap is ``gap_timeout_ms`` old (see :meth:`Ordering.expire`)."""
        return self.ordering.expire(state, now_ms, gap_timeout_ms)

    def end(self, state: ConversationState, raw: bytes, source: SourceRef) -> list[Rejection]:
        """``type: end``: close the conversation (see :meth:`Ordering.end`)."""
        return self.ordering.end(state, raw, source)

    # -- model: request, then take + judge ------------------------------------------------------
    def pending(self, state: ConversationState) -> FeedRequest | None:
        """The whole stream and the first position whose outputs are wanted, or None when up to date."""
        return self.renderer.request(state)

    def absorb(self, state: ConversationState, outputs: HeadOutputs, now_ms: int) -> Absorbed:
        """Outputs for positions ``[absorbed, absorbed + len(outputs))`` -> verdicts, in message order."""
        result = self.absorb_batch([(state, outputs)], now_ms)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def absorb_batch(
        self, answers: Sequence[tuple[ConversationState, HeadOutputs]], now_ms: int,
    ) -> list[Absorbed | Exception]:
        """:meth:`absorb` for every conversation of a micro-batch, the argmax over all of them at once.

        One result per answer; a conversation whose judging failed gets its exception (its state
        may be half-updated: the caller drops it), the others are judged all the same.
        """
        taken: list[Taken | Exception] = []
        for state, outputs in answers:
            try:
                taken.append(self.renderer.take(state, len(outputs)))
            except Exception as exc:
                taken.append(exc)
        ok = [(outputs, t) for (_, outputs), t in zip(answers, taken, strict=True) if not isinstance(t, Exception)]
        try:
            labels = self.judge.argmax_batch(ok)
        except Exception:   # judged one by one below, so that only the culprit fails
            labels = None
        results: list[Absorbed | Exception] = []
        k = 0
        for (state, outputs), t in zip(answers, taken, strict=True):
            if isinstance(t, Exception):
                results.append(t)
                continue
            mine = labels[k] if labels is not None else None
            k += 1
            try:
                verdicts = self.judge.judge(state, outputs, t, now_ms, mine)
                results.append(Absorbed(verdicts, self.renderer.resume(state)))
            except Exception as exc:
                results.append(exc)
        return results
