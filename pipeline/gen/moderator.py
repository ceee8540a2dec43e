"""Batched Gen rulings: fit to context, render through the template, constrained decode, parse."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.gen.checkpoint import GenModel
from pipeline.gen.constrained import MAX_NEW_TOKENS, RulingConstraint, TokenTable, constrained_generate
from pipeline.gen.long_text import fit_to_context
from pipeline.gen.parse import ParseError, Ruling, parse_ruling
from pipeline.gen.render import ModeratedTurn, ModerationRequest


@dataclass(frozen=True)
class GenRuling:
    ruling: Ruling
    scores: dict[str, float]        # softmax over the Safety classes at the decision step
    text: str                       # the ruling as written
    truncated_tokens: int           # tokens elided by the long-message policy (0: whole text)


class GenModerator:
    def __init__(self, gen: GenModel, *, context_tokens: int, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        self.gen = gen
        self.max_new_tokens = max_new_tokens
        self.context_tokens = min(context_tokens, gen.max_position_embeddings)
        table = TokenTable.from_tokenizer(gen.tokenizer, gen.eos_token_ids)
        modes: tuple[ModeratedTurn, ...] = ("prompt", "response")
        self._constraints: dict[ModeratedTurn, RulingConstraint] = {m: RulingConstraint(table, m) for m in modes}

    @property
    def prompt_budget(self) -> int:
        return self.context_tokens - self.max_new_tokens

    def rule(self, requests: Sequence[ModerationRequest]) -> list[GenRuling]:
        """One ruling per request, in order; a single batched decode."""
        if not requests:
            return []
        fitted = [fit_to_context(self.gen.tokenizer, r, self.prompt_budget) for r in requests]
        decoded = constrained_generate(
            self.gen.model, [f.token_ids for f in fitted], [self._constraints[r.mode] for r in requests],
            pad_token_id=self.gen.pad_token_id, max_new_tokens=self.max_new_tokens,
        )
        rulings: list[GenRuling] = []
        for request, fit, result in zip(requests, fitted, decoded, strict=True):
            parsed = parse_ruling(result.text, request.mode)
            if isinstance(parsed, ParseError):
                # The grammar admits only parseable text; reaching this is a bug in one of the two.
                raise RuntimeError(f"constrained decode wrote an unparseable ruling: {parsed.reason}: {result.text!r}")
            truncated = fit.truncated_tokens + self._draft_elided_tokens(request)
            rulings.append(GenRuling(parsed, result.scores, result.text, truncated))
        return rulings

    def _draft_elided_tokens(self, request: ModerationRequest) -> int:
        """Tokens of the text the worker's draft limit cut before the ruling: an estimate.

        That text is gone (keeping it is what the limit prevents), so its tokens are estimated
        from the tokens per character of the text that was kept (docs/generative.md).
        """
        if not request.elided_chars:
            return 0
        kept = "".join(t.content for t in request.turns)
        tokens = len(self.gen.tokenizer(kept, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        return max(1, round(request.elided_chars * tokens / max(1, len(kept))))
