"""The judge stage: the decision rule (docs/model.md, "Decision rule") over the engine's scores.

Input: the engine's :class:`HeadOutputs` and the render stage's :class:`Taken` (which rows are
scored tokens of which message). Output: the verdicts due (through :mod:`pipeline.scoring.verdicts`).
It writes the judge fields of each :class:`MessageScoring` (the debounce, the prompt decision).

Prompt (user message): argmax of the query heads at its ``<|im_end|>``. Response (assistant
message): the debounce over per-token argmax labels, fed online: ``flag`` at the first debounced
pair and at an escalation to unsafe, ``progress`` every ``progress_every_tokens`` scored tokens
while nothing blocking was flagged, ``final`` at the message's end.

Vectorised over the micro-batch (:meth:`Judge.argmax_batch`): one argmax per head and one float64
softmax over every row of the batch; the per-token debounce then runs on small integers, and dicts
and objects are built only where a verdict or the durable debounce needs them: the scores at a
debounced pair and those of a slice's last token (the debounce keeps them for a safe final). No
object or dict per token. Exactness: the argmax of the float32 logits is the argmax of their
softmax, so the labels are the reference's (:func:`pipeline.decision.judge_tokens`); the softmax is
the reference's float64 arithmetic row by row (:func:`pipeline.decision.softmax_scores`; pinned bit
for bit by tests/scoring/test_judge.py). A tenant rule with probability thresholds needs every
token's probabilities: it takes the reference path token by token
(:meth:`pipeline.decision.ResponseDebouncer.push`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.decision import SCORE_DIGITS, PairEvent, decide_prompt, judge_tokens, softmax_scores
from pipeline.engine.types import HeadOutputs
from pipeline.labels import LabelMaps, long_category, risk_name
from pipeline.policy import PolicyBook, TenantPolicy
from pipeline.scoring.render import ScoredRows, Taken
from pipeline.scoring.state import ConversationState
from pipeline.scoring.verdicts import cleared_through, message_final, message_flag, message_progress
from schemas.messages import Risk, Verdict

_SAFE, _UNSAFE, _CONTROVERSIAL = 0, 1, 2       # codes of MessageScoring.labels
_CODES: dict[str, int] = {"safe": _SAFE, "unsafe": _UNSAFE, "controversial": _CONTROVERSIAL}
_NAMES: tuple[Risk, Risk, Risk] = ("safe", "unsafe", "controversial")
_NO_LABEL = -1


@dataclass(frozen=True, slots=True)
class SliceLabels:
    """The argmax labels of one slice of scored assistant rows, and the last row's risk softmax."""

    risk: list[int]                  # index into the risk labels, per row
    category: list[int]              # index into the category labels, per row
    last_scores: dict[str, float]    # what the debounce keeps for a safe final


