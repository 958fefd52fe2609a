"""Rules that act on the prompt text before the classifier: pins and the privacy rule."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .config import PrivacyConfig, RuleConfig

# Deliberately simple detectors: false positives only keep a prompt on self-hosted targets.
BUILTIN_PRIVACY_PATTERNS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "credit_card": r"\b(?:\d[ -]?){13,19}\b",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    "phone": r"(?<!\w)\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}(?!\w)",
}
# What a prompt must hold for each detector to have a chance: one cheap scan spares most prompts
# the detectors' own (it runs on every request).
_DIGIT = re.compile(r"\d")
BUILTIN_PRECONDITIONS: dict[str, Callable[[str], bool]] = {
    "email": lambda text: "@" in text,
    "credit_card": lambda text: _DIGIT.search(text) is not None,
    "iban": lambda text: _DIGIT.search(text) is not None,
    "phone": lambda text: _DIGIT.search(text) is not None,
}


def _luhn_ok(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class CompiledRule:
    name: str
    target: str
    regex: re.Pattern[str]

    def matches(self, text: str) -> bool:
        return self.regex.search(text) is not None


def compile_rules(rules: list[RuleConfig]) -> list[CompiledRule]:
    compiled = []
    for rule in rules:
        parts = [rule.pattern] if rule.pattern else []
        parts += [rf"\b{re.escape(k)}\b" for k in rule.keywords]
        # Keywords match whole words, case-insensitively; a pattern keeps its own flags.
        flags = re.IGNORECASE if rule.keywords and not rule.pattern else 0
        compiled.append(CompiledRule(rule.name, rule.target, re.compile("|".join(f"(?:{p})" for p in parts), flags)))
    return compiled


class PrivacyDetector:
    def __init__(self, config: PrivacyConfig) -> None:
        self.enabled = config.enabled
        self._patterns: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None]] = [
            (name, re.compile(BUILTIN_PRIVACY_PATTERNS[name]), BUILTIN_PRECONDITIONS[name]) for name in config.builtin]
        self._patterns += [(f"pattern:{p}", re.compile(p), None) for p in config.patterns]

    def find(self, text: str) -> str | None:
        """The name of the first private-data detector that matches, or None."""
        if not self.enabled:
            return None
        for name, regex, possible in self._patterns:
            if possible is not None and not possible(text):
                continue
            for match in regex.finditer(text):
                if name != "credit_card" or _luhn_ok(match.group()):
                    return name
        return None
