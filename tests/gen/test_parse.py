"""The ruling parser on official-format outputs (docs/model.md §7) and on malformed ones."""

from __future__ import annotations

import pytest

from pipeline.gen.parse import ParseError, Ruling, parse_ruling


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("Safety: Safe\nCategories: None", "prompt", Ruling("safe", (), None)),
        ("Safety: Unsafe\nCategories: Violent", "prompt", Ruling("unsafe", ("Violent",), None)),
        ("Safety: Unsafe\nCategories: Jailbreak", "prompt", Ruling("unsafe", ("Jailbreak",), None)),
        ("Safety: Controversial\nCategories: Politically Sensitive Topics", "prompt",
         Ruling("controversial", ("Politically Sensitive Topics",), None)),
        ("Safety: Unsafe\nCategories: Non-violent Illegal Acts, Sexual Content or Sexual Acts", "prompt",
         Ruling("unsafe", ("Non-violent Illegal Acts", "Sexual Content or Sexual Acts"), None)),
        ("Safety: Safe\nCategories: None\nRefusal: Yes", "response", Ruling("safe", (), True)),
        ("Safety: Unsafe\nCategories: Suicide & Self-Harm, PII\nRefusal: No", "response",
         Ruling("unsafe", ("Suicide & Self-Harm", "PII"), False)),
        ("Safety: Controversial\nCategories: Copyright Violation, Unethical Acts\nRefusal: No", "response",
         Ruling("controversial", ("Copyright Violation", "Unethical Acts"), False)),
    ],
)
def test_official_format_outputs_parse_to_their_ruling(text: str, mode: str, expected: Ruling) -> None:
    assert parse_ruling(text, mode) == expected  # type: ignore[arg-type]


def test_prompt_rulings_carry_no_refusal_even_if_written() -> None:
    ruling = parse_ruling("Safety: Safe\nCategories: None\nRefusal: Yes", "prompt")
    assert isinstance(ruling, Ruling) and ruling.refusal is None


def test_repeated_categories_are_listed_once_in_first_seen_order() -> None:
    ruling = parse_ruling("Safety: Unsafe\nCategories: PII, Violent, PII", "prompt")
    assert isinstance(ruling, Ruling) and ruling.categories == ("PII", "Violent")


def test_top_category_is_the_first_named_and_null_when_safe() -> None:
    unsafe = parse_ruling("Safety: Unsafe\nCategories: PII, Violent", "prompt")
    safe = parse_ruling("Safety: Safe\nCategories: None", "prompt")
    assert isinstance(unsafe, Ruling) and unsafe.top_category == "PII"
    assert isinstance(safe, Ruling) and safe.top_category is None


@pytest.mark.parametrize(
    ("text", "mode", "reason_fragment"),
    [
        ("", "prompt", "Safety"),
        ("Safety: Dangerous\nCategories: Violent", "prompt", "Safety"),
        ("safety: unsafe\nCategories: Violent", "prompt", "Safety"),
        ("Safety: Unsafe", "prompt", "Categories"),
        ("Safety: Unsafe\nCategories: Weapons", "prompt", "no known category"),
        ("Safety: Unsafe\nCategories: Violent", "response", "Refusal"),
        ("Safety: Safe\nCategories: None\nRefusal: Maybe", "response", "Refusal"),
    ],
)
def test_malformed_outputs_are_parse_errors(text: str, mode: str, reason_fragment: str) -> None:
    result = parse_ruling(text, mode)  # type: ignore[arg-type]
    assert isinstance(result, ParseError)
    assert reason_fragment in result.reason
    assert result.text == text
