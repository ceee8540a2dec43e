"""Running a labelled set through an engine: one :class:`SampleRun` per sample.

Two paths, which must agree (tests/eval/test_eval_command.py):

- offline (``--engine torch`` without chunking): the reference computation, one full-sequence
  forward over the judged message's context (pipeline.reference);
- simulated stream (``--engine onnx``, or any ``--chunk-chars`` / ``--chunk-tokens``): the conversation cut
  into TokenDeltas and fed through the stream Scorer and an engine exactly as a stream worker
  does, the outcome read from its flag and final verdicts.

Both keep the per-token probabilities of the judged message, which ``--sweep`` relabels offline.
The tenant rule (thresholds, debounce) is applied by the same code in both: the Scorer's debounce
in the simulated-stream path, :class:`pipeline.decision.ResponseDebouncer` here in the offline one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.chunking import Chunker
from pipeline.decision import ResponseDebouncer, ThresholdRule, TokenJudgement, decide_prompt, judge_tokens
from pipeline.deltas import conversation_deltas
from pipeline.engine.types import EngineCache, FeedRequest, HeadOutputs, StreamEngine
from pipeline.eval.dataset import EvalSample
from pipeline.eval.metrics import Outcome
from pipeline.labels import LabelMaps
from pipeline.scoring.scorer import Scorer
from pipeline.scoring.state import unpack
from pipeline.simulate import Simulator
from pipeline.tokens.chat import RenderedContext
from pipeline.tokens.text import TextTokenizer
from schemas.messages import Verdict

RISK_CODES = {"safe": 0, "unsafe": 1, "controversial": 2}   # the model's risk head order


@dataclass(frozen=True)
class SampleRun:
    sample: EvalSample
    outcome: Outcome
    context_ids: list[int]                 # the judged message's rendered context
    argmax: np.ndarray | None = None       # per scored response token: risk code (RISK_CODES)
    scores: np.ndarray | None = None       # per scored response token: P(safe), P(unsafe), P(controversial)
    judged: bool = True                    # False: not even the message's template fit the context limit
    verdicts: list[Verdict] = field(default_factory=list)


def context_of(text: TextTokenizer, sample: EvalSample, max_context_tokens: int) -> RenderedContext | None:
    """The judged message's context as the stream renders it (cut to the limit like the scorer)."""
    from pipeline.reference import fit_context

    fitted = fit_context(text, sample.conversation.messages, sample.judged_index, max_context_tokens)
    return None if fitted is None else fitted[0]


def response_tokens(risk_logits: np.ndarray, category_logits: np.ndarray,
                    labels: LabelMaps) -> tuple[np.ndarray, np.ndarray, list[TokenJudgement]]:
    judged = judge_tokens(risk_logits, category_logits, labels.response_risk, labels.response_category)
    argmax = np.asarray([RISK_CODES[t.risk] for t in judged], dtype=np.int8)
    scores = np.asarray([[t.scores.get(k, 0.0) for k in ("safe", "unsafe", "controversial")] for t in judged],
                        dtype=np.float64).reshape(len(judged), 3)
    return argmax, scores, judged


def offline_outcome(role: str, scored: HeadOutputs, labels: LabelMaps, rule: ThresholdRule,
                    positions: Sequence[int]) -> tuple[Outcome, np.ndarray | None, np.ndarray | None]:
    """The outcome of one judged message from its scored logits (prompt argmax, or the debounce)."""
    if role == "user":
        decision = decide_prompt(scored.query_risk_logits, scored.query_category_logits, labels)
        return Outcome(decision.risk, positions=tuple(positions)), None, None
    argmax, scores, judged = response_tokens(scored.risk_logits, scored.category_logits, labels)
    debouncer = ResponseDebouncer()
    for token in judged:
        debouncer.push(token, rule)
    decision = debouncer.decision()
    unsafe, controversial = debouncer.first_unsafe, debouncer.first_controversial
    return Outcome(decision.risk, unsafe.token_index if unsafe else None,
                   controversial.token_index if controversial else None, tuple(positions)), argmax, scores


