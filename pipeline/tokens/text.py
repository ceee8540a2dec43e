"""Two ways of tokenizing with the Qwen3 tokenizer: template pieces and message text.

Template pieces (``<|im_start|>user\\n``, ``<|im_end|>\\n``, the think block) are tokenized with
special tokens parsed. Message text is tokenized as plain text: special tokens (``special: true``
in tokenizer.json, e.g. ``<|im_end|>``) stay ordinary text, so a user cannot forge a turn boundary;
non-special added tokens (``<think>``, ``<tool_call>``, ...) are still matched, as the official
tokenizer matches them. The ``tokenizers`` library does exactly this with ``encode_special_tokens``
set, which we set on a private copy so the caller's tokenizer is never mutated.

Build one :class:`TextTokenizer` per process and pass it around: the copy costs about half a second.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenSpans:
    """Token ids with the [start, end) character span of each token in the text that was encoded."""

    ids: list[int]
    spans: list[tuple[int, int]]


class TextTokenizer:
    """The Qwen3 tokenizer split into its template and plain-text uses (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.template = tokenizer
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True
        self._pre = tokenizer.pre_tokenizer
        added = json.loads(tokenizer.to_str()).get("added_tokens", [])
        # Non-special added tokens are matched inside message text; their strings matter to the
        # incremental tokenizer, which must not cut text in the middle of one.
        self.matched_added_tokens: tuple[str, ...] = tuple(
            sorted(t["content"] for t in added if not t.get("special", False))
        )
        self.special_tokens: tuple[str, ...] = tuple(sorted(t["content"] for t in added if t.get("special", False)))

    @classmethod
    def of(cls, tokenizer: Tokenizer | TextTokenizer) -> TextTokenizer:
        return tokenizer if isinstance(tokenizer, TextTokenizer) else cls(tokenizer)

    def encode_template(self, piece: str) -> list[int]:
        """A template piece, special tokens parsed."""
        return list(self.template.encode(piece, add_special_tokens=False).ids)

    def encode_text(self, text: str) -> list[int]:
        """Message text as plain text (special tokens stay text)."""
        if not text:
            return []
        return list(self._plain.encode(text, add_special_tokens=False).ids)

    def encode_text_spans(self, text: str) -> TokenSpans:
        if not text:
            return TokenSpans([], [])
        encoding = self._plain.encode(text, add_special_tokens=False)
        return TokenSpans(list(encoding.ids), [(int(a), int(b)) for a, b in encoding.offsets])

    def pre_tokenize(self, normalized: str) -> list[tuple[str, tuple[int, int]]]:
        """The pre-tokenizer's pieces of already normalized text, with their character spans."""
        return list(self._pre.pre_tokenize_str(normalized))

    def tokenize_piece(self, piece: str) -> list[tuple[int, int]]:
        """BPE of one piece as :meth:`pre_tokenize` returns it: (id, bytes of the text it covers) per token."""
        return [(int(t.id), len(t.value)) for t in self._plain.model.tokenize(piece)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._plain.decode(list(ids), skip_special_tokens=False))

    def token_id(self, token: str) -> int:
        found = self.template.token_to_id(token)
        if found is None:
            raise ValueError(f"the tokenizer has no token {token!r}: is this the Qwen3 tokenizer?")
        return int(found)
