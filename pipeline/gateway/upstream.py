"""The upstream side: one streamed Chat Completions request, read with httpx + httpx-sse."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import aconnect_sse


class UpstreamError(Exception):
    """The upstream refused the request or broke the stream; ``status`` is what the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class UpstreamReply:
    """What the upstream said besides the text."""

    id: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def forwarded_headers(headers: Mapping[str, str], upstream_key: str = "", client_key_is_ours: bool = False
                      ) -> dict[str, str]:
    """The credentials the upstream gets (never logged): the gateway's upstream key when it has one,
    else the client's own Authorization header unless that key was the gateway's."""
    out = {k: v for k, v in headers.items() if k.lower() in ("openai-organization", "openai-project")}
    if upstream_key:
        out["authorization"] = f"Bearer {upstream_key}"
    elif not client_key_is_ours and "authorization" in headers:
        out["authorization"] = headers["authorization"]
    return out


async def stream_text(http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: Mapping[str, str],
                      reply: UpstreamReply) -> AsyncIterator[str]:
    """The reply's text pieces as the upstream streams them.

    The request is always streamed upstream (even for a non-streaming client), so that closing it
    stops the model mid-reply. Leaving the iteration early closes the connection.
    """
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with aconnect_sse(http, "POST", url, json=body, headers=dict(headers)) as source:
        response = source.response
        if response.status_code != 200:
            raw = (await response.aread())[:500].decode("utf-8", "replace")
            raise UpstreamError(response.status_code if response.status_code < 500 else 502,
                                f"upstream answered HTTP {response.status_code}: {raw}")
        async for event in source.aiter_sse():
            if event.data.strip() == "[DONE]":
                return
            try:
                data = json.loads(event.data)
            except ValueError:
                raise UpstreamError(502, "upstream sent an event that is not JSON") from None
            if not isinstance(data, dict):
                raise UpstreamError(502, "upstream sent an event that is not a JSON object")
            if "error" in data:
                raise UpstreamError(502, f"upstream error: {str(data['error'])[:500]}")
            reply.id = data.get("id") or reply.id
            reply.model = data.get("model") or reply.model
            if isinstance(data.get("usage"), dict):
                reply.usage = data["usage"]
            for choice in data.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                if choice.get("finish_reason"):
                    reply.finish_reason = str(choice["finish_reason"])
                delta = choice.get("delta") or {}
                text = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(text, str) and text:
                    yield text
