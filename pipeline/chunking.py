"""Splitting message text into the chunks that become TokenDeltas, the way LLM frontends stream.

Modes: ``chars`` (``size`` characters per chunk), ``tokens`` (``size`` Qwen3 tokens per chunk,
cut at the tokenizer's character offsets, as a real token stream arrives), ``random`` (chunk
lengths drawn uniformly from 1..``size`` characters; deliberately cuts through tokens and words).
Passing an ``rng`` to ``chars`` or ``tokens`` draws each chunk's length from 1..``size`` in that
unit. A Python ``str`` indexes code points, so no chunk ever splits a character; joining the
chunks always gives the text back. Empty text gives one empty chunk (a message still needs its
final delta).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pipeline.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ChunkMode = Literal["chars", "tokens", "random"]
CHUNK_MODES: tuple[ChunkMode, ...] = ("chars", "tokens", "random")


def _cut(boundaries: list[int], size: int, rng: random.Random | None) -> list[int]:
    """Every ``size``-th (or randomly spaced) entry of the candidate cut points, ending at the last."""
    cuts: list[int] = []
    i = 0
    while i < len(boundaries) - 1:
        i = min(i + (rng.randint(1, size) if rng else size), len(boundaries) - 1)
        cuts.append(boundaries[i])
    return cuts


def token_boundaries(text: str, tokenizer: Tokenizer) -> list[int]:
    """Character offsets where Qwen3 tokens end (0 first, len(text) last, strictly increasing).

    Byte-level BPE may spread one character over several tokens that share its offsets; those
    tokens collapse into one boundary since a chunk cannot hold part of a character.
    """
    encoding = tokenizer.encode(text, add_special_tokens=False)
    ends = sorted({end for _, end in encoding.offsets if 0 < end < len(text)})
    return [0, *ends, len(text)]


def chunk_text(
    text: str, mode: ChunkMode, size: int, rng: random.Random | None = None, tokenizer: Tokenizer | None = None
) -> list[str]:
    if size < 1:
        raise UserError(f"chunk size must be at least 1, got {size}")
    if not text:
        return [""]
    if mode == "tokens":
        if tokenizer is None:
            from pipeline.tokens.files import load_qwen3_tokenizer

            tokenizer = load_qwen3_tokenizer()
        boundaries = token_boundaries(text, tokenizer)
    elif mode in ("chars", "random"):
        boundaries = list(range(len(text) + 1))
        if mode == "random" and rng is None:
            rng = random.Random(0)
    else:
        raise UserError(f"chunking mode {mode!r} must be one of {', '.join(CHUNK_MODES)}")
    pieces, start = [], 0
    for end in _cut(boundaries, size, rng):
        pieces.append(text[start:end])
        start = end
    return pieces


@dataclass
class Chunker:
    """``chunk_text`` with its mode, size, random source and tokenizer bound once (loaded lazily)."""

    mode: ChunkMode = "chars"
    size: int = 4
    seed: int | None = None  # set: random sizes 1..size, reproducible (always random in mode "random")
    tokenizer: Tokenizer | None = None
    rng: random.Random | None = field(default=None, repr=False)  # given: random sizes 1..size drawn from it

    def __post_init__(self) -> None:
        if self.rng is None and (self.seed is not None or self.mode == "random"):
            self.rng = random.Random(self.seed or 0)

    def split(self, text: str) -> list[str]:
        if self.mode == "tokens" and self.tokenizer is None and text:
            from pipeline.tokens.files import load_qwen3_tokenizer

            self.tokenizer = load_qwen3_tokenizer()
        return chunk_text(text, self.mode, self.size, self.rng, self.tokenizer)
