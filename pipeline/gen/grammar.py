"""The language of well-formed Gen rulings, as a character-level automaton.

A well-formed ruling is exactly::

    Safety: <Safe|Unsafe|Controversial>
    Categories: <None | Name(, Name)*>          distinct long names; Jailbreak only for prompts
    Refusal: <Yes|No>                          response mode only

with single newlines between lines and nothing after. The constrained decoder walks this
automaton one token (a few characters) at a time; every stage's options are prefix-free, so a
buffer that equals an option has finished that option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pipeline.gen.render import ModeratedTurn
from pipeline.labels import LONG_CATEGORY_NAMES

RISK_LABELS: tuple[str, ...] = ("Safe", "Unsafe", "Controversial")
SAFETY_HEAD = "Safety: "
REFUSAL_OPTIONS: tuple[str, ...] = ("\nRefusal: Yes", "\nRefusal: No")


class State(NamedTuple):
    stage: str                 # risk | cats_first | cats_more | after_none | done
    buf: str                   # characters of the current stage so far
    used: frozenset[str]       # categories already written
    risk: str | None           # the Safety label once written


@dataclass(frozen=True)
class Option:
    text: str
    next_stage: str
    payload: str | None = None


class RulingGrammar:
    def __init__(self, mode: ModeratedTurn) -> None:
        self.mode = mode
        names = LONG_CATEGORY_NAMES if mode == "prompt" else tuple(n for n in LONG_CATEGORY_NAMES if n != "Jailbreak")
        self.category_names: tuple[str, ...] = names
        self._min_from_stage = self._shortest_completions()

    def start(self) -> State:
        return State("risk", "", frozenset(), None)

    def options(self, state: State) -> list[Option]:
        stage = state.stage
        if stage == "risk":
            return [Option(SAFETY_HEAD + label, "cats_first", label) for label in RISK_LABELS]
        if stage == "cats_first":
            return [Option("\nCategories: None", "after_none"),
                    *(Option("\nCategories: " + n, "cats_more", n) for n in self.category_names)]
        refusal = [Option(o, "done") for o in REFUSAL_OPTIONS] if self.mode == "response" else []
        if stage == "cats_more":
            more = [Option(", " + n, "cats_more", n) for n in self.category_names if n not in state.used]
            return more + refusal
        if stage == "after_none":
            return refusal
        return []

    def accepting(self, state: State) -> bool:
        if state.buf:
            return False
        if state.stage == "done":
            return True
        return self.mode == "prompt" and state.stage in ("cats_more", "after_none")

    def step(self, state: State, ch: str) -> State | None:
        buf = state.buf + ch
        matching = [o for o in self.options(state) if o.text.startswith(buf)]
        if not matching:
            return None
        if len(matching) == 1 and matching[0].text == buf:
            option = matching[0]
            used = state.used | {option.payload} if option.next_stage == "cats_more" and option.payload else state.used
            risk = option.payload if state.stage == "risk" else state.risk
            return State(option.next_stage, "", frozenset(used), risk)
        return State(state.stage, buf, state.used, state.risk)

    def advance(self, state: State, text: str) -> State | None:
        current: State | None = state
        for ch in text:
            if current is None:
                return None
            current = self.step(current, ch)
        return current

    def accepts(self, text: str) -> bool:
        end = self.advance(self.start(), text)
        return end is not None and self.accepting(end)

    def committed_risk(self, state: State) -> str | None:
        """The Safety label once its first letter is written (labels differ in their first letter)."""
        if state.stage != "risk":
            return state.risk
        if len(state.buf) <= len(SAFETY_HEAD):
            return None
        return next(label for label in RISK_LABELS if (SAFETY_HEAD + label).startswith(state.buf))

    def shortest_completion(self, state: State) -> str:
        """The shortest text that takes ``state`` to an accepting state."""
        text = ""
        current = state
        while not self.accepting(current):
            option = min((o for o in self.options(current) if o.text.startswith(current.buf)),
                         key=lambda o: len(o.text) - len(current.buf) + self._min_from_stage[o.next_stage])
            rest = option.text[len(current.buf):]
            text += rest
            after = self.advance(current, rest)
            assert after is not None
            current = after
        return text

    def _shortest_completions(self) -> dict[str, int]:
        refusal = 0 if self.mode == "prompt" else min(len(o) for o in REFUSAL_OPTIONS)
        shortest_name = min(len(n) for n in self.category_names)
        after_none = refusal
        cats_more = refusal
        cats_first = min(len("\nCategories: None") + after_none, len("\nCategories: ") + shortest_name + cats_more)
        risk = len(SAFETY_HEAD) + min(len(label) for label in RISK_LABELS) + cats_first
        return {"risk": risk, "cats_first": cats_first, "cats_more": cats_more,
                "after_none": after_none, "done": 0}
