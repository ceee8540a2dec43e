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
   runs (letters, whitespace, other, a newline run after "other") decide how far it reads: the
   run containing ``q`` (and the newline run after an "other" run) must end before the known text
   does, and one more character must follow ``q`` (contractions read two characters ahead). A
   number character is a piece of its own and no attempt reads past one, so a cut just before a
   number is stable as soon as it is known, and so is a cut just after an ASCII digit that ends the
   text (no character composes with a digit): digit runs stream out exactly, one token per digit.
   Characters whose class may differ between Python's and the tokenizer's Unicode tables count as
   belonging to every class, which only delays emission.

Emitted tokens are therefore never retracted. See docs/token-stream.md for the rules in prose.

Work per delta is bounded by the delta, whatever the text (see docs/token-stream.md, "Cost"):

* a delta that only extends the run the held text ends with (more letters after letters, more
  whitespace after whitespace, ...) or brings only non-starters cannot create a stable cut, so it is
  appended without looking at the held text again;
* a delta that ends a held ASCII word emits it without the pre-tokenizer (``_word_before``);
* emitted pieces are tokenized one by one (short ones remembered), never the whole held text again;
* otherwise the held text is examined again only while the state's scan budget allows it: each
  delta earns ``SCAN_CREDIT_PER_DELTA`` plus ``SCAN_CREDIT_PER_CHAR`` per character, each
  examination spends the held text's length. Ordinary text (a held tail of a word or so) never
  runs out; text built so that nothing can be cut only delays emission, never changes a token;
* the held text is capped (forced cut). A long unbroken run (CJK without punctuation, a line of
  ``=``, megabytes of spaces or of combining marks) cannot be cut exactly before it ends: once more
  than ``max_held_chars`` are held the run is cut about half that length before its end, at a token
  boundary of the held text's own tokenization where NFC allows one (the result is then usually
  still exact), else (runs of combining marks or unassigned code points, which NFC may reorder as a
  whole) at that character, tokenizing the text before it as a text of its own. Only such runs
  (over ``max_held_chars``, 4,096 by default) may tokenize differently from the whole text, and
  only near the cut.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import msgspec

from pipeline.tokens.text import TextTokenizer, TokenSpans

MAX_HELD_CHARS = 4096
MIN_HELD_CHARS = 64             # the cap must leave room for the longest added token still being typed
SCAN_CREDIT_PER_DELTA = 64      # characters of held text a delta may have examined, plus ...
SCAN_CREDIT_PER_CHAR = 4        # ... this many per character it brings
SCAN_CREDIT_MAX = 4 * MAX_HELD_CHARS
# Pieces whose tokens are remembered (per IncrementalTokenizer), if short like the words of ordinary text:
# at most 8,192 x ~1 kB, whatever the input.
PIECE_CACHE_SIZE = 8192
PIECE_CACHE_MAX_CHARS = 32      # of byte-level text
PIECE_CACHE_MAX_TOKENS = 4

_LETTER, _NUMBER, _SPACE, _OTHER = 1, 2, 4, 8
_ANY = _LETTER | _NUMBER | _SPACE | _OTHER
_NEWLINES_ONLY = 16             # tail flag: the held whitespace run is only "\r"/"\n" (see _tail_kind)
_EXAMINED = 32                  # tail flag: the held text has no stable cut and no added token is being typed
_ONE_WORD = 64                  # tail flag: the held text is one ASCII word piece (see _word_before)
_RUN_BITS = _ANY | _NEWLINES_ONLY
# Python's str.isspace and Unicode White_Space (what the tokenizer's regex means by \s) disagree here.
_DOUBTFUL_SPACE = frozenset("\x1c\x1d\x1e\x1f\u180e")
_ASCII_DIGITS = frozenset("0123456789")
_ASCII_DOUBTFUL = re.compile("[\x1c-\x1f]")
# One piece of the regex, read to the end of the text: letters after at most one character that is neither
# a letter, a digit nor a newline (not an apostrophe, which may start a contraction, nor ``<``, which may
# start an added token).
_ONE_WORD_PIECE = re.compile("[^\r\nA-Za-z0-9'<\x1c-\x1f]?[A-Za-z]+")
_ASCII_SPACE = frozenset(" \t\n\x0b\x0c\r")
_ASCII_LETTERS_DIGITS_SPACE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 \t\n\x0b\x0c\r")


def _byte_level_ascii() -> dict[int, str]:
    """How the byte-level pre-tokenizer spells ASCII bytes (printable ones as themselves, others from U+0100)."""
    table, extra = {}, 0
    for byte in range(128):
        if ord("!") <= byte <= ord("~"):
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


_BYTE_LEVEL_ASCII = _byte_level_ascii()


Piece = tuple[str, tuple[int, int]]     # a pre-tokenizer piece (byte-level text) and its character span


class IncrementalState(msgspec.Struct):
    """Serializable tokenizer state: the text received but not yet emitted, and where it starts."""

    pending: str = ""
    pending_start: int = 0   # character offset of ``pending`` in the whole text fed so far
    # What deltas cannot create a stable cut (see IncrementalTokenizer._tail_kind); 0: unknown, look again.
    # Derived from ``pending``: losing it only costs one examination.
    tail: int = 0
    # Characters of held text that may still be examined before more deltas arrive (see module docstring).
    scan_credit: int = SCAN_CREDIT_PER_DELTA


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


@functools.lru_cache(maxsize=1 << 16)
def is_stable_starter(char: str) -> bool:
    """NFC output before this character does not depend on it or on anything after it."""
    if char.isascii():
        return True
    if unicodedata.category(char) == "Cn" or unicodedata.combining(char):
        return False
    first = unicodedata.normalize("NFD", char)[0]
    backward = _composes_with_previous()
    return char not in backward and first not in backward and unicodedata.combining(first) == 0


@functools.lru_cache(maxsize=1 << 16)
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


def _suffix_start(text: str, end: int, keep: int) -> int:
    """Start of the longest run ending at ``end`` whose characters all share a class bit with ``keep``."""
    index = end
    while index > 0 and _char_class(text[index - 1]) & keep:
        index -= 1
    return index


def _word_tail(word: str) -> int:
    """``_tail_kind(word, arriving=False)`` for an ASCII ``word`` that ``_ONE_WORD_PIECE`` matches, without
    walking its characters: its last run is its letters (the character before them, if any, is not a
    letter), and a run of letters keeps a delta from cutting once it is two letters long (``_run_kind``).
    The word fast path calls this for most deltas of ordinary English."""
    letters = len(word) if word[0].isalpha() else len(word) - 1
    return _EXAMINED | _ONE_WORD | (_LETTER if letters >= 2 else 0)


def _newline_suffix_start(text: str, end: int) -> int:
    index = end
    while index > 0 and (text[index - 1] in "\r\n" or _char_class(text[index - 1]) == _ANY):
        index -= 1
    return index


class _RunEnds:
    """Condition 3 of the module docstring for piece starts in normalized ``text``, O(1) per query.

    A run of class C starting at ``q`` ends before the text does iff some character after ``q``
    lacks C, i.e. iff ``q + 1`` lies before the longest suffix made of C (doubtful characters count
    as C). The suffixes are computed once, lazily, by walking back from the end.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.size = len(text)
        self._suffix: dict[int, int] = {}
        self._other_newline: int | None = None

    def _start(self, cls: int) -> int:
        if cls not in self._suffix:
            self._suffix[cls] = _suffix_start(self.text, self.size, cls)
        return self._suffix[cls]

    def pieces_final_before(self, cut: int) -> bool:
        cls = _char_class(self.text[cut])
        if cls == _NUMBER:
            return True       # a number is a piece of its own: no attempt before it reads past it
        if cls == _ANY or cut + 1 >= self.size:
            return False
        if cls == _OTHER:
            # "other" runs swallow the newline run after them: the other-then-newlines suffix decides.
            if self._other_newline is None:
                self._other_newline = _suffix_start(self.text, _newline_suffix_start(self.text, self.size), _OTHER)
            return cut + 1 < self._other_newline
        return cut + 1 < self._start(cls)


class IncrementalTokenizer:
    """Stateless engine over :class:`IncrementalState`; one instance serves all conversations."""

    def __init__(self, text: TextTokenizer, max_held_chars: int = MAX_HELD_CHARS) -> None:
        if max_held_chars < MIN_HELD_CHARS:
            raise ValueError(f"max_held_chars must be at least {MIN_HELD_CHARS}, got {max_held_chars}")
        self.text = text
        self.max_held_chars = max_held_chars
        self._added = text.matched_added_tokens
        first_chars = "".join(sorted({t[0] for t in self._added}))
        self._added_start = re.compile(f"[{re.escape(first_chars)}]" if first_chars else r"(?!)")
        # What sends a delta off the word fast path, in one search: a doubtful character or an added token's start.
        self._off_word_path = re.compile(f"[\x1c-\x1f{re.escape(first_chars)}]")
        self._added_longest = max((len(t) for t in self._added), default=0)
        # BPE of a piece depends on the piece alone: common words are looked up, not tokenized again.
        self._piece_tokens: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}

    def feed(self, state: IncrementalState, delta: str) -> TokenSpans:
        """Append ``delta``; return the newly stable tokens with spans in the whole text."""
        if not delta:
            return TokenSpans([], [])
        state.pending += delta
        # Capped after spending, so that one huge delta pays for its own examination.
        state.scan_credit += SCAN_CREDIT_PER_DELTA + SCAN_CREDIT_PER_CHAR * len(delta)
        try:
            return self._feed(state, delta)
        finally:
            state.scan_credit = min(state.scan_credit, SCAN_CREDIT_MAX)

    def _feed(self, state: IncrementalState, delta: str) -> TokenSpans:
        if state.tail & _ONE_WORD and len(state.pending) <= self.max_held_chars:
            word = self._word_before(state, delta)
            if word is not None:
                if state.tail:
                    return word       # the delta is one word itself: nothing in it can be cut yet
                rest = self._examine(state, delta)
                return TokenSpans(word.ids + rest.ids, word.spans + rest.spans)
        return self._examine(state, delta)

    def _examine(self, state: IncrementalState, delta: str) -> TokenSpans:
        over_cap = len(state.pending) > self.max_held_chars
        if not over_cap:
            if state.tail:
                kept = self._tail_after(state.tail, delta)
                if kept:
                    state.tail = kept
                    return TokenSpans([], [])
            if state.scan_credit < len(state.pending):
                state.tail = 0    # not examined: the tail is no longer known to be cut-free
                return TokenSpans([], [])
        state.scan_credit -= len(state.pending)
        raw = state.pending
        segment_start, limit = self._added_token_layout(raw)
        cut, pieces = self._stable_cut(raw, segment_start, limit)
        if len(raw) - cut > self.max_held_chars:
            return self._emit_forced(state, cut, limit)
        emitted = self._emit(state, cut) if pieces is None else self._emit_pieces(state, cut, pieces)
        state.tail = self._tail_kind(state.pending, arriving=limit < len(raw))
        return emitted

    def _word_before(self, state: IncrementalState, delta: str) -> TokenSpans | None:
        """The fast path for ordinary English: the held text was one word piece (``" quick"``) and ``delta``
        (``" brown"``) ends it. Emits the word if the cut after it is stable, else None (examine as usual).

        The cut before ``delta`` is a piece start (letters end at a non-letter); it is stable when the run
        ``delta`` starts with ends before the last character of the text (condition 3 of the module
        docstring), computed on ``delta`` alone since the word before it is not of that run.
        """
        if not delta.isascii() or len(delta) < 3 or delta[0].isalpha() or self._off_word_path.search(delta):
            return None
        first, known = delta[0], len(delta) - 1      # the last character is not final yet
        if not first.isdigit():
            end = 1
            if first in _ASCII_SPACE:
                while end < known and delta[end] in _ASCII_SPACE:
                    end += 1
            else:
                while end < known and delta[end] not in _ASCII_LETTERS_DIGITS_SPACE:
                    end += 1
                while end < known and delta[end] in "\r\n":
                    end += 1
            if end >= known:
                return None
        word = state.pending[:-len(delta)]
        byte_level = word.translate(_BYTE_LEVEL_ASCII)
        found = self._piece_tokens.get(byte_level)
        if found is None:
            found = self._tokenize_piece(byte_level, word)
        base = state.pending_start
        spans = [(base + a, base + b) for a, b in found[1]]
        state.pending = delta
        state.pending_start += len(word)
        state.tail = _word_tail(delta) if _ONE_WORD_PIECE.fullmatch(delta) else 0
        return TokenSpans(list(found[0]), spans)

    def finish(self, state: IncrementalState) -> TokenSpans:
        """The text is complete: emit everything still held."""
        state.tail = 0
        return self._emit(state, len(state.pending))

    # -- cutting ----------------------------------------------------------------------------------
    def _emit(self, state: IncrementalState, cut: int) -> TokenSpans:
        if cut <= 0:
            return TokenSpans([], [])
        state.scan_credit -= len(state.pending)
        # Encode with the text that follows the cut: tokenizing the prefix alone would let the regex see
        # end-of-text at the cut (``\s+(?!\S)`` keeps "  " whole there but splits it before "4").
        encoded = self.text.encode_text_spans(state.pending)
        count = sum(1 for start, _ in encoded.spans if start < cut) if cut < len(state.pending) else len(encoded.ids)
        base = state.pending_start
        spans = [(base + a, base + b) for a, b in encoded.spans[:count]]
        state.pending = state.pending[cut:]
        state.pending_start += cut
        return TokenSpans(encoded.ids[:count], spans)

    def _emit_pieces(self, state: IncrementalState, cut: int, pieces: list[Piece]) -> TokenSpans:
        """Emit up to ``cut`` from the pieces before it (the held text is its own NFC and has no added token).

        The fast path: each piece's tokens come from the cache or one BPE call on the piece, instead of
        encoding the whole held text again.
        """
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        base = state.pending_start
        text = state.pending
        for piece, (start, end) in pieces:
            found = self._piece_tokens.get(piece)
            if found is None:
                found = self._tokenize_piece(piece, text[start:end])
            ids += found[0]
            offset = base + start
            spans += [(offset + a, offset + b) for a, b in found[1]]
        state.pending = text[cut:]
        state.pending_start += cut
        return TokenSpans(ids, spans)

    def _tokenize_piece(self, piece: str, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character spans (within ``text``, the piece's characters) of one piece, remembered."""
        tokens = self.text.tokenize_piece(piece)
        spans: list[tuple[int, int]] = []
        if text.isascii():
            position = 0
            for _, size in tokens:
                spans.append((position, position + size))
                position += size
        else:
            # Byte-level tokens may split a character: a span runs from the character holding the token's
            # first byte to the one holding its last, as the tokenizer's own offsets do.
            char_of_byte = [i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]
            position = 0
            for _, size in tokens:
                spans.append((char_of_byte[position], char_of_byte[position + size - 1] + 1))
                position += size
        found = ([token for token, _ in tokens], spans)
        if len(piece) <= PIECE_CACHE_MAX_CHARS and len(tokens) <= PIECE_CACHE_MAX_TOKENS:
            if len(self._piece_tokens) >= PIECE_CACHE_SIZE:
                self._piece_tokens.clear()
            self._piece_tokens[piece] = found
        return found

    def _emit_forced(self, state: IncrementalState, cut: int, limit: int) -> TokenSpans:
        """Cut a run longer than ``max_held_chars`` about half that before its end (module docstring)."""
        raw = state.pending
        target = min(len(raw) - self.max_held_chars // 2, limit)
        state.scan_credit -= len(raw)
        base = state.pending_start
        if cut == 0 and not any(is_stable_starter(ch) for ch in raw[1:target + 1]):
            # Non-starters only (combining marks, unassigned code points): NFC may reorder the whole run, so
            # no cut inside it is exact; the text before ``target`` is tokenized as a text of its own.
            forced = target
            alone = self.text.encode_text_spans(raw[:forced])
            ids, spans = alone.ids, alone.spans
        else:
            encoded = self.text.encode_text_spans(raw)
            found = next(
                (s for s, _ in reversed(encoded.spans) if cut < s <= target and is_stable_starter(raw[s])), None,
            )
            if found is not None:
                # A token boundary of the held text's own tokenization, where NFC splits: the tokens before
                # it are the held text's tokens, so a run that BPE splits regularly stays exact.
                forced = found
                count = sum(1 for start, _ in encoded.spans if start < forced)
                ids, spans = encoded.ids[:count], encoded.spans[:count]
            else:
                # No such boundary: the text from the stable cut to ``target`` is a text of its own.
                forced = target
                count = sum(1 for start, _ in encoded.spans if start < cut)
                alone = self.text.encode_text_spans(raw[cut:forced])
                ids = encoded.ids[:count] + alone.ids
                spans = encoded.spans[:count] + [(cut + a, cut + b) for a, b in alone.spans]
        state.pending = raw[forced:]
        state.pending_start += forced
        state.tail = 0
        return TokenSpans(ids, [(base + a, base + b) for a, b in spans])

    def _added_token_layout(self, raw: str) -> tuple[int, int]:
        """(start of the last segment free of added tokens, end of the text safe from added tokens)."""
        segment_start, size = 0, len(raw)
        if not self._added:
            return 0, size
        index = self._next_added_start(raw, 0)
        while index < size:
            rest = raw[index:index + self._added_longest + 1]
            if len(rest) <= self._added_longest and any(len(t) > len(rest) and t.startswith(rest) for t in self._added):
                return segment_start, index          # an added token may be arriving here
            matched = max((t for t in self._added if rest.startswith(t)), key=len, default=None)
            if matched is not None:
                segment_start = index + len(matched)
                index = self._next_added_start(raw, segment_start)
            else:
                index = self._next_added_start(raw, index + 1)
        return segment_start, size

    def _next_added_start(self, raw: str, start: int) -> int:
        found = self._added_start.search(raw, start)
        return len(raw) if found is None else found.start()

    def _stable_cut(self, raw: str, segment_start: int, limit: int) -> tuple[int, list[Piece] | None]:
        """The last stable cut, and the pieces before it when they can be emitted as they are (else None)."""
        region = raw[segment_start:limit]
        if not region:
            return segment_start, None
        if limit < len(raw):
            final_end = len(region)          # the arriving added token starts with a stable starter
        else:
            # The last cluster may still absorb combining marks: only the text before it is final.
            final_end = len(region) - 1
            while final_end > 0 and not is_stable_starter(region[final_end]):
                final_end -= 1
            last = region[final_end]
            if last in _ASCII_DIGITS and final_end == len(region) - 1:
                # A trailing ASCII digit is a final piece (module docstring).
                return limit, self._pieces_before(raw, segment_start, len(region), len(region))
            if final_end > 0 and _char_class(last) == _NUMBER and is_stable_starter(last):
                # The digit stays in the pre-tokenized text: it ends the runs before it.
                return segment_start + final_end, self._pieces_before(raw, segment_start, final_end + 1, final_end)
        head = region[:final_end]
        to_raw: dict[int, int] | None = None
        if head.isascii() or unicodedata.is_normalized("NFC", head):
            normalized = head
        else:
            to_raw = {}
            parts: list[str] = []
            length, previous = 0, 0
            bounds = [i for i in range(1, final_end) if is_stable_starter(head[i])] + [final_end]
            for bound in bounds:
                to_raw[length] = previous
                piece = unicodedata.normalize("NFC", head[previous:bound])
                parts.append(piece)
                length += len(piece)
                previous = bound
            normalized = "".join(parts)
        runs = _RunEnds(normalized)
        pieces = self.text.pre_tokenize(normalized)
        for index in range(len(pieces) - 1, 0, -1):
            start = pieces[index][1][0]
            if to_raw is None:
                if not is_stable_starter(normalized[start]):
                    continue
                position = start
            elif start in to_raw:
                position = to_raw[start]
            else:
                continue
            if runs.pieces_final_before(start):
                fast = to_raw is None and segment_start == 0
                return segment_start + position, pieces[:index] if fast else None
        return segment_start, None

    def _pieces_before(self, raw: str, segment_start: int, text_end: int, cut: int) -> list[Piece] | None:
        """The pieces of ``raw[:text_end]`` before ``cut``, when the held text is plain, NFC and final there."""
        if segment_start:
            return None
        text = raw[:text_end]
        if not (text.isascii() or unicodedata.is_normalized("NFC", text)):
            return None
        return [piece for piece in self.text.pre_tokenize(text) if piece[1][0] < cut]

    # -- the cheap path ---------------------------------------------------------------------------
    def _tail_kind(self, pending: str, *, arriving: bool) -> int:
        """What deltas cannot create a stable cut in ``pending`` (which has none): 0, or ``_EXAMINED`` plus
        the class bits of ``pending``'s last run when a delta of that class cannot either.

        With no added token being typed, a delta of non-starters (combining marks, unassigned code points)
        cannot create a cut: the cut conditions look only at the text before the last stable starter,
        which it leaves as it is. A delta of the last run's class can only lengthen that run: every
        possible cut inside the run needs the run to end, and every position before it was already
        decided on known text, provided NFC has already settled the text up to the run's first character
        (a stable starter follows it). Numbers never qualify: each one is a cut of its own.
        """
        if not pending or arriving:
            return 0
        one_word = pending.isascii() and _ONE_WORD_PIECE.fullmatch(pending) is not None
        return _EXAMINED | self._run_kind(pending) | (_ONE_WORD if one_word else 0)

    @staticmethod
    def _run_kind(pending: str) -> int:
        cls = _char_class(pending[-1])
        if cls not in (_LETTER, _SPACE, _OTHER):
            return 0
        start = _suffix_start(pending, len(pending), cls)
        run = pending[start:]
        if run.isascii() and not _ASCII_DOUBTFUL.search(run):
            # The common case, in short: every character is a stable starter of exactly this class.
            newlines = len(run) - len(run.lstrip("\r\n")) if cls == _SPACE else 0
            if newlines == len(run):
                return cls | _NEWLINES_ONLY if len(run) > 1 else 0
            return cls if newlines + 1 < len(run) else 0
        definite = [i for i, ch in enumerate(run) if _char_class(ch) == cls]
        newlines_only = cls == _SPACE and all(run[i] in "\r\n" for i in definite)
        # Runs before this one end at its first stable starter of exactly this class (doubtful characters
        # extend every run, and marks may join the character before them), an "other" run's trailing
        # newlines at its first whitespace that is not a newline. The cut conditions look only at text
        # before the last stable starter: that character must be in it, so that every run before it is
        # seen to end.
        first = next(
            (i for i in definite
             if is_stable_starter(run[i]) and (newlines_only or cls != _SPACE or run[i] not in "\r\n")),
            len(run),
        )
        if not any(is_stable_starter(ch) for ch in run[first + 1:]):
            return 0
        # With newlines only, an "other" run before it still reads them: only more newlines keep it undecided.
        return cls | _NEWLINES_ONLY if newlines_only else cls

    def _tail_after(self, tail: int, delta: str) -> int:
        """The tail after appending ``delta`` if it cannot create a stable cut, else 0 (see _tail_kind)."""
        if self._added_start.search(delta):
            return 0
        run = tail & _RUN_BITS
        if run & _NEWLINES_ONLY:
            if all(ch in "\r\n" or _char_class(ch) == _ANY for ch in delta):
                return tail
        elif run and all(_char_class(ch) & run for ch in delta):
            # Still one word piece only if ASCII letters were added.
            return tail if delta.isascii() and delta.isalpha() else tail & ~_ONE_WORD
        if not any(is_stable_starter(ch) for ch in delta):
            return _EXAMINED   # the held text no longer ends with a run of one class
        return 0
