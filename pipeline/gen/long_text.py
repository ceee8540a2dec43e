"""What Gen sees when a conversation is longer than its context: the middle of long texts elided.

Policy (documented in docs/generative.md): the rendered prompt plus the ruling budget
(max_new_tokens) must fit ``context_tokens``. When it does not, the longest message texts are cut
down to a common length (water-filling: the shortest texts stay whole), each keeping its head
and its tail (half each) joined by an elision marker, since harmful content is as likely at
the end as at the start and both ends carry the framing. The ruling then reports how many
tokens were elided (``Verdict.truncated_tokens``) so a consumer knows it judged a shortened text.
Gen is not trained on truncated text (QwenLM/Qwen3Guard#17): this is a last resort, not a mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.gen.render import ModerationRequest, Turn, render_ids

ELISION = "\n[... {n} tokens elided ...]\n"


@dataclass(frozen=True)
class FittedRequest:
    request: ModerationRequest
    token_ids: list[int]
    truncated_tokens: int


class ContextTooSmall(ValueError):
    """Even with every message text elided, the instruction alone does not fit the context."""


def fit_to_context(tokenizer: Any, request: ModerationRequest, budget_tokens: int,
                   render: Callable[[Any, tuple[Turn, ...]], list[int]] = render_ids) -> FittedRequest:
    """Render ``request``; if longer than ``budget_tokens``, elide the middle of the longest texts."""
    ids = render(tokenizer, request.turns)
    if len(ids) <= budget_tokens:
        return FittedRequest(request, ids, 0)
    lengths = [len(tokenizer(t.content, add_special_tokens=False, split_special_tokens=True)["input_ids"])
               for t in request.turns]
    overhead = len(ids) - sum(lengths)
    marker_cost = len(tokenizer(ELISION.format(n=10**6), add_special_tokens=False)["input_ids"])
    room = budget_tokens - overhead - marker_cost * len(request.turns)
    # Re-tokenizing the joined text can differ by a few tokens at the seams: shrink until it fits.
    while room > 0:
        cap = _water_level(lengths, room)
        turns, elided = _elide(tokenizer, request.turns, cap)
        ids = render(tokenizer, turns)
        if len(ids) <= budget_tokens:
            return FittedRequest(ModerationRequest(turns), ids, elided)
        room -= max(8, len(ids) - budget_tokens)
    raise ContextTooSmall(f"the Gen instruction alone needs about {overhead} tokens, more than the "
                          f"{budget_tokens}-token budget; raise --max-context-tokens")


def _water_level(lengths: list[int], room: int) -> int:
    """Largest cap with sum(min(length, cap)) <= room."""
    low, high = 0, max(lengths)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(n, mid) for n in lengths) <= room:
            low = mid
        else:
            high = mid - 1
    return low


def _elide(tokenizer: Any, turns: tuple[Turn, ...], cap: int) -> tuple[tuple[Turn, ...], int]:
    out: list[Turn] = []
    elided = 0
    for turn in turns:
        tokens = tokenizer(turn.content, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if len(tokens) <= cap:
            out.append(turn)
            continue
        head, tail = cap - cap // 2, cap // 2
        cut = len(tokens) - head - tail
        text = (tokenizer.decode(tokens[:head]) + ELISION.format(n=cut)
                + (tokenizer.decode(tokens[len(tokens) - tail:]) if tail else ""))
        out.append(Turn(turn.role, text))
        elided += cut
    return tuple(out), elided
