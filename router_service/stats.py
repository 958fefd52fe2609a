"""Running cost and usage totals, by target and by policy.

Savings of a policy-routed answer = what its tokens would have cost on the policy's strong
target (the most expensive one, for tiered policies) minus what they cost on the target that
served it. Totals are per router process (one gunicorn worker by default; per pod in Kubernetes).
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from .classifier import UNFAMILIAR_BELOW
from .generation import Usage


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0  # policy-routed requests only: the always-strong cost

    @property
    def savings_usd(self) -> float:
        return self.baseline_cost_usd - self.cost_usd if self.baseline_cost_usd else 0.0

    def add(self, other: "Totals") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "savings_usd": round(self.savings_usd, 10)}


# Counts beside the totals, in both Stats and shared_stats.SharedStats: answers served by a
# fallback, decided without the classifier (degraded), whose classifier gave a confidence, routed by
# a policy's low_confidence action, and below UNFAMILIAR_BELOW whatever the policy did.
COUNTERS = ("fallbacks", "degraded", "classified_with_confidence", "low_confidence", "unfamiliar")


def with_policy_savings(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The total's savings are the policies' savings: a request that names a target directly has
    no always-strong baseline, so its cost must not count against them."""
    snapshot["total"]["savings_usd"] = round(sum(p["savings_usd"] for p in snapshot["by_policy"].values()), 10)
    return snapshot


class StatsSink(Protocol):
    """Stats (this process) or shared_stats.SharedStats (every process, through the store)."""

    def record(self, target: str, policy: str | None, usage: Usage, cost_usd: float,
               baseline_cost_usd: float | None, *, fallback: bool = False, degraded: bool = False,
               confidence: float | None = None, low_confidence: bool = False) -> None: ...

    def record_error(self, target: str | None) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


class Stats:
    """Totals in this process (one gunicorn worker). shared_stats.SharedStats sums them over
    every process through the store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_target: dict[str, Totals] = defaultdict(Totals)
        self._by_policy: dict[str, Totals] = defaultdict(Totals)
        self._total = Totals()
        self._counts = dict.fromkeys(COUNTERS, 0)

    def record(self, target: str, policy: str | None, usage: Usage, cost_usd: float,
               baseline_cost_usd: float | None, *, fallback: bool = False, degraded: bool = False,
               confidence: float | None = None, low_confidence: bool = False) -> None:
        with self._lock:
            buckets = [self._by_target[target], self._total]
            if policy is not None:
                buckets.append(self._by_policy[policy])
            for totals in buckets:
                totals.requests += 1
                totals.prompt_tokens += usage.prompt_tokens
                totals.completion_tokens += usage.completion_tokens
                totals.cost_usd += cost_usd
            if policy is not None and baseline_cost_usd is not None:
                self._by_policy[policy].baseline_cost_usd += baseline_cost_usd
                self._total.baseline_cost_usd += baseline_cost_usd
            counts = self._counts
            counts["fallbacks"] += int(fallback)
            counts["degraded"] += int(degraded)
            counts["classified_with_confidence"] += int(confidence is not None)
            counts["low_confidence"] += int(low_confidence)
            counts["unfamiliar"] += int(confidence is not None and confidence < UNFAMILIAR_BELOW)

    def record_error(self, target: str | None) -> None:
        with self._lock:
            self._total.errors += 1
            if target is not None:
                self._by_target[target].errors += 1

    def drain(self) -> "Stats":
        """What was recorded since the last drain, as a Stats of its own; this one starts over."""
        fresh = Stats()
        with self._lock:
            drained = Stats()
            drained._by_target, drained._by_policy, drained._total = self._by_target, self._by_policy, self._total
            drained._counts = self._counts
            self._by_target, self._by_policy, self._total = fresh._by_target, fresh._by_policy, fresh._total
            self._counts = fresh._counts
        return drained

    def merge(self, other: "Stats") -> None:
        """Add ``other``'s totals to these."""
        with self._lock:
            for mine, theirs in ((self._by_target, other._by_target), (self._by_policy, other._by_policy)):
                for name, totals in theirs.items():
                    mine[name].add(totals)
            self._total.add(other._total)
            for name, count in other._counts.items():
                self._counts[name] += count

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def groups(self) -> dict[str, Totals]:
        """Every bucket by its name in the store: ``total``, ``target:<name>``, ``policy:<name>``."""
        return {"total": self._total, **{f"target:{k}": v for k, v in self._by_target.items()},
                **{f"policy:{k}": v for k, v in self._by_policy.items()}}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return with_policy_savings({
                "total": self._total.as_dict(),
                "by_target": {k: v.as_dict() for k, v in sorted(self._by_target.items())},
                "by_policy": {k: v.as_dict() for k, v in sorted(self._by_policy.items())},
                **self._counts,
            })