class OfflineRunner:
    """The reference path: one full forward per sample (pipeline.reference)."""

    def __init__(self, model: object, text: TextTokenizer, labels: LabelMaps, rule: ThresholdRule,
                 max_context_tokens: int) -> None:
        self.model, self.text, self.labels, self.rule = model, text, labels, rule
        self.max_context_tokens = max_context_tokens

    def run(self, sample: EvalSample) -> SampleRun:
        from pipeline.reference import _rows, reference_logits

        context = context_of(self.text, sample, self.max_context_tokens)
        if context is None:
            return SampleRun(sample, Outcome("safe"), [], judged=False)
        logits = reference_logits(self.model, context.token_ids)  # type: ignore[arg-type]
        scored = _rows(logits, context.scored_positions)
        outcome, argmax, scores = offline_outcome(sample.role, scored, self.labels, self.rule,
                                                  context.scored_positions)
        return SampleRun(sample, outcome, context.token_ids, argmax, scores)


class RecordingEngine:
    """A StreamEngine wrapper that keeps the response-head logits of every position it computed."""

    def __init__(self, inner: StreamEngine) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.rows: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}

    @property
    def cache(self) -> EngineCache:
        return self.inner.cache

    def run(self, requests: Sequence[FeedRequest]) -> list[HeadOutputs]:
        results = self.inner.run(requests)
        for request, out in zip(requests, results, strict=True):
            rows = self.rows.setdefault(request.key, {})
            for i in range(len(out)):
                # A re-rendered history recomputes positions: the last computation is the stream's.
                rows[request.start + i] = (out.risk_logits[i], out.category_logits[i])
        return results

    def evict(self, key: str) -> None:
        self.inner.evict(key)

    def take(self, key: str, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows.pop(key, {})
        missing = [p for p in positions if p not in rows]
        if missing:
            raise RuntimeError(f"the engine never computed positions {missing[:5]} of the judged message")
        if not positions:
            return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 8), dtype=np.float32)
        return (np.stack([rows[p][0] for p in positions]), np.stack([rows[p][1] for p in positions]))


def outcome_from_verdicts(verdicts: Sequence[Verdict], message_index: int, positions: Sequence[int]) -> Outcome:
    """A stream's outcome for one message: the final verdict's risk and the first flag of each level."""
    mine = [v for v in verdicts if v.message_index == message_index]
    finals = [v for v in mine if v.kind == "final"]
    if len(finals) != 1:
        raise RuntimeError(f"message {message_index}: {len(finals)} final verdicts, expected 1")
    first: dict[str, int] = {}
    for v in mine:
        if v.kind == "flag" and v.token_index is not None:
            first.setdefault(v.risk, v.token_index)
    return Outcome(finals[0].risk, first.get("unsafe"), first.get("controversial"), tuple(positions))


class SimulatedStreamRunner:
    """The streaming path: deltas through the Scorer and an engine, as a stream worker feeds them."""

    def __init__(self, scorer: Scorer, engine: StreamEngine, chunker: Chunker, labels: LabelMaps,
                 max_context_tokens: int) -> None:
        self.scorer = scorer
        self.engine = RecordingEngine(engine)
        self.simulator = Simulator(scorer, self.engine)
        self.chunker = chunker
        self.labels = labels
        self.max_context_tokens = max_context_tokens

    def run(self, sample: EvalSample) -> SampleRun:
        context = context_of(self.scorer.text, sample, self.max_context_tokens)
        # The run's --policy applies, not a tenant's: the sample is judged without its tenant.
        conversation = replace(sample.conversation, tenant=None)
        deltas = conversation_deltas(conversation, self.chunker, end=False)
        result = self.simulator.feed(conversation, deltas, 0, topic="eval")
        state, verdicts = result.state, result.verdicts
        assert state is not None
        if context is None:
            self.engine.rows.pop(state.key, None)
            return SampleRun(sample, Outcome("safe"), [], judged=False, verdicts=verdicts)
        stream = unpack(state.token_ids).tolist()
        if stream[: len(context.token_ids)] != context.token_ids:
            raise RuntimeError(f"sample {sample.sample_id}: the stream's tokens differ from the rendered context")
        outcome = outcome_from_verdicts(verdicts, sample.judged_index, context.scored_positions)
        risk_logits, category_logits = self.engine.take(state.key, context.scored_positions)
        argmax = scores = None
        if sample.role == "assistant":
            argmax, scores, _ = response_tokens(risk_logits, category_logits, self.labels)
        return SampleRun(sample, outcome, context.token_ids, argmax, scores, verdicts=verdicts)
