from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from pipeline.tokens.text import TextTokenizer


@pytest.fixture(scope="session")
def text_tokenizer(qwen_tokenizer: Tokenizer) -> TextTokenizer:
    return TextTokenizer(qwen_tokenizer)
