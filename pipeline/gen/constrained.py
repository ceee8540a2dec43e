"""Greedy decoding under the ruling grammar: every output is a well-formed ruling.

At each step the chosen token is the highest-logit token among those that keep the output a
valid prefix of a ruling (:mod:`pipeline.gen.grammar`), plus the end-of-turn tokens once the
ruling is complete. Where unconstrained greedy decoding already writes a well-formed ruling, its
argmax token is allowed at every step, so the two decodes are identical token for token.

The Safety line's per-class probabilities are read at the decision step, the step whose token
commits to a class (writes the label's first letter): a softmax over, per class, the best logit
among the allowed tokens that commit to that class. Its argmax is the class written.

Batches are left-padded; every row carries its own grammar state, so prompt and response
rulings share a batch. Only the logits of tokens that can occur in a ruling are computed (the
LM head restricted to those rows); they are the same dot products greedy decoding computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.gen.grammar import REFUSAL_OPTIONS, RISK_LABELS, SAFETY_HEAD, RulingGrammar, State
from pipeline.gen.render import ModeratedTurn
from pipeline.labels import LONG_CATEGORY_NAMES

MAX_NEW_TOKENS = 128


def _byte_decoder() -> dict[str, int]:
    # Byte-level BPE spells every byte as a printable character; printable ASCII and most of
    # Latin-1 stand for themselves, the rest are shifted past 255 in byte order.
    direct = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = 0
    table = {chr(b): b for b in direct}
    for b in range(256):
        if b not in direct:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _ruling_universe() -> str:
    """A text in which every substring of every well-formed ruling occurs (a token filter)."""
    names = (*LONG_CATEGORY_NAMES, "None")
    parts = [SAFETY_HEAD + r + "\nCategories: " + n + o for r in RISK_LABELS for n in names for o in REFUSAL_OPTIONS]
    cats = LONG_CATEGORY_NAMES
    parts += [a + ", " + b + ", " + c for a in cats for b in cats for c in cats]
    parts += [n + o for n in names for o in REFUSAL_OPTIONS]
    return "\x00".join(parts)


@dataclass(frozen=True)
class TokenTable:
    """The vocabulary tokens that can occur in a ruling, with their text, and the end tokens."""

    ids: tuple[int, ...]
    texts: tuple[str, ...]
    eos_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, eos_ids: Sequence[int]) -> TokenTable:
        decode = _byte_decoder()
        universe = _ruling_universe()
        alphabet = frozenset(universe) - {"\x00"}
        added = set(tokenizer.get_added_vocab().values())
        pairs: list[tuple[int, str]] = []
        for token, token_id in tokenizer.get_vocab().items():
            if token_id in added or not token or not alphabet.issuperset(token.replace("Ġ", " ").replace("Ċ", "\n")):
                continue
            try:
                text = bytes(decode[c] for c in token).decode("ascii")
            except (KeyError, UnicodeDecodeError):
                continue
            if text in universe:
                pairs.append((token_id, text))
        pairs.sort()
        return cls(tuple(i for i, _ in pairs), tuple(t for _, t in pairs), tuple(eos_ids))


@dataclass
class _Allowed:
    ids: list[int]
    next_states: list[State]
    commits: list[str | None]


class RulingConstraint:
    """Allowed next tokens for a grammar state (memoised: states recur across requests)."""

    def __init__(self, table: TokenTable, mode: ModeratedTurn) -> None:
        self.table = table
        self.grammar = RulingGrammar(mode)
        self.text_of = dict(zip(table.ids, table.texts, strict=True))
        self._by_text = {text: token_id for token_id, text in zip(table.ids, table.texts, strict=True)}
        self._longest = max(len(t) for t in table.texts)
        self._cache: dict[State, _Allowed] = {}
        self._needed: dict[State, int] = {}

    def tokens_needed(self, state: State) -> int:
        """Tokens that surely suffice to finish the ruling from ``state`` (greedy longest-match path)."""
        hit = self._needed.get(state)
        if hit is not None:
            return hit
        rest = self.grammar.shortest_completion(state)
        count = 0
        while rest:
            # Every single ASCII character is a token, so the match always advances.
            size = next(n for n in range(min(self._longest, len(rest)), 0, -1) if rest[:n] in self._by_text)
            rest = rest[size:]
            count += 1
        self._needed[state] = count
        return count

    def allowed(self, state: State) -> _Allowed:
        hit = self._cache.get(state)
        if hit is not None:
            return hit
        result = _Allowed([], [], [])
        for token_id, text in zip(self.table.ids, self.table.texts, strict=True):
            after = self.grammar.advance(state, text)
            if after is not None:
                result.ids.append(token_id)
                result.next_states.append(after)
                result.commits.append(self.grammar.committed_risk(after))
        self._cache[state] = result
        return result


@dataclass
class RowDecode:
    """One row's decode: the chosen tokens, the ruling text and the Safety-line probabilities."""

    constraint: RulingConstraint
    state: State
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    finished: bool = False

    def choose(self, logits: Any, remaining_after: int) -> int:
        """Pick the next token from this row's logits (1-D tensor); ``remaining_after`` steps follow."""
        import torch

        grammar = self.constraint.grammar
        allowed = self.constraint.allowed(self.state)
        # Keep only tokens after which the ruling can still be finished in the steps left, so a
        # ruling never runs out of budget half-written (the budget only binds near its end).
        needed = [self.constraint.tokens_needed(s) for s in allowed.next_states]
        keep = [k for k, n in enumerate(needed) if n <= remaining_after]
        if not keep and allowed.ids and not grammar.accepting(self.state):
            keep = [k for k, n in enumerate(needed) if n == min(needed)]
        ids = [allowed.ids[k] for k in keep]
        eos_allowed = grammar.accepting(self.state)
        candidates = ids + (list(self.constraint.table.eos_ids) if eos_allowed else [])
        if not candidates:
            raise RuntimeError(f"no admissible token in grammar state {self.state}; the token table is incomplete")
        order = sorted(range(len(candidates)), key=lambda k: candidates[k])   # ties -> lowest id, as argmax
        sorted_ids = [candidates[k] for k in order]
        values = logits[torch.tensor(sorted_ids, device=logits.device)].float()
        best = int(torch.argmax(values).item())
        chosen = sorted_ids[best]
        if chosen in self.constraint.table.eos_ids and eos_allowed:
            self.finished = True
            return chosen
        position = keep[ids.index(chosen)]
        before = grammar.committed_risk(self.state)
        after = allowed.commits[position]
        if before is None and after is not None:
            self.scores = self._class_scores(logits, [allowed.ids[k] for k in keep], [allowed.commits[k] for k in keep])
        self.state = allowed.next_states[position]
        self.token_ids.append(chosen)
        self.text += self.constraint.text_of[chosen]
        return chosen

    @staticmethod
    def _class_scores(logits: Any, ids: list[int], commits: list[str | None]) -> dict[str, float]:
        best: dict[str, float] = {}
        values = logits[ids].float().tolist() if ids else []
        for value, label in zip(values, commits, strict=True):
            if label is not None and (label not in best or value > best[label]):
                best[label] = value
        top = max(best.values())
        weights = {label: math.exp(best[label] - top) if label in best else 0.0 for label in RISK_LABELS}
        total = sum(weights.values())
        return {label.lower(): w / total for label, w in weights.items()}


