"""Conversations files (JSONL), the input of ``send``, ``moderate`` and the demo.

One JSON object per line::

    {"conversation_id": "c1", "tenant": "acme", "messages": [
        {"role": "user", "content": "..."},
        {"role": "assistant", "content": "...", "reasoning": "optional thinking text"}]}

``tenant`` and ``reasoning`` are optional; blank lines are skipped. Errors name the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from pipeline.errors import UserError
from pipeline.jsonl import json_lines, read_jsonl_text
from schemas.messages import MAX_TENANT_CHARS

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
MAX_CONVERSATION_ID = 256  # the TokenDelta schema's limit: an id must fit the contract


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    reasoning: str | None = None


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    tenant: str | None
    messages: tuple[Message, ...]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"conversation_id": self.conversation_id}
        if self.tenant is not None:
            out["tenant"] = self.tenant
        out["messages"] = [
            {"role": m.role, "content": m.content, **({"reasoning": m.reasoning} if m.reasoning is not None else {})}
            for m in self.messages
        ]
        return out


def parse_message(raw: Any, where: str) -> Message:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a message must be an object with 'role' and 'content'")
    unknown = set(raw) - {"role", "content", "reasoning"}
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; allowed: role, content, reasoning")
    role = raw.get("role")
    if role not in ROLES:
        raise UserError(f"{where}: role {role!r} must be one of {', '.join(ROLES)}")
    content = raw.get("content")
    if not isinstance(content, str):
        raise UserError(f"{where}: 'content' must be a string")
    reasoning = raw.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise UserError(f"{where}: 'reasoning' must be a string when present")
    if reasoning is not None and role != "assistant":
        raise UserError(f"{where}: only assistant messages carry 'reasoning'")
    return Message(role=cast(Role, role), content=content, reasoning=reasoning)


def parse_conversation(raw: Any, where: str) -> Conversation:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object with conversation_id and messages")
    unknown = set(raw) - {"conversation_id", "tenant", "messages"}
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                        "allowed: conversation_id, tenant, messages")
    conversation_id = raw.get("conversation_id")
    if not isinstance(conversation_id, str) or not 1 <= len(conversation_id) <= MAX_CONVERSATION_ID:
        raise UserError(f"{where}: 'conversation_id' must be a string of 1 to {MAX_CONVERSATION_ID} characters")
    tenant = raw.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not 1 <= len(tenant) <= MAX_TENANT_CHARS):
        raise UserError(f"{where}: 'tenant' must be a string of 1 to {MAX_TENANT_CHARS} characters when present")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list")
    parsed = tuple(parse_message(m, f"{where}, message {i}") for i, m in enumerate(messages))
    return Conversation(conversation_id=conversation_id, tenant=tenant, messages=parsed)


def parse_conversations(lines: Iterable[str], source: str) -> list[Conversation]:
    conversations: list[Conversation] = []
    seen: dict[str, int] = {}
    for where, number, raw in json_lines(lines, source):
        conversation = parse_conversation(raw, where)
        if conversation.conversation_id in seen:
            # Two conversations with one id would interleave their deltas into one state.
            raise UserError(f"{where}: conversation_id {conversation.conversation_id!r} already used on line "
                            f"{seen[conversation.conversation_id]}")
        seen[conversation.conversation_id] = number
        conversations.append(conversation)
    return conversations


def read_conversations(path: str | Path) -> list[Conversation]:
    text = read_jsonl_text(path, "conversations")
    conversations = parse_conversations(text.split("\n"), str(Path(path)))
    if not conversations:
        raise UserError(f"{Path(path)} holds no conversations; write one JSON object per line")
    return conversations


def write_conversations(path: str | Path, conversations: Iterable[Conversation]) -> None:
    lines = (json.dumps(c.to_json(), ensure_ascii=False) for c in conversations)
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
