"""The Qwen3Guard decision rules (docs/model.md §5): prompt argmax, response debounce, offline and online.

Prompt: argmax of the query risk head at the user's ``<|im_end|>``; ``token_index`` 0.

Response (official eval_stream.py rule) over the per-token argmax labels: Unsafe if two consecutive
tokens are Unsafe anywhere; else Controversial if two consecutive tokens are Controversial; else
Safe. Mixed Unsafe/Controversial pairs do not trigger. The deciding token is the second of the first
such pair; the category is that token's category.

Our definitions where the official rule says nothing:
- Safe response: ``token_index`` = its last scored token, ``scores`` = that token's softmax,
  ``category`` None.
- Empty response (no scored tokens): Safe, ``token_index`` None, ``scores`` empty.
- ``scores`` are softmax probabilities rounded to :data:`SCORE_DIGITS` decimals, so that float
  noise between engines and batchings does not change a verdict's content.

:class:`ResponseDebouncer` is the online form: fed one scored token at a time, it reports a flag at
the first debounced pair and an escalation when an Unsafe pair follows a Controversial flag; its
:meth:`ResponseDebouncer.decision` at the end equals :func:`decide_response` on the same tokens.

:class:`ThresholdRule` is a tenant's optional layer on top (docs/eval.md, "Per-tenant thresholds"):
probability thresholds that relabel each token before the debounce, and the debounce length. The
default rule is the official one exactly (argmax labels, pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np

from pipeline.labels import LabelMaps, long_category, risk_name
from schemas.messages import Risk

SCORE_DIGITS = 4


@dataclass(frozen=True)
class Decision:
    risk: Risk
    category: str | None            # long name; None when safe
    token_index: int | None         # among the message's scored tokens
    scores: dict[str, float]        # softmax per risk level (lowercase names) at the deciding token
    token_labels: list[str] = field(default_factory=list)  # per scored token argmax risk


@dataclass(frozen=True)
class TokenJudgement:
    """One scored token: argmax risk (lowercase), argmax category (long name), risk softmax."""

    risk: Risk
    category: str
    scores: dict[str, float]


def softmax_scores(logits: np.ndarray, risk_labels: Sequence[str]) -> dict[str, float]:
    row = np.asarray(logits, dtype=np.float64)
    exp = np.exp(row - row.max())
    probs = exp / exp.sum()
    return {risk_name(label): round(float(p), SCORE_DIGITS) for label, p in zip(risk_labels, probs, strict=True)}


def _as_risk(label: str) -> Risk:
    name = risk_name(label)
    if name not in ("safe", "controversial", "unsafe"):
        raise ValueError(f"risk label {label!r} is not Safe, Unsafe or Controversial")
    return name  # type: ignore[return-value]


def judge_tokens(
    risk_logits: np.ndarray, category_logits: np.ndarray, risk_labels: Sequence[str], category_labels: Sequence[str],
) -> list[TokenJudgement]:
    """Per-row argmax risk and category plus the risk softmax."""
    risk_logits = np.asarray(risk_logits)
    category_logits = np.asarray(category_logits)
    if risk_logits.shape[0] != category_logits.shape[0]:
        raise ValueError(f"risk and category logits disagree on rows: {risk_logits.shape} vs {category_logits.shape}")
    risks = risk_logits.argmax(axis=-1) if len(risk_logits) else []
    categories = category_logits.argmax(axis=-1) if len(category_logits) else []
    return [
        TokenJudgement(
            _as_risk(risk_labels[int(r)]), long_category(category_labels[int(c)]),
            softmax_scores(risk_logits[i], risk_labels),
        )
        for i, (r, c) in enumerate(zip(risks, categories, strict=True))
    ]


def decide_prompt(query_risk_logits: np.ndarray, query_category_logits: np.ndarray, labels: LabelMaps) -> Decision:
    """The prompt verdict from the query heads at ``<|im_end|>`` (one row; more rows: the last is used)."""
    judged = judge_tokens(np.atleast_2d(query_risk_logits)[-1:], np.atleast_2d(query_category_logits)[-1:],
                          labels.query_risk, labels.query_category)[0]
    return Decision(
        risk=judged.risk, category=None if judged.risk == "safe" else judged.category,
        token_index=0, scores=judged.scores, token_labels=[judged.risk],
    )


class ThresholdRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-token relabelling by probability thresholds, then a debounce of ``debounce_tokens`` tokens.

    A token is ``unsafe`` when P(unsafe) >= ``unsafe_threshold`` (unset: its argmax is Unsafe); else
    ``controversial`` when P(unsafe) + P(controversial) >= ``risky_threshold`` (unset: its argmax is
    not Safe); else ``safe``. Probabilities are the verdicts' softmax at :data:`SCORE_DIGITS`
    decimals (the sum is rounded too), so a verdict's ``scores`` show exactly what was compared and
    float noise between engines cannot move a token across a threshold. A response is decided by
    ``debounce_tokens`` consecutive tokens of one level (Unsafe run anywhere, else Controversial
    run); the deciding token is the last of the first such run. Both thresholds unset and a
    debounce of 2 is the official rule.
    """

    unsafe_threshold: float | None = None
    risky_threshold: float | None = None
    debounce_tokens: int = 2

    def __post_init__(self) -> None:
        for name in ("unsafe_threshold", "risky_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if not 1 <= self.debounce_tokens <= 1024:
            raise ValueError(f"debounce_tokens must be 1 to 1024, got {self.debounce_tokens}")

    @property
    def relabels(self) -> bool:
        return self.unsafe_threshold is not None or self.risky_threshold is not None

    def label(self, judged: TokenJudgement) -> TokenJudgement:
        """The token as this rule sees it (category and scores unchanged)."""
        if not self.relabels:
            return judged
        p_unsafe = judged.scores.get("unsafe", 0.0)
        p_risky = round(p_unsafe + judged.scores.get("controversial", 0.0), SCORE_DIGITS)
        unsafe = judged.risk == "unsafe" if self.unsafe_threshold is None else p_unsafe >= self.unsafe_threshold
        if unsafe:
            risk: Risk = "unsafe"
        elif (judged.risk != "safe") if self.risky_threshold is None else p_risky >= self.risky_threshold:
            risk = "controversial"
        else:
            risk = "safe"
        return judged if risk == judged.risk else TokenJudgement(risk, judged.category, judged.scores)


OFFICIAL_RULE = ThresholdRule()


class PairEvent(msgspec.Struct, frozen=True):
    """A debounced pair: the level it reached and its deciding (second) token."""

    risk: Risk
    category: str
    token_index: int
    scores: dict[str, float]


class ResponseDebouncer(msgspec.Struct):
    """Online debounce over a response's scored tokens; serializable (msgspec) for durable state."""

    count: int = 0
    previous: Risk | None = None
    first_unsafe: PairEvent | None = None
    first_controversial: PairEvent | None = None
    last_scores: dict[str, float] | None = None
    run: int = 0   # consecutive tokens labelled ``previous`` (0 in states saved before it was kept)

    def push(self, judged: TokenJudgement, rule: ThresholdRule = OFFICIAL_RULE) -> PairEvent | None:
        """Add the next scored token; return the flag it raises (first run, or escalation), if any."""
        judged = rule.label(judged)
        index = self.count
        self.count += 1
        self.last_scores = judged.scores
        # A state saved before ``run`` existed has run 0 with a previous label: that label is a run of 1.
        self.run = max(self.run, 1) + 1 if judged.risk == self.previous else 1
        paired = judged.risk != "safe" and self.run >= rule.debounce_tokens
        self.previous = judged.risk
        if not paired or self.first_unsafe is not None:
            return None
        event = PairEvent(judged.risk, judged.category, index, judged.scores)
        if judged.risk == "unsafe":
            self.first_unsafe = event
            return event
        if self.first_controversial is None:
            self.first_controversial = event
            return event
        return None

    def decision(self, token_labels: Sequence[str] = ()) -> Decision:
        """The end-of-message verdict (equal to :func:`decide_response` on the same tokens)."""
        event = self.first_unsafe or self.first_controversial
        if event is not None:
            return Decision(event.risk, event.category, event.token_index, dict(event.scores), list(token_labels))
        if self.count == 0:
            return Decision("safe", None, None, {}, list(token_labels))
        return Decision("safe", None, self.count - 1, dict(self.last_scores or {}), list(token_labels))


def decide_response(risk_logits: np.ndarray, category_logits: np.ndarray, labels: LabelMaps,
                    rule: ThresholdRule = OFFICIAL_RULE) -> Decision:
    """The response verdict over all scored tokens of an assistant message (official debounce rule,
    or a tenant's :class:`ThresholdRule`); ``token_labels`` stay the argmax labels."""
    judged = judge_tokens(risk_logits, category_logits, labels.response_risk, labels.response_category)
    debouncer = ResponseDebouncer()
    for token in judged:
        debouncer.push(token, rule)
    return debouncer.decision([t.risk for t in judged])