@dataclass(frozen=True)
class DecodeResult:
    text: str
    token_ids: tuple[int, ...]
    scores: dict[str, float]


def constrained_generate(model: Any, prompts: Sequence[Sequence[int]], constraints: Sequence[RulingConstraint],
                         pad_token_id: int, max_new_tokens: int = MAX_NEW_TOKENS) -> list[DecodeResult]:
    """Batched greedy decoding of ``prompts`` (token ids), row i under ``constraints[i]``."""
    import torch

    device = next(model.parameters()).device
    # Only tokens that can occur in a ruling are ever chosen, so only their logits are computed:
    # the full-vocabulary LM head (151,936 rows) dominates a small model's decode step.
    head = model.get_output_embeddings().weight
    vocab = head.shape[0]
    candidate_ids = sorted({i for c in constraints for i in (*c.table.ids, *c.table.eos_ids)})
    candidates = torch.tensor(candidate_ids, dtype=torch.long, device=device)
    candidate_head = head[candidates]

    def logits_of(hidden: Any) -> Any:
        full = torch.full((hidden.shape[0], vocab), float("-inf"), dtype=torch.float32, device=device)
        full[:, candidates] = torch.nn.functional.linear(hidden[:, -1, :], candidate_head).float()
        return full

    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = [RowDecode(c, c.grammar.start()) for c in constraints]
    with torch.inference_mode():
        out = model.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        for step in range(max_new_tokens):
            logits = logits_of(out.last_hidden_state)
            next_ids = [row.choose(logits[i], max_new_tokens - step - 1) if not row.finished else pad_token_id
                        for i, row in enumerate(rows)]
            if all(row.finished for row in rows) or step == max_new_tokens - 1:
                break
            step_ids = torch.tensor(next_ids, dtype=torch.long, device=device)[:, None]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = model.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                              past_key_values=out.past_key_values, use_cache=True)
    return [DecodeResult(row.text, tuple(row.token_ids), row.scores) for row in rows]
