"""The demo's pretend LLM frontend: streams each message token by token through the client library
and shows, live, what the guard says about it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from rich.console import Console
from rich.text import Text

from pipeline.chunking import chunk_text
from pipeline.client import GuardClient, GuardedMessage, ReleaseEvent
from pipeline.conversations import Conversation
from schemas.messages import Verdict

RISK_STYLE = {"safe": "green", "controversial": "yellow", "unsafe": "bold red"}


@dataclass
class MessageOutcome:
    role: str
    tokens_sent: int = 0
    tokens_total: int = 0
    flags: list[Verdict] = field(default_factory=list)
    final: Verdict | None = None
    stopped: bool = False
    released_chars: int = 0


@dataclass
class ConversationOutcome:
    language: str
    conversation_id: str
    messages: list[MessageOutcome] = field(default_factory=list)


def describe(v: Verdict) -> Text:
    style = RISK_STYLE.get(v.risk, "white")
    label = v.risk + (f" / {v.category}" if v.category else "")
    where = f" at token {v.token_index}" if v.token_index is not None else ""
    return Text.assemble((f"{v.kind} ", "bold"), (label, style), (f"{where} -> {v.action}", "dim" if
                                                                   v.action == "allow" else "bold red"))


class DemoFrontend:
    def __init__(self, guard: GuardClient, console: Console, tokenizer: object, token_delay_s: float,
                 verdict_timeout_s: float) -> None:
        self.guard = guard
        self.console = console
        self.tokenizer = tokenizer
        self.token_delay_s = token_delay_s
        self.verdict_timeout_s = verdict_timeout_s

    async def play(self, language: str, conv: Conversation) -> ConversationOutcome:
        outcome = ConversationOutcome(language, conv.conversation_id)
        self.console.rule(f"[bold]{conv.conversation_id}[/] ({language})")
        for message in conv.messages:
            msg = self.guard.message(conv.conversation_id, message.role, tenant=conv.tenant)
            result = await self._stream(msg, message.content)
            outcome.messages.append(result)
            if result.final is None or result.final.action == "block":
                break  # a blocked prompt is never answered; a blocked answer ends the conversation
        await self.guard.end(conv.conversation_id, tenant=conv.tenant)
        return outcome

    async def _stream(self, msg: GuardedMessage, content: str) -> MessageOutcome:
        tokens = chunk_text(content, "tokens", 1, tokenizer=self.tokenizer)  # type: ignore[arg-type]
        result = MessageOutcome(msg.role, tokens_total=len(tokens))
        self.console.print(Text(f"{msg.role:>9}: ", style="bold cyan"), end="")
        for token in tokens[:-1]:
            if msg.stopped.is_set():
                break
            await msg.write(token)
            result.tokens_sent += 1
            self.console.print(Text(token, style=self._live_style(msg)), end="")
            await asyncio.sleep(self.token_delay_s)
            self._drain(msg, result)
        if msg.stopped.is_set():
            result.stopped = True
            self.console.print(Text("  [generation stopped by the guard]", style="bold red"))
            await msg.finish()
        else:
            await msg.finish(tokens[-1] if tokens else "")
            result.tokens_sent += 1
            self.console.print(Text(tokens[-1] if tokens else "", style=self._live_style(msg)))
        try:
            result.final = await msg.final(self.verdict_timeout_s)
        except TimeoutError:
            self.console.print(Text("           no final verdict in time (is the worker running?)", style="red"))
        if self._drain(msg, result):
            self.console.print()  # a flag marker was printed after the message's last token
        if result.final is not None:
            self.console.print(Text("           ") + describe(result.final))
        return result

    def _drain(self, msg: GuardedMessage, result: MessageOutcome) -> bool:
        """Show flags that arrived; True when something was printed."""
        printed = False
        while not msg.events.empty():
            event: ReleaseEvent = msg.events.get_nowait()
            result.released_chars += len(event.released)
            if event.blocked is not None and event.blocked.kind == "flag":
                result.flags.append(event.blocked)
                self.console.print(Text("  [FLAG ") + describe(event.blocked) + Text("]"), end="")
                printed = True
        for v in msg.verdicts:
            if v.kind == "flag" and v not in result.flags:
                result.flags.append(v)
        return printed

    @staticmethod
    def _live_style(msg: GuardedMessage) -> str:
        flags = [v for v in msg.verdicts if v.kind == "flag"]
        return RISK_STYLE.get(flags[-1].risk, "white") if flags else "white"
