"""Labelled evaluation sets (JSONL): the Qwen3GuardTest field layout and guardstream's own format.

Qwen3GuardTest layout (one object per line; other fields are ignored)::

    {"message": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
     "label": "Unsafe", "unsafe_start_index": 57, "unsafe_end_index": 80}

guardstream's conversations format (pipeline.conversations) plus the same label fields::

    {"conversation_id": "c1", "messages": [...], "label": "unsafe",
     "unsafe_start_index": 57, "unsafe_end_index": 80}

The judged message is the last one: a user message is a prompt sample, an assistant message a
response sample. Labels are safe / unsafe / controversial (any case). ``unsafe_start_index`` and
``unsafe_end_index`` are token positions of the rendered conversation, both inclusive (docs/eval.md,
"Index convention"). An assistant content holding ``</think>`` is split into reasoning and content
the way the Qwen3 chat template splits it, since the dataset stores thinking inline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

from pipeline.conversations import Conversation, Message, parse_conversation, parse_message
from pipeline.errors import UserError
from pipeline.jsonl import json_lines, read_jsonl_text
from pipeline.tokens.text import TextTokenizer
from schemas.messages import Risk

Label = Risk   # a sample's gold label
Split = Literal["auto", "classify", "loc"]
LOC_FIELDS = ("unsafe_start_index", "unsafe_end_index")
# Fields an evaluation line may add to a conversations-format object (``unsafe_sentence`` documents
# which text the indices mark; :func:`locate_sentence` derives them from it).
EVAL_FIELDS = ("label", *LOC_FIELDS, "unsafe_sentence")


@dataclass(frozen=True)
class EvalSample:
    sample_id: str
    conversation: Conversation
    label: Label
    unsafe_start: int | None = None    # inclusive token positions of the rendered conversation
    unsafe_end: int | None = None

    @property
    def judged_index(self) -> int:
        return len(self.conversation.messages) - 1

    @property
    def role(self) -> str:
        return self.conversation.messages[-1].role

    @property
    def timed(self) -> bool:
        return self.unsafe_start is not None


def split_inline_thinking(content: str) -> tuple[str | None, str]:
    """(reasoning, content) as the Qwen3 template splits an assistant content holding ``</think>``."""
    if "</think>" not in content:
        return None, content
    head, tail = content.split("</think>")[0], content.split("</think>")[-1]
    reasoning = head.rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, tail.lstrip("\n")


def _qwen_messages(raw: Any, where: str) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: 'message' must be a non-empty list of {{role, content}} objects")
    messages = []
    for i, item in enumerate(raw):
        at = f"{where}, message {i}"
        if not isinstance(item, dict):
            raise UserError(f"{at}: a message must be an object with 'role' and 'content'")
        body = {k: item[k] for k in ("role", "content") if k in item}
        if isinstance(item.get("reasoning_content"), str) and item.get("role") == "assistant":
            body["reasoning"] = item["reasoning_content"]
        message = parse_message(body, at)
        if message.role == "assistant" and message.reasoning is None:
            reasoning, content = split_inline_thinking(message.content)
            message = replace(message, reasoning=reasoning, content=content)
        messages.append(message)
    return tuple(messages)


def _label(raw: Any, where: str) -> Label:
    name = raw.lower() if isinstance(raw, str) else None
    if name not in ("safe", "controversial", "unsafe"):
        raise UserError(f"{where}: 'label' must be Safe, Unsafe or Controversial, got {raw!r}")
    return cast(Label, name)


def _index(raw: dict[str, Any], key: str, where: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{where}: '{key}' must be a token position (an integer >= 0), got {value!r}")
    return value


def parse_sample(raw: Any, where: str, line: int, split: Split) -> EvalSample:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object with 'message' (or 'messages') and 'label'")
    if "label" not in raw:
        raise UserError(f"{where}: no 'label' (Safe, Unsafe or Controversial)")
    label = _label(raw["label"], where)
    if "message" in raw:
        sample_id = str(raw.get("id", f"line-{line}"))[:200]
        conversation = Conversation(f"eval-{sample_id}", None, _qwen_messages(raw["message"], where))
    elif "messages" in raw:
        conversation = parse_conversation({k: v for k, v in raw.items() if k not in EVAL_FIELDS}, where)
        sample_id = conversation.conversation_id
    else:
        raise UserError(f"{where}: no 'message' (Qwen3GuardTest layout) or 'messages' (conversations format)")
    if conversation.messages[-1].role == "system":
        raise UserError(f"{where}: the last message is judged, and a system message is never judged")
    start, end = (_index(raw, key, where) for key in LOC_FIELDS)
    if split == "classify":
        start = end = None
    elif (start is None) != (end is None):
        raise UserError(f"{where}: give both unsafe_start_index and unsafe_end_index, or neither")
    elif split == "loc" and start is None:
        raise UserError(f"{where}: --split loc needs unsafe_start_index and unsafe_end_index on every sample")
    if start is not None and end is not None:
        if start > end:
            raise UserError(f"{where}: unsafe_start_index {start} is after unsafe_end_index {end}")
        if conversation.messages[-1].role != "assistant":
            raise UserError(f"{where}: loc indices need an assistant message last (detection timing is for responses)")
    return EvalSample(sample_id, conversation, label, start, end)


def read_samples(path: str | Path, split: Split = "auto") -> list[EvalSample]:
    text = read_jsonl_text(path, "data", missing_hint="; pass --data with a labelled JSONL file")
    samples: list[EvalSample] = []
    seen: dict[str, int] = {}
    for where, number, raw in json_lines(text.split("\n"), str(Path(path))):
        sample = parse_sample(raw, where, number, split)
        if sample.sample_id in seen:
            raise UserError(f"{where}: sample id {sample.sample_id!r} already used on line {seen[sample.sample_id]}")
        seen[sample.sample_id] = number
        samples.append(sample)
    if not samples:
        raise UserError(f"{Path(path)} holds no samples; write one JSON object per line")
    return samples


def locate_sentence(text: TextTokenizer, messages: Sequence[Message], sentence: str) -> tuple[int, int]:
    """``(unsafe_start_index, unsafe_end_index)`` for ``sentence`` in the last (assistant) message.

    The first and last scored token whose characters overlap the sentence's first occurrence in
    the message text (reasoning then content), as positions of the rendered conversation.
    """
    from pipeline.reference import scored_char_spans
    from pipeline.tokens.chat import render_context

    index = len(messages) - 1
    message = messages[index]
    if message.role != "assistant":
        raise UserError("an unsafe sentence is located in a response: the last message must be the assistant's")
    full = (message.reasoning or "") + message.content
    at = full.find(sentence) if sentence else -1
    if at < 0:
        raise UserError(f"unsafe sentence {sentence[:60]!r} is not in the last message's text")
    spans = scored_char_spans(text, messages, index)
    hit = [i for i, (a, b) in enumerate(spans) if a < at + len(sentence) and b > at]
    if not hit:
        raise UserError(f"unsafe sentence {sentence[:60]!r} covers no scored token")
    positions = render_context(text, messages, index).scored_positions
    return positions[hit[0]], positions[hit[-1]]
