"""Cost of an answer: usage tokens x the target's list prices (USD per 1M tokens)."""
from __future__ import annotations

from .config import TargetConfig
from .targets import Usage


def cost_usd(target: TargetConfig, usage: Usage) -> float:
    return (usage.prompt_tokens * target.usd_per_1m_input_tokens
            + usage.completion_tokens * target.usd_per_1m_output_tokens) / 1_000_000
