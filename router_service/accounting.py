"""What an answer cost, and the running totals: usage (counted here when an upstream reports
none, as some streams do) x the serving target's prices, against the same tokens at the prices of
the policy's always-strong baseline. The only module that knows prices."""
from __future__ import annotations

from dataclasses import dataclass

from .config import RouterConfig, TargetConfig
from .generation import Usage
from .policy import Decision
from .stats import StatsSink
from .token_count import TokenCounters


def blended_cost_ratio(weak: TargetConfig, strong: TargetConfig, strong_share: float) -> float | None:
    """What sending ``strong_share`` of the traffic strong costs against sending all of it strong,
    at the targets' input + output prices (None when the strong target is free)."""
    price_weak, price_strong = (t.usd_per_1m_input_tokens + t.usd_per_1m_output_tokens for t in (weak, strong))
    if not price_strong:
        return None
    return (strong_share * price_strong + (1 - strong_share) * price_weak) / price_strong


def cost_usd(target: TargetConfig, usage: Usage) -> float:
    return (usage.prompt_tokens * target.usd_per_1m_input_tokens
            + usage.completion_tokens * target.usd_per_1m_output_tokens) / 1_000_000


@dataclass(frozen=True)
class Receipt:
    usage: Usage
    cost_usd: float
    baseline_cost_usd: float | None  # None for manual routing: there is no alternative to compare


class Accounting:
    def __init__(self, config: RouterConfig, counters: TokenCounters, stats: StatsSink) -> None:
        self._targets = {t.name: t for t in config.targets}
        self._counters = counters
        self.stats = stats

    def usage(self, decision: Decision, target: str, reported: Usage, text: str) -> Usage:
        """Usage as reported, or counted here when the upstream reported none."""
        if reported.prompt_tokens or reported.completion_tokens or not text:
            return reported
        return Usage(decision.prompt_tokens, self._counters.for_target(target).count_text(text))

    def settle(self, decision: Decision, target: str, reported: Usage, text: str, *, fell_back: bool) -> Receipt:
        """Price the answer and add it to the totals."""
        usage = self.usage(decision, target, reported, text)
        cost = cost_usd(self._targets[target], usage)
        baseline = None if decision.baseline_target is None else cost_usd(self._targets[decision.baseline_target],
                                                                          usage)
        self.stats.record(target, decision.policy, usage, cost, baseline, fallback=fell_back,
                          degraded=decision.degraded, confidence=decision.confidence,
                          low_confidence=decision.low_confidence)
        return Receipt(usage, cost, baseline)

    def failed(self, target: str | None) -> None:
        self.stats.record_error(target)
