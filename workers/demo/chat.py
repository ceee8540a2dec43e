"""The demo's application: each sample conversation sent through the gateway with the official
``openai`` client (streaming or not), and what the client received, shown as it arrives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.text import Text

from pipeline.conversations import Conversation

TENANT_HEADER = "X-Guardstream-Tenant"
RISK_STYLE = {"safe": "green", "controversial": "yellow", "unsafe": "bold red"}
OUTCOME_STYLE = {"released": "green", "flagged": "yellow", "stopped": "bold red", "refused": "bold red",
                 "error": "red"}


@dataclass
class ChatOutcome:
    """What the client got back for one conversation."""

    conversation: str
    language: str
    streamed: bool
    text: str = ""
    finish_reason: str | None = None
    verdict: dict[str, Any] | None = None    # the top-level ``guardstream`` object, when there was one
    error: str | None = None

    @property
    def outcome(self) -> str:
        """released (stop, no verdict), flagged (stop, an allowing non-Safe verdict), stopped (the
        reply blocked: content_filter), refused (the prompt blocked), or error."""
        if self.error is not None:
            return "error"
        if self.finish_reason == "content_filter":
            return "refused" if (self.verdict or {}).get("role") == "user" else "stopped"
        return "flagged" if self.verdict else "released"


def describe_verdict(verdict: dict[str, Any] | None) -> Text:
    if not verdict:
        return Text("-", style="dim")
    risk = str(verdict.get("risk"))
    where = f" at token {verdict['token_index']}" if verdict.get("token_index") is not None else ""
    category = f" / {verdict['category']}" if verdict.get("category") else ""
    return Text.assemble((f"{verdict.get('role')} ", "dim"), (risk + category, RISK_STYLE.get(risk, "white")),
                         (f"{where} -> {verdict.get('action')}", "dim"))


def play(client: Any, console: Console, language: str, conv: Conversation, streamed: bool) -> ChatOutcome:
    """Send the conversation's user message through the gateway and show the reply as it arrives."""
    import openai

    prompt = conv.messages[0].content
    outcome = ChatOutcome(conv.conversation_id, language, streamed)
    headers = {TENANT_HEADER: conv.tenant} if conv.tenant else None
    console.rule(f"[bold]{conv.conversation_id}[/] ({language}, {'streaming' if streamed else 'one response'}"
                 + (f", tenant {conv.tenant}" if conv.tenant else "") + ")")
    console.print(Text.assemble(("     user: ", "bold cyan"), prompt))
    console.print(Text("assistant: ", style="bold cyan"), end="")
    messages = [{"role": "user", "content": prompt}]
    try:
        if streamed:
            for chunk in client.chat.completions.create(model="scripted", messages=messages, stream=True,
                                                        extra_headers=headers):
                extra = chunk.model_extra or {}
                if extra.get("guardstream"):
                    outcome.verdict = extra["guardstream"]
                for choice in chunk.choices:
                    if choice.delta.content:
                        outcome.text += choice.delta.content
                        console.print(choice.delta.content, end="", markup=False, highlight=False)
                    if choice.finish_reason:
                        outcome.finish_reason = choice.finish_reason
        else:
            whole = client.chat.completions.create(model="scripted", messages=messages, extra_headers=headers)
            outcome.verdict = (whole.model_extra or {}).get("guardstream")
            outcome.text = whole.choices[0].message.content or ""
            outcome.finish_reason = whole.choices[0].finish_reason
            console.print(outcome.text, end="", markup=False, highlight=False)
    except openai.APIError as exc:
        outcome.error = str(getattr(exc, "message", exc))
    console.print()
    console.print(outcome_line(outcome))
    return outcome


def outcome_line(o: ChatOutcome) -> Text:
    head = Text(f"           {o.outcome.upper()}", style=OUTCOME_STYLE[o.outcome])
    if o.error is not None:
        return head + Text(f": {o.error}")
    return head + Text(f"  finish_reason {o.finish_reason}  guardstream: ", style="dim") + describe_verdict(o.verdict)