class Judge:
    def __init__(
        self, labels: LabelMaps, policies: PolicyBook, model_name: str, *, progress_every_tokens: int = 16,
        include_token_labels: bool = False,
    ) -> None:
        self.labels = labels
        self.policies = policies
        self.model_name = model_name
        self.progress_every_tokens = progress_every_tokens
        self.include_token_labels = include_token_labels
        # Risk label index -> code; a label that is not a risk level fails when a token gets it.
        self._code_of = [_CODES.get(risk_name(label), _NO_LABEL) for label in labels.response_risk]
        self._score_names = [risk_name(label) for label in labels.response_risk]

    def argmax_batch(self, answers: Sequence[tuple[HeadOutputs, Taken]]) -> list[list[SliceLabels | None]]:
        """Labels for every scored assistant row of the micro-batch: one argmax per head and one
        softmax for the whole batch.

        One list per answer, one entry per slice of it (None for user slices). Raises ValueError
        when the answers do not stack (heads of different widths).
        """
        if not answers:
            return []
        offsets: list[int] = []
        at = 0
        for outputs, _ in answers:
            offsets.append(at)
            at += outputs.risk_logits.shape[0]
        risk_logits = np.concatenate([outputs.risk_logits for outputs, _ in answers])
        risk = risk_logits.argmax(axis=-1).tolist()
        category = np.concatenate([outputs.category_logits for outputs, _ in answers]).argmax(axis=-1).tolist()
        # The same float64 arithmetic as pipeline.decision.softmax_scores, for every row at once;
        # only each slice's last row becomes a dict (what the debounce keeps for a safe final).
        wide = np.asarray(risk_logits, dtype=np.float64)
        exp = np.exp(wide - wide.max(axis=-1, keepdims=True))
        probs = (exp / exp.sum(axis=-1, keepdims=True)).tolist()
        names = self._score_names
        out: list[list[SliceLabels | None]] = []
        for (_, taken), offset in zip(answers, offsets, strict=True):
            per: list[SliceLabels | None] = []
            for scored in taken.scored:
                if scored.record.role == "user":
                    per.append(None)
                    continue
                rows = scored.rows
                first, last = offset + rows[0], offset + rows[-1]
                if last - first + 1 == len(rows):     # contiguous: the usual case
                    risks, categories = risk[first:last + 1], category[first:last + 1]
                else:
                    risks = [risk[offset + row] for row in rows]
                    categories = [category[offset + row] for row in rows]
                scores = {name: round(p, SCORE_DIGITS) for name, p in zip(names, probs[last], strict=True)}
                per.append(SliceLabels(risks, categories, scores))
            out.append(per)
        return out

    def judge(
        self, state: ConversationState, outputs: HeadOutputs, taken: Taken, now_ms: int,
        labels: Sequence[SliceLabels | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for one conversation's answer, in message order; finals after the rest.

        ``labels``: this answer's entry of :meth:`argmax_batch` (computed here when not given).
        """
        policy = self.policies.for_tenant(state.tenant)
        verdicts: list[Verdict] = []
        for i, scored in enumerate(taken.scored):
            if scored.record.role == "user":
                self._prompt(scored, outputs)
            elif policy.rule.relabels:
                self._response_by_token(state, scored, outputs, policy, now_ms, verdicts)
            else:
                if labels is None:
                    labels = self.argmax_batch([(outputs, taken)])[0]
                mine = labels[i]
                assert mine is not None
                self._response(state, scored, outputs, mine, policy, now_ms, verdicts)
        for record in taken.finished:
            verdicts.append(message_final(state, record, policy, self.model_name, now_ms, self.include_token_labels))
        return verdicts

    def _prompt(self, scored: ScoredRows, outputs: HeadOutputs) -> None:
        record, rows = scored.record, scored.rows
        decision = decide_prompt(outputs.query_risk_logits[rows[-1:]], outputs.query_category_logits[rows[-1:]],
                                 self.labels)
        record.prompt = decision.risk
        record.prompt_category = decision.category
        record.prompt_scores = decision.scores
        record.last_span = (scored.spans[-2], scored.spans[-1])
        record.done += 1

    def _response(
        self, state: ConversationState, scored: ScoredRows, outputs: HeadOutputs, labels: SliceLabels,
        policy: TenantPolicy, now_ms: int, verdicts: list[Verdict],
    ) -> None:
        """The official rule (argmax labels, a run of ``debounce_tokens``) on integer labels."""
        record, spans = scored.record, scored.spans
        code_of = self._code_of
        codes = [code_of[r] for r in labels.risk]
        if _NO_LABEL in codes:
            bad = self.labels.response_risk[labels.risk[codes.index(_NO_LABEL)]]
            raise ValueError(f"risk label {bad!r} is not Safe, Unsafe or Controversial")
        if self.include_token_labels:
            record.labels += bytes(codes)
        debouncer = record.debouncer
        needed = policy.rule.debounce_tokens
        every = self.progress_every_tokens
        previous = _CODES[debouncer.previous] if debouncer.previous is not None else _NO_LABEL
        run, count, done = debouncer.run, debouncer.count, record.done
        for i, code in enumerate(codes):
            index = done
            done += 1
            # A state saved before ``run`` existed has run 0 with a previous label: a run of 1.
            run = max(run, 1) + 1 if code == previous else 1
            previous = code
            if (code != _SAFE and run >= needed and debouncer.first_unsafe is None
                    and (code == _UNSAFE or debouncer.first_controversial is None)):
                event = PairEvent(_NAMES[code], long_category(self.labels.response_category[labels.category[i]]),
                                  count, softmax_scores(outputs.risk_logits[scored.rows[i]], self.labels.response_risk))
                if code == _UNSAFE:
                    debouncer.first_unsafe = event
                else:
                    debouncer.first_controversial = event
                span = (spans[2 * i], spans[2 * i + 1])
                record.event_spans[index] = span
                verdicts.append(message_flag(state, record, event, span, policy, self.model_name, now_ms))
                if policy.action(event.risk, event.category) == "block":
                    record.blocked = True
            count += 1
            if every > 0 and (index + 1) % every == 0 and not record.blocked:
                cleared = cleared_through(record, spans[2 * i + 1])
                if cleared >= 0:
                    verdicts.append(message_progress(state, record, index, cleared, self.model_name, now_ms))
        last = len(codes) - 1
        debouncer.count, debouncer.run, debouncer.previous = count, run, _NAMES[previous]
        debouncer.last_scores = labels.last_scores
        record.done = done
        record.last_span = (spans[2 * last], spans[2 * last + 1])

    def _response_by_token(
        self, state: ConversationState, scored: ScoredRows, outputs: HeadOutputs, policy: TenantPolicy,
        now_ms: int, verdicts: list[Verdict],
    ) -> None:
        """A tenant's threshold rule relabels tokens by their probabilities: the reference, token by token."""
        record, spans = scored.record, scored.spans
        judged = judge_tokens(outputs.risk_logits[scored.rows], outputs.category_logits[scored.rows],
                              self.labels.response_risk, self.labels.response_category)
        every = self.progress_every_tokens
        for i, token in enumerate(judged):
            span = (spans[2 * i], spans[2 * i + 1])
            index = record.done
            record.done += 1
            record.last_span = span
            if self.include_token_labels:
                record.labels += bytes([_CODES[token.risk]])
            event = record.debouncer.push(token, policy.rule)
            if event is not None:
                record.event_spans[index] = span
                verdicts.append(message_flag(state, record, event, span, policy, self.model_name, now_ms))
                if policy.action(event.risk, event.category) == "block":
                    record.blocked = True
            if every > 0 and (index + 1) % every == 0 and not record.blocked:
                cleared = cleared_through(record, span[1])
                if cleared >= 0:
                    verdicts.append(message_progress(state, record, index, cleared, self.model_name, now_ms))
