"""The performance aims (README, "Benchmarks") against one `make bench` run: which this machine
reached. A report at the end of the run, never a pass/fail gate: on a shared VM the hour and the
CPU decide much of it, so the same code meets an aim in one run and misses it in the next."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Aim:
    name: str
    key: str  # the figure in `make bench`'s results
    target: float
    below: bool  # latency: the figure must stay below the target; else reach at least it
    unit: str
    missing: str  # what a run needs to measure it (a step or a flag)

    def check(self, results: dict[str, Any]) -> dict[str, Any]:
        value = results.get(self.key)
        if not isinstance(value, (int, float)):
            return {"aim": self.name, "target": self.describe(), "value": None, "met": None,
                    "missing": self.missing}
        met = value < self.target if self.below else value >= self.target
        return {"aim": self.name, "target": self.describe(), "value": value, "unit": self.unit, "met": met}

    def describe(self) -> str:
        return f"{'<' if self.below else '>='} {self.target:g}{self.unit}"


_RATE = "a fixed rate of 50 requests/s (--rates 50, vegeta)"
_PEER = "LiteLLM side by side (--litellm) and wrk (--wrk)"
AIMS = (
    Aim("manual routing overhead at 50 requests/s, p50", "rate_manual_r50_overhead_p50_ms", 1, True, " ms", _RATE),
    Aim("manual routing overhead at 50 requests/s, p99", "rate_manual_r50_overhead_p99_ms", 3, True, " ms", _RATE),
    Aim("automatic routing overhead at 50 requests/s, p50", "rate_auto_r50_overhead_p50_ms", 8, True, " ms", _RATE),
    Aim("automatic routing overhead at 50 requests/s, p99", "rate_auto_r50_overhead_p99_ms", 20, True, " ms", _RATE),
    Aim("manual routing requests/s at 64 connections over LiteLLM's", "ratio_manual_vs_litellm_c64_rps", 10, False,
        "x", _PEER),
    Aim("automatic routing requests/s at 64 connections over LiteLLM's", "ratio_auto_vs_litellm_c64_rps", 3, False,
        "x", _PEER),
    Aim("concurrent streams through one router process, ended with [DONE]", "streams_ok", 1000, False, "",
        "the streams step (--streams 1000)"),
    Aim("short requests answered while every stream still ran (1 = yes)", "shorts_before_any_stream_ended", 1, False,
        "", "the streams step (--streams 1000)"),
)


def check(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each aim with this run's figure and whether it met it (None: the run did not measure it)."""
    return [aim.check(results) for aim in AIMS]


def report(rows: list[dict[str, Any]]) -> str:
    """The rows as the lines `make bench` prints last."""
    lines = []
    for row in rows:
        if row["met"] is None:
            lines.append(f"   {'-':8} {row['aim']} (aim {row['target']}): not measured; needs {row['missing']}")
        else:
            lines.append(f"   {'met' if row['met'] else 'not met':8} {row['aim']}: {row['value']:g}{row['unit']} "
                         f"(aim {row['target']})")
    return "\n".join(lines)
