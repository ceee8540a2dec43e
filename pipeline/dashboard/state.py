"""What the dashboard knows: bounded views of recent conversations, counts, rates and latencies.

Pure and synchronous (no Kafka, no asyncio): the feed applies verdicts and deltas under the owner's
lock, the app reads JSON-ready snapshots. Every structure is bounded whatever the topics carry
(docs/dashboard.md, "Bounds"): conversations are kept least-recently-updated first out, messages per
conversation, characters per message and chunks overall are capped, every string a verdict carries
is cut, and label sets (tenants, categories) fold into ``other`` past a fixed size.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.messages import TokenDelta, Verdict

RISK_ORDER = {"safe": 0, "controversial": 1, "unsafe": 2}
SOURCES = ("stream", "generative")
# Label sets shown in the counts; past these, new values count as "other" so a hostile topic cannot
# grow them.
MAX_LABELS = 50
OTHER = "other"
# Strings a verdict carries are cut to this many characters before they are kept.
MAX_FIELD_CHARS = 200
# Verdicts of one conversation kept for its detail view (the full history is read from the topic).
RECENT_VERDICTS = 100
# Marks (flags, finals) kept per message: a worker emits a few; more can only be a hostile topic.
MAX_MARKS = 16
# Chunks (deltas) kept per message, and in all; past the total, least recently updated
# conversations are dropped until it fits again.
MAX_CHUNKS_PER_MESSAGE = 2048
MAX_CHUNKS_TOTAL = 200_000
# A message shows at most this many chunk positions (a seq of 2**31 must not make a 2**31-item list).
MAX_RENDERED_CHUNKS = 2048
# Rates are averaged over this window, latency percentiles over this many recent verdicts per source.
RATE_WINDOW_S = 10
LATENCY_SAMPLES = 2000


@dataclass(frozen=True)
class ViewLimits:
    max_conversations: int = 200
    max_messages: int = 32
    max_message_chars: int = 8192
    show_text: bool = False


def _cut(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 1] + "…"


def worse(a: str, b: str) -> str:
    return a if RISK_ORDER.get(a, 0) >= RISK_ORDER.get(b, 0) else b


@dataclass(frozen=True)
class VerdictSummary:
    """A verdict as the view shows it: every string cut, no scores or labels."""

    verdict_id: str
    source: str
    kind: str
    risk: str
    action: str
    role: str
    message_index: int
    ts_ms: int
    category: str | None = None
    categories: tuple[str, ...] = ()
    refusal: bool | None = None
    token_index: int | None = None
    seq: int | None = None
    char_offset: int | None = None
    cleared_through_seq: int | None = None
    latency_ms: int | None = None
    truncated_tokens: int | None = None

    @classmethod
    def of(cls, v: Verdict) -> VerdictSummary:
        return cls(
            verdict_id=_cut(v.verdict_id) or "", source=v.source, kind=v.kind, risk=v.risk, action=v.action,
            role=v.role, message_index=v.message_index, ts_ms=v.ts_ms, category=_cut(v.category),
            categories=tuple(c for c in (_cut(c) for c in (v.categories or [])[:8]) if c),
            refusal=v.refusal, token_index=v.token_index, seq=v.seq, char_offset=v.char_offset,
            cleared_through_seq=v.cleared_through_seq, latency_ms=v.latency_ms, truncated_tokens=v.truncated_tokens,
        )

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict_id": self.verdict_id, "source": self.source, "kind": self.kind,
                               "risk": self.risk, "action": self.action, "role": self.role,
                               "message_index": self.message_index, "ts_ms": self.ts_ms}
        for name in ("category", "refusal", "token_index", "seq", "char_offset", "cleared_through_seq",
                     "latency_ms", "truncated_tokens"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.categories:
            out["categories"] = list(self.categories)
        return out


@dataclass
class Chunk:
    length: int
    text: str | None   # None: not kept (text not shown, or past the message's character cap)
    reasoning: bool


@dataclass
class MessageView:
    index: int
    role: str
    chunks: dict[int, Chunk] = field(default_factory=dict)
    kept_chars: int = 0
    text_full: bool = False
    dropped_chunks: int = 0
    final_seq: int | None = None
    max_seq: int = -1
    cleared_through_seq: int = -1
    progress_risk: str = "safe"
    marks: dict[str, VerdictSummary] = field(default_factory=dict)   # flags and finals by verdict_id
    stream_final: VerdictSummary | None = None
    generative: VerdictSummary | None = None

    def see_seq(self, seq: int | None) -> None:
        if seq is not None and seq > self.max_seq:
            self.max_seq = seq

    def risk(self) -> str:
        level = self.progress_risk
        for mark in self.marks.values():
            level = worse(level, mark.risk)
        return level

    def blocked(self) -> bool:
        return any(m.action == "block" for m in self.marks.values() if m.source == "stream")


@dataclass
class ConversationView:
    conversation_id: str
    first_ms: int
    last_ms: int
    tenant: str | None = None
    ended: bool = False
    messages: OrderedDict[int, MessageView] = field(default_factory=OrderedDict)
    recent: deque[VerdictSummary] = field(default_factory=lambda: deque(maxlen=RECENT_VERDICTS))
    seen: set[str] = field(default_factory=set)   # verdict ids in ``recent`` (duplicates are redeliveries)
    chunks: int = 0

    def risk(self) -> str:
        level = "safe"
        for message in self.messages.values():
            level = worse(level, message.risk())
            if message.generative is not None:
                level = worse(level, message.generative.risk)
        return level

    def blocked(self) -> bool:
        return any(m.blocked() for m in self.messages.values())


class RateWindow:
    """Events per second over the last ``RATE_WINDOW_S`` seconds, in one-second buckets."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: deque[tuple[int, int]] = deque()

    def add(self, n: int = 1) -> None:
        now = int(self._clock())
        if self._buckets and self._buckets[-1][0] == now:
            second, count = self._buckets.pop()
            self._buckets.append((second, count + n))
        else:
            self._buckets.append((now, n))
        self._trim(now)

    def rate(self) -> float:
        now = int(self._clock())
        self._trim(now)
        return round(sum(c for s, c in self._buckets if s < now) / RATE_WINDOW_S, 2)

    def _trim(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] < now - RATE_WINDOW_S:
            self._buckets.popleft()


