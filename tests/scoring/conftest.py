from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tokenizers import Tokenizer

from pipeline.labels import LabelMaps
from pipeline.policy import PolicyBook, TenantPolicy
from pipeline.scoring.scorer import Scorer
from pipeline.tokens.text import TextTokenizer
from tests.scoring.hash_engine import HashEngine


@pytest.fixture(scope="session")
def text_tokenizer(qwen_tokenizer: Tokenizer) -> TextTokenizer:
    return TextTokenizer(qwen_tokenizer)


@pytest.fixture
def engine() -> HashEngine:
    # Tilted so that unsafe and controversial pairs, and so flags and escalations, are common.
    return HashEngine(bias=(1.0, 0.3, 0.6))


@pytest.fixture
def make_scorer(text_tokenizer: TextTokenizer) -> Callable[..., Scorer]:
    def make(**options: Any) -> Scorer:
        policies = options.pop("policies", PolicyBook(tenants={"lenient": TenantPolicy("loose")}))
        return Scorer(text_tokenizer, LabelMaps(), policies, "hash-engine", **options)

    return make
