"""The OpenAI Chat Completions shapes the gateway sends to its clients (pure functions)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from schemas.messages import Verdict


@dataclass(frozen=True)
class ReplyMeta:
    """What the client's chunks share: the upstream's id and model where known."""

    id: str
    model: str
    created: int

    @classmethod
    def new(cls, model: str) -> ReplyMeta:
        return cls(f"chatcmpl-gs-{uuid.uuid4().hex}", model, int(time.time()))


def verdict_summary(verdict: Verdict, retracted: bool = False) -> dict[str, Any]:
    """The top-level ``guardstream`` object of a blocked reply: the verdict, no text; ``retract``
    (optimistic mode) when the text already sent must be taken back."""
    summary: dict[str, Any] = {
        "verdict_id": verdict.verdict_id, "conversation_id": verdict.conversation_id,
        "message_index": verdict.message_index, "role": verdict.role, "kind": verdict.kind,
        "action": verdict.action, "risk": verdict.risk, "category": verdict.category,
        "token_index": verdict.token_index,
    }
    if retracted:
        summary["retract"] = True
    return summary


def chunk(meta: ReplyMeta, *, content: str | None = None, role: bool = False,
          finish_reason: str | None = None, verdict: Verdict | None = None, retracted: bool = False
          ) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    body: dict[str, Any] = {
        "id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if verdict is not None:
        body["guardstream"] = verdict_summary(verdict, retracted)
    return body


def usage_chunk(meta: ReplyMeta, usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
            "choices": [], "usage": usage}


def completion(meta: ReplyMeta, content: str, finish_reason: str, usage: dict[str, Any] | None,
               verdict: Verdict | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    if verdict is not None:
        body["guardstream"] = verdict_summary(verdict)
    return body


def error(message: str, kind: str, code: str) -> dict[str, Any]:
    """OpenAI's error body; the official client raises it as an APIError."""
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}
