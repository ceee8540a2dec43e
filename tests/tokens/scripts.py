"""Text generators by script and input class, for the incremental tokenizer's property and cost tests."""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

# Each class: characters or short sequences that behave alike for NFC and the pre-tokenizer regex.
CLASSES: dict[str, list[str]] = {
    "digits": [*list("0123456789"), "٣", "٤", "१", "२", "²", "½", "Ⅻ", "໖", "𝟙"],
    "whitespace": [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u2009", "\x0b", "\x0c",
                   "\x1c", "\u180e", "\u0085"],
    "punctuation": [*list("!?.,;:-()[]{}<>/\\'\"@#$%^&*=+~`|_"), "—", "«", "»", "…", "，", "。", "、", "؟", "।"],
    "cjk": ["你", "好", "世", "界", "学", "习", "编", "程", "こ", "ん", "に", "ち", "は", "カ", "タ", "한", "국", "어",
            "\u1100\u1161\u11a8", "\u1100", "\u1161", "\u11a8", "丽", "\uf900"],
    "arabic": ["م", "ر", "ح", "ب", "ا", " بالعالم", "\u064b", "\u064e", "\u0651", "\u0652", "\u0670", "ـ", "٪"],
    "hindi": ["न", "म", "स", "्", "त", "े", "ि", "ा", "क़", "क", "\u093c", "ॐ", "।", "ं", "ः"],
    "emoji": ["👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "\u200d", "\ufe0f", "👍🏽", "🇫🇷", "🇫", "😀", "🏽", "❤️",
              "\U000e0067", "\U000e007f"],
    "marks": ["\u0301", "\u0300", "\u0303", "\u0308", "\u0327", "\u0316", "\u0338", "\u20dd", "\u0345", "e", "a",
              "n", "\u0b3e", "\u0b47", "\u09be", "\u09c7", "A\u030a", "\u212b"],
    "unassigned": ["\u0378", "\U0001f6dc", "\U00031350", "\U00011f00", "\u0cf3", "\U000e0fff", "\U0002ffff",
                   "\U0010ffff", "\ufdd0", "\U00050000", "\U0010fffd"],
    "mixed": ["Hello", " world", "it's", "'ll", "'VE", "def f(x):\n", "    return x + 1\n", "3.14", "<think>",
              "</think>", "<|im_end|>", "<thi", "<tool_call>", "ǅ", "ß", "ﬁ", "x  ", " \n ", "\n\n\n", "a",
              " the", " brown", "fox", ". ", ",", " (", "...", ").\n", " 42", "7 ", "--x", "\tif", " 'quoted'",
              "'s", " <b", "x\x1c", " ---"],
}
ALL_FRAGMENTS = sorted(set(itertools.chain.from_iterable(CLASSES.values())))


def class_texts(name: str, max_size: int = 30) -> st.SearchStrategy[str]:
    fragments = CLASSES[name] + CLASSES["mixed"][:6] if name != "mixed" else ALL_FRAGMENTS
    return st.lists(st.sampled_from(fragments), max_size=max_size).map("".join)


def splits(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def long_run(name: str, size: int) -> str:
    """``size`` characters of one input class, as a long number or run of that class streams them."""
    unit = {
        "digits": "3141592653589793238462643383279502884197",
        "whitespace": " ",
        "newlines": "\n",
        "punctuation": "=",
        "cjk": "学习编程你好世界",
        "emoji": "👨\u200d👩\u200d👧\u200d👦",
        "marks": "\u0301\u0316",
        "unassigned": "\U000e0fff",
        "letters_and_unassigned": "a\U000e0fff",
        "decomposed_letters": "a\u0301",   # NFD text: one letter run once normalized, a class change per char
        "mixed": "The quick brown fox, 42 times; def f(x): return x ** 2  # 你好 👍🏽\n",
    }[name]
    return (unit * (size // len(unit) + 1))[:size]
