"""What a frontend may show, given the verdicts so far: the client library's pure decision logic.

Two modes:
- ``guarded``: text is held back and released chunk by chunk once the guard has cleared it
  (``cleared_through_seq`` of a progress or final verdict that allows). Nothing unjudged is shown.
- ``optimistic``: text is shown at once; a blocking flag retracts what was shown.
In both modes a blocking verdict stops the generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from schemas.messages import Verdict

ReleaseMode = Literal["guarded", "optimistic"]


@dataclass(frozen=True)
class ReleaseEvent:
    """What changed for the frontend after a write or a verdict."""

    released: str = ""          # text that may be shown now (in order, appended to what was shown)
    blocked: Verdict | None = None
    retracted: bool = False      # optimistic mode: what was shown must be taken back
    final: Verdict | None = None


@dataclass
class ReleaseBuffer:
    """One message's chunks and their release state."""

    mode: ReleaseMode = "guarded"
    chunks: list[str] = field(default_factory=list)
    released_through: int = -1   # highest seq whose text the frontend has been given
    cleared_through: int = -1    # highest seq the guard has cleared
    blocked_by: Verdict | None = None
    final_verdict: Verdict | None = None
    retracted: bool = False

    def write(self, text: str) -> tuple[int, ReleaseEvent]:
        """Record the next chunk; returns its seq and what may be shown now."""
        seq = len(self.chunks)
        self.chunks.append(text)
        if self.blocked_by is not None:
            return seq, ReleaseEvent()
        if self.mode == "optimistic":
            self.released_through = seq
            return seq, ReleaseEvent(released=text)
        return seq, self._release()

    def on_verdict(self, verdict: Verdict) -> ReleaseEvent:
        if verdict.kind == "final":
            self.final_verdict = verdict
        if verdict.action == "block":
            if self.blocked_by is not None:
                return ReleaseEvent(final=verdict if verdict.kind == "final" else None)
            self.blocked_by = verdict
            retract = self.mode == "optimistic" and self.released_through >= 0
            self.retracted = retract
            return ReleaseEvent(blocked=verdict, retracted=retract,
                                final=verdict if verdict.kind == "final" else None)
        if verdict.cleared_through_seq is not None:
            self.cleared_through = max(self.cleared_through, verdict.cleared_through_seq)
        if verdict.kind == "final":
            # An allowing final verdict clears the whole message, whatever its watermark says.
            self.cleared_through = max(self.cleared_through, len(self.chunks) - 1)
        event = self._release() if self.mode == "guarded" and self.blocked_by is None else ReleaseEvent()
        if verdict.kind == "final":
            return ReleaseEvent(released=event.released, final=verdict)
        return event

    def _release(self) -> ReleaseEvent:
        upto = min(self.cleared_through, len(self.chunks) - 1)
        if upto <= self.released_through:
            return ReleaseEvent()
        text = "".join(self.chunks[self.released_through + 1: upto + 1])
        self.released_through = upto
        return ReleaseEvent(released=text)

    @property
    def pending_text(self) -> str:
        """Written but not yet released."""
        return "".join(self.chunks[self.released_through + 1:])