def percentiles(samples: Iterable[int]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


class LabelCounter:
    """Counts by label, folding new labels into ``other`` past ``MAX_LABELS``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, label: str) -> None:
        if label not in self.counts and len(self.counts) >= MAX_LABELS:
            label = OTHER
        self.counts[label] += 1

    def json(self) -> dict[str, int]:
        return dict(self.counts.most_common())


@dataclass
class Counts:
    """Messages by the final ruling of one source: by risk, category, tenant and tenant x risk."""

    risk: Counter[str] = field(default_factory=Counter)
    category: LabelCounter = field(default_factory=LabelCounter)
    tenant: LabelCounter = field(default_factory=LabelCounter)
    tenant_risk: dict[str, Counter[str]] = field(default_factory=dict)
    blocked: int = 0

    def add(self, final: VerdictSummary, tenant: str | None) -> None:
        self.risk[final.risk] += 1
        for category in final.categories or ((final.category,) if final.category else ()):
            self.category.add(category)
        name = _cut(tenant) or "(default)"
        self.tenant.add(name)
        name = name if name in self.tenant.counts else OTHER
        self.tenant_risk.setdefault(name, Counter())[final.risk] += 1
        if final.action == "block":
            self.blocked += 1

    def json(self) -> dict[str, Any]:
        return {"risk": {r: self.risk.get(r, 0) for r in RISK_ORDER}, "category": self.category.json(),
                "tenant": {t: {r: c.get(r, 0) for r in RISK_ORDER} for t, c in self.tenant_risk.items()},
                "blocked": self.blocked}


class DashboardState:
    """Every view the page shows, bounded; applied to by the feed, read by the app."""

    def __init__(self, limits: ViewLimits, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self.conversations: OrderedDict[str, ConversationView] = OrderedDict()
        self.counts = {source: Counts() for source in SOURCES}
        self.verdict_rate = {source: RateWindow(clock) for source in SOURCES}
        self.final_rate = RateWindow(clock)
        self.delta_rate = RateWindow(clock)
        self.latency: dict[str, deque[int]] = {s: deque(maxlen=LATENCY_SAMPLES) for s in SOURCES}
        self.bad_records: Counter[str] = Counter()
        self.total_chunks = 0
        self.evicted = 0
        self.changed: set[str] = set()
        self.removed: set[str] = set()
        self.started_ms = self._now_ms()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- applying ---------------------------------------------------------------------------
    def _conversation(self, conversation_id: str) -> ConversationView:
        now = self._now_ms()
        view = self.conversations.get(conversation_id)
        if view is None:
            view = ConversationView(conversation_id, now, now)
            self.conversations[conversation_id] = view
            self.removed.discard(conversation_id)
            self._evict()
        else:
            self.conversations.move_to_end(conversation_id)
            view.last_ms = now
        self.changed.add(conversation_id)
        return view

    def _evict(self) -> None:
        while len(self.conversations) > max(1, self.limits.max_conversations) or (
                self.total_chunks > MAX_CHUNKS_TOTAL and len(self.conversations) > 1):
            conversation_id, view = self.conversations.popitem(last=False)
            self.total_chunks -= view.chunks
            self.evicted += 1
            self.changed.discard(conversation_id)
            self.removed.add(conversation_id)

    def _message(self, view: ConversationView, index: int, role: str) -> MessageView | None:
        """The message's view; None when it is older than every kept one (kept: the latest indices)."""
        message = view.messages.get(index)
        if message is not None:
            return message
        if len(view.messages) >= max(1, self.limits.max_messages) and index < min(view.messages):
            return None
        message = MessageView(index, role)
        in_order = not view.messages or index > next(reversed(view.messages))
        view.messages[index] = message
        if not in_order:
            view.messages = OrderedDict(sorted(view.messages.items()))
        while len(view.messages) > max(1, self.limits.max_messages):
            _, dropped = view.messages.popitem(last=False)
            view.chunks -= len(dropped.chunks)
            self.total_chunks -= len(dropped.chunks)
        return message

    def apply_verdict(self, verdict: Verdict) -> None:
        summary = VerdictSummary.of(verdict)
        source = summary.source if summary.source in SOURCES else "stream"
        self.verdict_rate[source].add()
        if verdict.latency_ms is not None and verdict.latency_ms >= 0:
            self.latency[source].append(verdict.latency_ms)
        view = self._conversation(verdict.conversation_id)
        if verdict.tenant and view.tenant is None:
            view.tenant = verdict.tenant
        if summary.verdict_id in view.seen:
            return   # a redelivery (a worker's retried transaction, a replay): already applied
        if len(view.recent) == view.recent.maxlen:
            view.seen.discard(view.recent[0].verdict_id)
        view.recent.append(summary)
        view.seen.add(summary.verdict_id)
        message = self._message(view, verdict.message_index, verdict.role)
        if summary.kind == "final":
            self.final_rate.add()
            self.counts[source].add(summary, view.tenant)
        if message is None:
            return
        message.see_seq(summary.seq)
        if summary.cleared_through_seq is not None:
            message.see_seq(summary.cleared_through_seq)
            if summary.action == "allow":
                message.cleared_through_seq = max(message.cleared_through_seq, summary.cleared_through_seq)
        if source == "generative":
            if summary.kind == "final":
                message.generative = summary
            return
        if summary.kind == "progress":
            message.progress_risk = worse(message.progress_risk, summary.risk)
            return
        if len(message.marks) < MAX_MARKS:
            message.marks[summary.verdict_id] = summary
        if summary.kind == "final":
            message.stream_final = summary

    def apply_delta(self, delta: TokenDelta) -> None:
        self.delta_rate.add()
        view = self._conversation(delta.conversation_id)
        if delta.tenant and view.tenant is None:
            view.tenant = delta.tenant
        if delta.type == "end":
            view.ended = True
            return
        assert delta.message_index is not None and delta.role is not None and delta.seq is not None
        message = self._message(view, delta.message_index, delta.role)
        if message is None:
            return
        if delta.final:
            message.final_seq = delta.seq
        message.see_seq(delta.seq)
        if delta.seq in message.chunks:
            return   # a redelivered delta
        if len(message.chunks) >= MAX_CHUNKS_PER_MESSAGE:
            message.dropped_chunks += 1
            return
        length = len(delta.text)
        # Once a chunk does not fit, no later one is kept either: the text shown is a prefix.
        keep = (self.limits.show_text and not message.text_full
                and message.kept_chars + length <= self.limits.max_message_chars)
        message.chunks[delta.seq] = Chunk(length, delta.text if keep else None, delta.reasoning)
        if keep:
            message.kept_chars += length
        elif self.limits.show_text:
            message.text_full = True
        view.chunks += 1
        self.total_chunks += 1
        if self.total_chunks > MAX_CHUNKS_TOTAL:
            self._evict()

    def note_bad(self, topic_kind: str) -> None:
        self.bad_records[topic_kind] += 1

    # --- reading ------------------------------------------------------------------------------
    def drain_changes(self) -> tuple[list[str], list[str]]:
        changed = [c for c in self.changed if c in self.conversations]
        removed = list(self.removed)
        self.changed.clear()
        self.removed.clear()
        return changed, removed

    def summary(self, conversation_id: str) -> dict[str, Any] | None:
        view = self.conversations.get(conversation_id)
        if view is None:
            return None
        last = next(reversed(view.messages.values()), None)
        return {"id": view.conversation_id, "tenant": view.tenant, "risk": view.risk(), "blocked": view.blocked(),
                "messages": len(view.messages), "last_role": last.role if last else None,
                "first_ms": view.first_ms, "last_ms": view.last_ms, "ended": view.ended}

    def list_conversations(self, tenant: str | None = None, risk: str | None = None,
                           limit: int = 500) -> list[dict[str, Any]]:
        """Newest first, filtered: ``tenant`` exact ("(default)" for none), ``risk`` at least this level."""
        out: list[dict[str, Any]] = []
        for conversation_id in reversed(self.conversations):
            summary = self.summary(conversation_id)
            assert summary is not None
            if matches(summary, tenant, risk):
                out.append(summary)
                if len(out) >= limit:
                    break
        return out

    def detail(self, conversation_id: str) -> dict[str, Any] | None:
        view = self.conversations.get(conversation_id)
        summary = self.summary(conversation_id)
        if view is None or summary is None:
            return None
        return {**summary, "show_text": self.limits.show_text,
                "message_list": [render_message(m) for m in view.messages.values()],
                "verdicts": [v.json() for v in view.recent]}

    def stats(self) -> dict[str, Any]:
        return {
            "verdicts_per_s": {s: self.verdict_rate[s].rate() for s in SOURCES},
            "finals_per_s": self.final_rate.rate(),
            "deltas_per_s": self.delta_rate.rate(),
            "latency_ms": {s: percentiles(self.latency[s]) for s in SOURCES},
            "counts": {s: self.counts[s].json() for s in SOURCES},
            "conversations": len(self.conversations),
            "evicted": self.evicted,
            "bad_records": dict(self.bad_records),
            "show_text": self.limits.show_text,
            "started_ms": self.started_ms,
        }


def matches(summary: dict[str, Any], tenant: str | None, risk: str | None) -> bool:
    if tenant and (summary["tenant"] or "(default)") != tenant:
        return False
    return not (risk and RISK_ORDER.get(summary["risk"], 0) < RISK_ORDER.get(risk, 0))


# --- rendering a message ----------------------------------------------------------------------
def _chunk_starts(message: MessageView, last_seq: int) -> dict[int, int]:
    """Character offset of each chunk in the message's text, while every earlier chunk is known."""
    starts: dict[int, int] = {}
    offset = 0
    for seq in range(last_seq + 1):
        chunk = message.chunks.get(seq)
        if chunk is None:
            break
        starts[seq] = offset
        offset += chunk.length
    return starts


def render_message(message: MessageView) -> dict[str, Any]:
    """The message as pieces of text (or placeholders) coloured by risk, with marks at their token.

    A piece is a chunk (one delta) or part of one, cut where a flag or final locates its deciding
    token (``seq`` + ``char_offset``). Its ``risk`` is the worst risk flagged at or before it (a whole
    prompt takes its final's risk: a prompt is judged as a whole), ``judged`` whether a watermark, a
    flag or a final covers it, ``withheld`` whether it comes at or after a blocking stream verdict.
    """
    last_seq = max(message.max_seq, max(message.chunks, default=-1))
    shown = min(last_seq + 1, MAX_RENDERED_CHUNKS)
    starts = _chunk_starts(message, shown - 1)
    marks_at: dict[int, list[tuple[int, VerdictSummary]]] = {}
    tail: list[VerdictSummary] = []
    for mark in sorted(message.marks.values(), key=lambda m: (m.seq if m.seq is not None else -1, m.char_offset or 0)):
        if mark.seq is None or mark.seq >= shown:
            tail.append(mark)
            continue
        chunk = message.chunks.get(mark.seq)
        inner = 0
        if chunk is not None and mark.seq in starts and mark.char_offset is not None:
            inner = min(max(0, mark.char_offset - starts[mark.seq]), chunk.length)
        marks_at.setdefault(mark.seq, []).append((inner, mark))
    final = message.stream_final
    # A flag judged every token up to its own, so its chunk counts as judged even past the watermark.
    judged_through = max([message.cleared_through_seq,
                          *(m.seq for m in message.marks.values() if m.source == "stream" and m.seq is not None)])
    is_prompt = message.role == "user"
    risk = final.risk if (is_prompt and final is not None) else "safe"
    withheld = bool(is_prompt and final is not None and final.action == "block")
    pieces: list[dict[str, Any]] = []

    def piece(seq: int, text: str | None, n: int | None, reasoning: bool, marks: list[VerdictSummary]) -> None:
        nonlocal risk, withheld
        blocking = False
        for mark in marks:
            if not is_prompt:
                risk = worse(risk, mark.risk)
            if mark.action == "block" and mark.source == "stream":
                withheld = blocking = True
        judged = final is not None or seq <= judged_through
        item: dict[str, Any] = {"seq": seq, "text": text, "n": n, "risk": risk, "judged": judged,
                                "withheld": withheld, "reasoning": reasoning}
        if marks:
            item["marks"] = [m.json() for m in marks]
            item["blocking"] = blocking
        pieces.append(item)

    for seq in range(shown):
        chunk = message.chunks.get(seq)
        here = sorted(marks_at.get(seq, []), key=lambda pair: pair[0])
        if chunk is None or chunk.text is None:
            piece(seq, None, chunk.length if chunk else None, chunk.reasoning if chunk else False, [m for _, m in here])
            continue
        cuts = sorted({0, *(inner for inner, _ in here)})
        for i, start in enumerate(cuts):
            end = cuts[i + 1] if i + 1 < len(cuts) else chunk.length
            if start == end and start != chunk.length:
                continue
            text = chunk.text[start:end]
            piece(seq, text, len(text), chunk.reasoning, [m for inner, m in here if inner == start])
    if tail:
        piece(shown, None, 0, False, tail)
        pieces[-1]["tail"] = True
    return {
        "index": message.index, "role": message.role, "risk": message.risk(), "pieces": pieces,
        "cleared_through_seq": message.cleared_through_seq, "final_seq": message.final_seq,
        "hidden_chunks": max(0, last_seq + 1 - shown), "dropped_chunks": message.dropped_chunks,
        "stream_final": final.json() if final else None,
        "generative": message.generative.json() if message.generative else None,
    }
