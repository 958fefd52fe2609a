"""Prompt-token counts for context-window checks.

With a target's ``tokenizer`` (a tokenizer.json) the count is exact for the text; otherwise it
is an estimate of one token per 3 UTF-8 bytes, which over-counts typical English BPE
tokenizations (~4 bytes per token) so that a prompt judged to fit does fit. Chat formatting adds
a few tokens per message (role markers), counted as ``PER_MESSAGE_TOKENS``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

PER_MESSAGE_TOKENS = 4
PRIMING_TOKENS = 3  # the assistant header the template appends


@lru_cache(maxsize=16)
def _load_tokenizer(path: str):  # noqa: ANN202 - tokenizers is optional at import time
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    # A tokenizer.json may carry padding/truncation settings; counting needs neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class TokenCounter:
    def __init__(self, tokenizer_path: str | None = None) -> None:
        self._tokenizer = _load_tokenizer(tokenizer_path) if tokenizer_path else None

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count_text(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return math.ceil(len(text.encode("utf-8")) / 3)

    def count_chat(self, contents: Iterable[str]) -> int:
        contents = list(contents)
        return sum(self.count_text(c) + PER_MESSAGE_TOKENS for c in contents) + PRIMING_TOKENS


class TokenCounters:
    """One counter per distinct tokenizer, built once: targets that share a tokenizer (most share
    none, i.e. the estimate) share a counter, so a decision counts the prompt once per tokenizer."""

    def __init__(self, tokenizers: dict[str, str | None]) -> None:
        shared: dict[str | None, TokenCounter] = {}
        self._by_target = {name: shared.setdefault(path, TokenCounter(path)) for name, path in tokenizers.items()}

    def for_target(self, name: str) -> TokenCounter:
        return self._by_target[name]
