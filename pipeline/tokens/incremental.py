"""Incremental tokenization: text deltas in, Qwen3 ids out, equal to tokenizing the whole text at once.

The Qwen3 tokenizer runs, on plain text: added-token matching (``<think>`` etc., on the raw text),
NFC normalization, a regex pre-tokenizer, then byte-level BPE within each pre-token. BPE is not
prefix-stable, so we emit only tokens that no continuation of the text can change and hold back
the unstable tail. A cut at character ``q`` of the held text is stable when:

1. no added token can match across it: no complete match spans it and no text at or before it is
   the beginning of an added token still being typed;
2. NFC cannot join across it: the character at ``q`` is a *stable starter* (combining class 0 and
   never composes with what precedes it; unassigned code points count as unstable);
3. the pre-tokenizer cannot change any piece before it: ``q`` starts a piece, and every match
   attempt that started before ``q`` read only characters that already exist. The regex's greedy
   runs (letters, digits, whitespace, other, a newline run after "other") decide how far it reads:
   the run containing ``q`` (and the newline run after an "other" run) must end before the known
   text does, and one more character must follow ``q`` (contractions read two characters ahead).
   Characters whose class may differ between Python's and the tokenizer's Unicode tables count as
   belonging to every class, which only delays emission.

Emitted tokens are therefore never retracted. Each feed costs O(held text + delta): the held tail is
usually a word or so. A very long unbroken run (e.g. CJK without punctuation) is one pre-token and
cannot be cut exactly before it ends; to keep the cost per delta bounded (and the worker safe from
text built to make it quadratic), once more than ``max_held_chars`` are held the run is cut at a
token boundary of its current tokenization, half that length before its end. Only such runs (over
4,096 characters by default) may tokenize differently from the whole text, and only near the cut.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata

import msgspec

from pipeline.tokens.text import TextTokenizer, TokenSpans

_LETTER, _NUMBER, _SPACE, _OTHER = 1, 2, 4, 8
_ANY = _LETTER | _NUMBER | _SPACE | _OTHER
# Python's str.isspace and Unicode White_Space (what the tokenizer's regex means by \s) disagree here.
_DOUBTFUL_SPACE = frozenset("\x1c\x1d\x1e\x1f\u180e")


class IncrementalState(msgspec.Struct):
    """Serializable tokenizer state: the text received but not yet emitted, and where it starts."""

    pending: str = ""
    pending_start: int = 0   # character offset of ``pending`` in the whole text fed so far


@functools.cache
def _composes_with_previous() -> frozenset[str]:
    """Characters NFC may join onto the character before them (second halves of canonical pairs)."""
    found: set[str] = set()
    for code in range(0x30000):
        mapping = unicodedata.decomposition(chr(code))
        if mapping and not mapping.startswith("<"):
            parts = mapping.split()
            if len(parts) == 2:
                found.add(chr(int(parts[1], 16)))
    found.update(chr(c) for c in range(0x1161, 0x1176))   # Hangul medial vowels (algorithmic composition)
    found.update(chr(c) for c in range(0x11A8, 0x11C3))   # Hangul final consonants
    return frozenset(found)


def is_stable_starter(char: str) -> bool:
    """NFC output before this character does not depend on it or on anything after it."""
    if char.isascii():
        return True
    if unicodedata.category(char) == "Cn" or unicodedata.combining(char):
        return False
    first = unicodedata.normalize("NFD", char)[0]
    backward = _composes_with_previous()
    return char not in backward and first not in backward and unicodedata.combining(first) == 0


def _char_class(char: str) -> int:
    if char in _DOUBTFUL_SPACE:
        return _ANY
    category = unicodedata.category(char)
    if category == "Cn":
        return _ANY
    if char.isspace():
        return _SPACE
    if category[0] == "L":
        return _LETTER
    if category[0] == "N":
        return _NUMBER
    return _OTHER


def _pieces_final_before(text: str, cut: int) -> bool:
    """Condition 3 of the module docstring for a piece start ``cut`` in normalized ``text``."""
    size = len(text)
    if cut + 1 >= size:
        return False
    cls = _char_class(text[cut])
    if cls == _ANY:
        return False
    end = cut + 1
    while end < size and _char_class(text[end]) & cls:
        end += 1
    if end >= size:
        return False
    if cls == _OTHER:
        while end < size and (text[end] in "\r\n" or _char_class(text[end]) == _ANY):
            end += 1
        if end >= size:
            return False
    return True


class IncrementalTokenizer:
    """Stateless engine over :class:`IncrementalState`; one instance serves all conversations."""

    def __init__(self, text: TextTokenizer, max_held_chars: int = 4096) -> None:
        self.text = text
        self.max_held_chars = max_held_chars
        self._added = text.matched_added_tokens
        self._added_first = frozenset(t[0] for t in self._added)
        self._pre = text.template.pre_tokenizer

    def feed(self, state: IncrementalState, delta: str) -> TokenSpans:
        """Append ``delta``; return the newly stable tokens with spans in the whole text."""
        state.pending += delta
        cut = self._stable_cut(state.pending)
        if len(state.pending) - cut > self.max_held_chars:
            cut = self._forced_cut(state.pending, cut)
        return self._emit(state, cut)

    def finish(self, state: IncrementalState) -> TokenSpans:
        """The text is complete: emit everything still held."""
        return self._emit(state, len(state.pending))

    def _forced_cut(self, raw: str, cut: int) -> int:
        """A token start about half ``max_held_chars`` before the end (see the module docstring)."""
        target = len(raw) - self.max_held_chars // 2
        for start, _ in reversed(self.text.encode_text_spans(raw).spans):
            if cut < start <= target and is_stable_starter(raw[start]):
                return start
        return cut

    def _emit(self, state: IncrementalState, cut: int) -> TokenSpans:
        if cut <= 0:
            return TokenSpans([], [])
        # Encode with the text that follows the cut: tokenizing the prefix alone would let the regex see
        # end-of-text at the cut (``\s+(?!\S)`` keeps "  " whole there but splits it before "4").
        encoded = self.text.encode_text_spans(state.pending)
        count = sum(1 for start, _ in encoded.spans if start < cut) if cut < len(state.pending) else len(encoded.ids)
        base = state.pending_start
        spans = [(base + a, base + b) for a, b in encoded.spans[:count]]
        state.pending = state.pending[cut:]
        state.pending_start += cut
        return TokenSpans(encoded.ids[:count], spans)

    def _added_token_layout(self, raw: str) -> tuple[int, int]:
        """(start of the last segment free of added tokens, end of the text safe from added tokens)."""
        segment_start, index, size = 0, 0, len(raw)
        while index < size:
            if raw[index] in self._added_first:
                rest = raw[index:]
                if any(len(t) > len(rest) and t.startswith(rest) for t in self._added):
                    return segment_start, index          # an added token may be arriving here
                matched = max((t for t in self._added if rest.startswith(t)), key=len, default=None)
                if matched is not None:
                    index += len(matched)
                    segment_start = index
                    continue
            index += 1
        return segment_start, size

    def _stable_cut(self, raw: str) -> int:
        segment_start, limit = self._added_token_layout(raw)
        region = raw[segment_start:limit]
        ascii_only = region.isascii()
        starters = range(len(region)) if ascii_only else [i for i, ch in enumerate(region) if is_stable_starter(ch)]
        # Unless an added token follows, the last cluster may still absorb combining marks: only the text
        # before it is normalized for good.
        final_end = (starters[-1] if len(starters) else 0) if limit == len(raw) else len(region)
        if ascii_only:
            normalized = region[:final_end]
            to_raw = {i: i for i in range(final_end)}
        else:
            normalized, to_raw = "", {}
            bounds = sorted({0, *(b for b in starters if b < final_end), final_end})
            for a, b in itertools.pairwise(bounds):
                to_raw[len(normalized)] = a
                normalized += unicodedata.normalize("NFC", region[a:b])
        for _, (start, _end) in reversed(self._pre.pre_tokenize_str(normalized)):
            if start > 0 and start in to_raw and _pieces_final_before(normalized, start):
                return segment_start + to_raw[start]
        return segment_start
