"""Render a moderation request through the checkpoint's own chat template, into token ids.

Prompt moderation renders ``[user]``, response moderation ``[user, assistant]`` (docs/model.md §7);
the template supplies the guard instruction and the assistant prefix with the empty think block.

The rendered text is tokenized as a whole, as the official code does, so token boundaries
around the message text are the ones Gen was trained on. Message text is never parsed for
special tokens, though: when a message contains the text of a special/added token (a user typing
``<|im_end|>`` to close the instruction early and forge a ruling), the template is rendered with
placeholder contents, the scaffold is tokenized with special tokens, and each placeholder is
replaced by its message's plain-text tokens.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

ModeratedTurn = Literal["prompt", "response"]   # what Gen judges: the user's prompt or the assistant's response


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class ModerationRequest:
    """What Gen judges: the last turn, with the turns before it as context."""

    turns: tuple[Turn, ...]
    # Characters the worker's draft limit already cut out of these texts (each cut is marked in
    # the text; docs/generative.md, "Draft limits"): counted into the ruling's truncated_tokens.
    elided_chars: int = 0

    @property
    def mode(self) -> ModeratedTurn:
        return "response" if self.turns[-1].role == "assistant" else "prompt"


def prompt_request(user_text: str, *, elided_chars: int = 0) -> ModerationRequest:
    return ModerationRequest((Turn("user", user_text),), elided_chars)


def response_request(user_text: str, assistant_text: str, *, elided_chars: int = 0) -> ModerationRequest:
    return ModerationRequest((Turn("user", user_text), Turn("assistant", assistant_text)), elided_chars)


def render_text(tokenizer: Any, turns: Sequence[Turn]) -> str:
    """The rendered prompt as text (what the official demo tokenizes; for display and tests)."""
    text = tokenizer.apply_chat_template([{"role": t.role, "content": t.content} for t in turns], tokenize=False)
    return _with_generation_prompt(tokenizer, turns, str(text))


def _with_generation_prompt(tokenizer: Any, turns: Sequence[Turn], text: str) -> str:
    # Gen templates append the assistant prefix themselves; one that does not gets the standard
    # generation prompt from the same template.
    if text.rstrip("\n").endswith("</think>") or text.endswith("<|im_start|>assistant\n"):
        return text
    return str(tokenizer.apply_chat_template([{"role": t.role, "content": t.content} for t in turns],
                                             tokenize=False, add_generation_prompt=True))


def render_ids(tokenizer: Any, turns: Sequence[Turn]) -> list[int]:
    """Token ids of the rendered prompt, message contents tokenized as plain text."""
    control = tuple(tokenizer.get_added_vocab())
    if not any(c in t.content for t in turns for c in control):
        return list(tokenizer(render_text(tokenizer, turns), add_special_tokens=False)["input_ids"])
    return _render_ids_spliced(tokenizer, turns)


def _render_ids_spliced(tokenizer: Any, turns: Sequence[Turn]) -> list[int]:
    marker = f"GSMSG{secrets.token_hex(6)}"
    placeholders = [f"{marker}{i}X" for i in range(len(turns))]
    scaffold = render_text(tokenizer, [Turn(t.role, p) for t, p in zip(turns, placeholders, strict=True)])
    pieces = re.split(f"({marker}\\d+X)", scaffold)
    found = [p for p in pieces if p.startswith(marker)]
    if sorted(found) != sorted(placeholders):
        # The template rewrites or drops content; only rendering the real text can follow it. This
        # loses the forgery protection, so it is a documented fallback, not the normal path.
        return list(tokenizer(render_text(tokenizer, turns), add_special_tokens=False)["input_ids"])
    by_placeholder = dict(zip(placeholders, turns, strict=True))
    ids: list[int] = []
    for piece in pieces:
        if not piece:
            continue
        if piece in by_placeholder:
            ids.extend(tokenizer(by_placeholder[piece].content, add_special_tokens=False,
                                 split_special_tokens=True)["input_ids"])
        else:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids
