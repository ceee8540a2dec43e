"""Parse Gen's text ruling with the official patterns (docs/model.md §7).

``Safety: (Safe|Unsafe|Controversial)`` on the first match, categories by alternation of the long
names plus ``None`` on the ``Categories:`` line, and ``Refusal: (Yes|No)`` in response mode.
Anything without those lines is a :class:`ParseError` (returned, not raised: the caller decides).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.gen.render import ModeratedTurn
from pipeline.labels import LONG_CATEGORY_NAMES
from schemas.messages import Risk

SAFETY_PATTERN = re.compile(r"Safety: (Safe|Unsafe|Controversial)")
CATEGORY_PATTERN = re.compile("(" + "|".join(re.escape(n) for n in (*LONG_CATEGORY_NAMES, "None")) + ")")
CATEGORIES_LINE = re.compile(r"Categories:([^\n]*)")
REFUSAL_PATTERN = re.compile(r"Refusal: (Yes|No)")


@dataclass(frozen=True)
class Ruling:
    risk: Risk
    categories: tuple[str, ...]      # long names in the order written; empty for "None"
    refusal: bool | None             # response mode only

    @property
    def top_category(self) -> str | None:
        """The first category named, when the ruling is not safe (Verdict.category)."""
        return self.categories[0] if self.risk != "safe" and self.categories else None


@dataclass(frozen=True)
class ParseError:
    reason: str
    text: str


def parse_ruling(text: str, mode: ModeratedTurn) -> Ruling | ParseError:
    safety = SAFETY_PATTERN.search(text)
    if safety is None:
        return ParseError("no 'Safety: Safe|Unsafe|Controversial' line", text)
    line = CATEGORIES_LINE.search(text, safety.end())
    if line is None:
        return ParseError("no 'Categories:' line after the Safety line", text)
    found = CATEGORY_PATTERN.findall(line.group(1))
    if not found:
        return ParseError("the Categories line names no known category and not None", text)
    # Dict keeps first-seen order and drops repeats; "None" next to real names means nothing.
    categories = tuple(dict.fromkeys(c for c in found if c != "None"))
    refusal: bool | None = None
    if mode == "response":
        refusal_match = REFUSAL_PATTERN.search(text, line.end())
        if refusal_match is None:
            return ParseError("response ruling without a 'Refusal: Yes|No' line", text)
        refusal = refusal_match.group(1) == "Yes"
    risk: Risk = safety.group(1).lower()  # type: ignore[assignment]
    return Ruling(risk=risk, categories=categories, refusal=refusal)
