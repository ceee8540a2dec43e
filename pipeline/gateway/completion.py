"""One guarded chat completion: the prompt judged first, then the upstream's reply released as cleared.

The gateway publishes through the client library (:mod:`pipeline.client`, docs/client.md): the
request's messages as whole messages, the reply chunk by chunk as the upstream streams it. The
reply's text reaches the caller only through the release buffer (guarded mode), so nothing the
guard has not cleared is ever sent. A blocking verdict cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.client import GuardClient, ReleaseMode
from pipeline.gateway.upstream import UpstreamError, UpstreamReply, stream_text
from schemas.messages import Role, Verdict

_POLL_S = 0.1
# Longest text in one delta: 4096 characters are at most 16 KiB of UTF-8, well under the workers'
# per-delta limit (max_text_bytes, default 64 KiB), so a long message is never refused for its size.
MAX_DELTA_CHARS = 4096


def pieces(text: str, size: int = MAX_DELTA_CHARS) -> list[str]:
    """``text`` cut into deltas of at most ``size`` characters (at least one piece, maybe empty)."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


class GuardUnavailable(Exception):
    """Kafka or the workers did not answer in time: the gateway fails closed."""


class BadRequest(Exception):
    """The client's request cannot be served as it is; the message says why."""


@dataclass(frozen=True)
class Released:
    text: str


@dataclass(frozen=True)
class Ended:
    finish_reason: str                  # "stop" (or the upstream's), "length", "content_filter"
    verdict: Verdict | None             # the blocking verdict when finish_reason is content_filter
    upstream: UpstreamReply
    held_s: float | None = None         # upstream's end to this end (None: stopped before its end)
    retracted: bool = False             # optimistic mode: text already sent must be taken back
    failed_open: bool = False           # the guard did not rule in time; the tenant opted to pass the text
    flagged: Verdict | None = None      # the final verdict of a reply allowed although not Safe (a loose policy)


@dataclass(frozen=True)
class Limits:
    verdict_timeout_s: float
    max_reply_bytes: int


def message_texts(body: Mapping[str, Any]) -> list[tuple[Role, str]]:
    """The request's messages as (role, text); text parts of multi-part content are joined."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    out: list[tuple[Role, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = m.get("role")
        content = m.get("content")
        if role not in ("system", "user", "assistant", "developer", "tool"):
            raise BadRequest(f"messages[{i}].role {role!r} is not a chat role")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content
                              if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
        # The guard knows user, assistant and system turns; developer/tool turns are instructions
        # and tool output the model reads, judged here as system text.
        guard_role: Role = role if role in ("user", "assistant") else "system"
        out.append((guard_role, content))
    return out


async def judge_prompt(guard: GuardClient, conversation_id: str, tenant: str | None,
                       messages: list[tuple[Role, str]], limits: Limits) -> Verdict | None:
    """Publish the request's messages; return the last user message's verdict when it blocks."""
    last_user = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=None)
    gate = None
    try:
        for i, (role, text) in enumerate(messages):
            if not text:
                continue
            msg = guard.message(conversation_id, role, tenant=tenant)
            if i == last_user:
                gate = msg
            *head, tail = pieces(text)
            for piece in head:
                await msg.write(piece)
            await asyncio.wait_for(msg.finish(tail, wait_ack=i == last_user), limits.verdict_timeout_s)
        if gate is None:
            return None
        verdict = await gate.final(limits.verdict_timeout_s)
    except TimeoutError:
        raise GuardUnavailable("the guard did not judge the prompt in time") from None
    return verdict if verdict.action == "block" else None


async def guarded_reply(guard: GuardClient, http: httpx.AsyncClient, url: str, body: Mapping[str, Any],
                        headers: Mapping[str, str], conversation_id: str, tenant: str | None,
                        limits: Limits, mode: ReleaseMode = "guarded", fail_open: bool = False
                        ) -> AsyncGenerator[Released | Ended, None]:
    """Stream the upstream's reply through the guard: cleared text (optimistic mode: all text at
    once), then how it ended.

    Raises :class:`UpstreamError` or :class:`GuardUnavailable` (fail closed: the final verdict did
    not come within ``verdict_timeout_s`` of the reply's end). With ``fail_open`` the text not yet
    released is passed instead, and the end says so (``failed_open``).
    """
    msg = guard.message(conversation_id, "assistant", tenant=tenant, mode=mode)
    upstream = UpstreamReply()
    truncated = False

    async def pump() -> None:
        nonlocal truncated
        size = 0
        async for text in stream_text(http, url, dict(body), headers, upstream):
            if msg.stopped.is_set():
                return
            size += len(text.encode("utf-8"))
            if size > limits.max_reply_bytes:
                truncated = True   # bounded buffer: stop the model rather than hold more
                return
            for piece in pieces(text):
                await msg.write(piece)

    task = asyncio.create_task(pump(), name=f"upstream-{conversation_id}")
    final_due: float | None = None
    upstream_done = 0.0
    try:
        while True:
            if final_due is None and task.done():
                error = task.exception()
                if error is not None:
                    raise _as_upstream_error(error)
                upstream_done = time.monotonic()
                final_due = upstream_done + limits.verdict_timeout_s
                try:
                    await asyncio.wait_for(msg.finish(wait_ack=True), limits.verdict_timeout_s)
                except TimeoutError:
                    if not fail_open:
                        raise GuardUnavailable("Kafka did not accept the reply in time") from None
                    final_due = 0.0   # already late: no verdict can follow a delta Kafka did not take
            try:
                event = await asyncio.wait_for(msg.events.get(), _POLL_S)
            except TimeoutError:
                if final_due is not None and time.monotonic() > final_due:
                    if not fail_open:
                        raise GuardUnavailable("the guard did not judge the reply in time") from None
                    pending = msg.buffer.pending_text if not msg.buffer.retracted else ""
                    if mode == "guarded" and pending:
                        yield Released(pending)
                    reason = "length" if truncated else (upstream.finish_reason or "stop")
                    yield Ended(reason, None, upstream, time.monotonic() - upstream_done, failed_open=True)
                    return
                continue
            if event.blocked is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if event.released:
                    yield Released(event.released)
                yield Ended("content_filter", event.blocked, upstream, retracted=event.retracted)
                return
            if event.released:
                yield Released(event.released)
            if event.final is not None:
                reason = "length" if truncated else (upstream.finish_reason or "stop")
                flagged = event.final if event.final.risk != "safe" else None
                yield Ended(reason, None, upstream, time.monotonic() - upstream_done, flagged=flagged)
                return
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _as_upstream_error(error: BaseException) -> UpstreamError:
    if isinstance(error, UpstreamError):
        return error
    if isinstance(error, httpx.TimeoutException):
        return UpstreamError(504, "the upstream did not answer in time")
    if isinstance(error, httpx.HTTPError):
        return UpstreamError(502, f"the upstream could not be reached: {type(error).__name__}")
    return UpstreamError(502, f"the upstream stream failed: {type(error).__name__}")
