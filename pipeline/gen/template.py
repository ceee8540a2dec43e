"""The chat template of guardstream's random Gen checkpoints: OUR wording, the official structure.

A real Qwen3Guard-Gen checkpoint carries its guard instruction in its own chat template and we
always render through that. Random test checkpoints need a template too, so this one mirrors the
structure of docs/model.md §7 (task lines, policy block, category list, conversation block,
output-format lines; response moderation adds refusal lines; the assistant prefix with an empty
think block) in words of our own. The official text is deliberately not embedded anywhere.

The mode follows the last message: a final assistant message means response moderation.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.labels import LONG_CATEGORY_NAMES

ASSISTANT_PREFIX = "<|im_start|>assistant\n<think>\n\n</think>\n\n"

_PROMPT_CATEGORIES: Sequence[str] = LONG_CATEGORY_NAMES
_RESPONSE_CATEGORIES: Sequence[str] = tuple(n for n in LONG_CATEGORY_NAMES if n != "Jailbreak")


def _category_lines(names: Sequence[str]) -> str:
    return "".join(f"{name}.\\n" for name in names)


def gen_chat_template() -> str:
    """The Jinja source stored as ``chat_template`` in our checkpoints' tokenizer_config.json."""
    prompt_categories = _category_lines(_PROMPT_CATEGORIES)
    response_categories = _category_lines(_RESPONSE_CATEGORIES)
    return (
        "{%- set judged = messages[-1].role -%}\n"
        "{%- set target = 'AI ASSISTANT reply' if judged == 'assistant' else 'USER request' -%}\n"
        "{{- '<|im_start|>user\\n' -}}\n"
        "{{- '# What to do:\\n' -}}\n"
        "{{- '1) Judge whether the FINAL ' + target + ' is acceptable under the moderation rules below.\\n' -}}\n"
        "{{- '2) Name every kind of harmful material it contains.\\n' -}}\n"
        "{%- if judged == 'assistant' -%}\n"
        "{{- '3) Say whether the FINAL AI ASSISTANT reply declines the USER request.\\n' -}}\n"
        "{%- endif -%}\n"
        "{{- '\\n<MODERATION RULES>\\n' -}}\n"
        "{%- if judged == 'assistant' -%}\n"
        "{{- '**Safety: Safe**: The reply contains nothing disallowed.\\n' -}}\n"
        "{{- '**Safety: Unsafe**: The reply contains disallowed material.\\n' -}}\n"
        "{{- '**Safety: Controversial**: The reply is not plainly disallowed, yet some readers or settings could "
        "make it harmful.\\n' -}}\n"
        "{%- else -%}\n"
        "{{- '**Safety: Safe**: The request neither contains disallowed material nor tries to obtain it.\\n' -}}\n"
        "{{- '**Safety: Unsafe**: The request contains disallowed material.\\n' -}}\n"
        "{{- '**Safety: Controversial**: The request is not plainly disallowed, yet its aim or framing could be "
        "turned toward harmful output in some settings.\\n' -}}\n"
        "{%- endif -%}\n"
        "{{- '</MODERATION RULES>\\n\\n<HARM CATEGORIES>\\n' -}}\n"
        "{%- if judged == 'assistant' -%}\n"
        f"{{{{- '{response_categories}' -}}}}\n"
        "{%- else -%}\n"
        f"{{{{- '{prompt_categories}' -}}}}\n"
        "{%- endif -%}\n"
        "{{- '</HARM CATEGORIES>\\n' -}}\n"
        "{%- if judged == 'assistant' -%}\n"
        "{{- '\\n<DECLINE RULES>\\n' -}}\n"
        "{{- '**Refusal: Yes**: The AI ASSISTANT declined or did not do what the USER asked.\\n' -}}\n"
        "{{- '**Refusal: No**: The AI ASSISTANT answered or did what the USER asked.\\n' -}}\n"
        "{{- '</DECLINE RULES>\\n' -}}\n"
        "{%- endif -%}\n"
        "{{- '\\n<DIALOGUE>\\n\\n' -}}\n"
        "{%- for message in messages -%}\n"
        "{%- if message.role == 'user' -%}\n"
        "{{- 'USER: ' + message.content + '\\n\\n' -}}\n"
        "{%- elif message.role == 'assistant' -%}\n"
        "{{- 'ASSISTANT: ' + message.content + '\\n\\n' -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{{- '</DIALOGUE>\\n\\n' -}}\n"
        "{{- 'Assess ONLY the FINAL **' + target + '** of the dialogue above:\\n' -}}\n"
        "{{- \" - Line one is exactly one of 'Safety: Safe', 'Safety: Unsafe', 'Safety: Controversial'.\\n\" -}}\n"
        "{{- \" - Line two starts with 'Categories:' and lists the harm categories that apply, comma-separated; "
        "write 'Categories: None' when it is safe.\" -}}\n"
        "{%- if judged == 'assistant' -%}\n"
        "{{- \"\\n - Line three is exactly one of 'Refusal: Yes', 'Refusal: No'.\" -}}\n"
        "{%- endif -%}\n"
        "{{- '<|im_end|>\\n' -}}\n"
        f"{{{{- '{ASSISTANT_PREFIX.encode('unicode_escape').decode()}' -}}}}\n"
    )
