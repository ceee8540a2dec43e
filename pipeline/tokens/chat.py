"""guardstream's token stream: a conversation rendered as the Qwen3 chat template renders it (docs/model.md §4).

Each message is ``<|im_start|>{role}\\n`` + body + ``<|im_end|>\\n``. Template pieces are tokenized
with special tokens parsed; message text (content, reasoning) is tokenized separately as plain
text (see :mod:`pipeline.tokens.text`), so a literal ``<|im_end|>`` typed by a user stays text.

Body of an assistant message, as the template decides it for the context ``messages[:index+1]``:

- with a think block when it comes after the last user message and is either the last message or
  has reasoning: ``<think>\\n{reasoning.strip("\\n")}\\n</think>\\n\\n{content.lstrip("\\n")}``; with no
  (or only-newline) reasoning the block is the single piece ``<think>\\n\\n</think>\\n\\n``;
- otherwise just ``{content}`` (earlier turns lose the empty think block: history re-render).

Scored positions of the last message: the ``<|im_end|>`` of a user message; the reasoning and content
tokens of an assistant message; none for a system message (context only).

Where this differs from tokenizing the whole rendered string (the official demo): at piece
boundaries (content that starts with a newline or space merges with the template's newline there)
and on injected control text. Content is never re-parsed for ``<think>``/``</think>``: thinking text
arrives as ``reasoning``. Differences from the template: ``last_query_index`` is simply the last
user message (the template's tool-response exception does not apply: there are no tool roles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from pipeline.conversations import Message
from pipeline.tokens.text import TextTokenizer

IM_END = "<|im_end|>"
END_PIECE = "<|im_end|>\n"
EMPTY_THINK_PIECE = "<think>\n\n</think>\n\n"
THINK_OPEN_PIECE = "<think>\n"
THINK_CLOSE_PIECE = "\n</think>\n\n"


def header_piece(role: str) -> str:
    return f"<|im_start|>{role}\n"


@dataclass(frozen=True)
class RenderedContext:
    token_ids: list[int]
    scored_positions: list[int]


def renders_think_block(roles: Sequence[str], index: int, has_reasoning: bool) -> bool:
    """Whether the template gives assistant message ``index`` a think block in the context ``roles``.

    ``roles`` is the whole context (``messages[:n]``); ``has_reasoning`` is the raw reasoning being
    a non-empty string (the template's truthiness test, before stripping newlines).
    """
    users = [i for i, role in enumerate(roles) if role == "user"]
    last_query = users[-1] if users else len(roles) - 1
    return index > last_query and (index == len(roles) - 1 or has_reasoning)


@dataclass(frozen=True)
class MessageIds:
    """One rendered message: its token ids, and which of them are scored (offsets into ``ids``)."""

    ids: list[int]
    scored: list[int]


def assemble_message(
    text: TextTokenizer, role: str, content_ids: Sequence[int], *,
    think: bool = False, reasoning_ids: Sequence[int] = (),
) -> MessageIds:
    """Join template pieces and already-tokenized text into one message.

    ``content_ids`` must already be the tokens of ``content.lstrip("\\n")`` when ``think`` is set and of
    ``content`` otherwise; ``reasoning_ids`` those of ``reasoning.strip("\\n")`` (empty: no reasoning).
    Scored offsets follow the module docstring.
    """
    ids = text.encode_template(header_piece(role))
    scored: list[int] = []
    if role == "assistant" and think:
        if reasoning_ids:
            ids += text.encode_template(THINK_OPEN_PIECE)
            scored += range(len(ids), len(ids) + len(reasoning_ids))
            ids += reasoning_ids
            ids += text.encode_template(THINK_CLOSE_PIECE)
        else:
            ids += text.encode_template(EMPTY_THINK_PIECE)
    if role == "assistant":
        scored += range(len(ids), len(ids) + len(content_ids))
    ids += content_ids
    if role == "user":
        scored.append(len(ids))
    ids += text.encode_template(END_PIECE)
    return MessageIds(ids, scored)


def message_ids(text: TextTokenizer, roles: Sequence[str], message: Message, index: int) -> MessageIds:
    """Message ``index`` rendered in the context whose roles are ``roles``."""
    think = message.role == "assistant" and renders_think_block(roles, index, bool(message.reasoning))
    content = message.content.lstrip("\n") if think else message.content
    reasoning = (message.reasoning or "").strip("\n") if think else ""
    return assemble_message(
        text, message.role, text.encode_text(content), think=think, reasoning_ids=text.encode_text(reasoning),
    )


def render_context(tokenizer: Tokenizer | TextTokenizer, messages: Sequence[Message], index: int) -> RenderedContext:
    """The token stream of ``messages[:index+1]`` and the scored positions of message ``index``.

    Pass a :class:`TextTokenizer` built once when rendering many contexts: given a plain
    ``tokenizers.Tokenizer`` this builds one per call (about half a second).
    """
    if not 0 <= index < len(messages):
        raise IndexError(f"message index {index} outside a conversation of {len(messages)} messages")
    text = TextTokenizer.of(tokenizer)
    context = messages[: index + 1]
    roles = [m.role for m in context]
    token_ids: list[int] = []
    scored: list[int] = []
    for i, message in enumerate(context):
        rendered = message_ids(text, roles, message, i)
        if i == index:
            scored = [len(token_ids) + offset for offset in rendered.scored]
        token_ids += rendered.ids
    return RenderedContext(token_ids, scored)
