"""Shadow comparisons: for a share of a policy's answered requests (``shadow.share``), the other
end of the policy answers the same request in the background, a judge target grades the two
answers, and the decision log keeps the other answer and the verdict. The verdict goes in as
feedback grades (``comment: judge:<target>``), so ``export.from_log`` turns judged prompts into
routing data the way RouteLLM's LLM-judge augmentation does.

The user's answer never waits: jobs go to a small bounded pool after the request ended; a
per-policy rate (``max_per_minute``) and daily budget (``budget_usd_per_day``) cap them, per
router process. Skipped jobs are counted by reason, and shadow and judge calls by cost, in the
metrics. Prompts the privacy rule matched are never shadowed (the other target or the judge may
be external)."""
from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .accounting import cost_usd
from .config import RouterConfig
from .config_base import PolicySettings
from .decision_log import DecisionLog, FeedbackRow, ShadowRow
from .dispatch import Dispatcher
from .generation import GenerationRequest, Message
from .metrics import RouterMetrics
from .policy import Decision, stable_fraction, window_text
from .targets import TargetError

JUDGE_PROMPT = """You compare two answers to the same request.

Request:
{question}

Answer A:
{a}

Answer B:
{b}

Which answer is better? Reply with one word: A, B or TIE."""
JUDGE_MAX_TOKENS = 4
MAX_PENDING = 64  # shadow jobs waiting or running; beyond that new ones are skipped


@dataclass(frozen=True)
class ShadowJob:
    request: GenerationRequest  # as the user sent it
    policy: PolicySettings
    served: str  # the target that answered the user
    answer: str
    keep_text: bool  # the decision log keeps this policy's text


_NAMED = re.compile(r"\b(?i:answer|is)\s+([AB])\b")  # the letter itself must be a capital


def verdict_of(reply: str) -> str | None:
    """"A", "B" or "TIE" from the judge's reply (its first word, or "answer B" / "is A" in it);
    None when it says neither."""
    words = reply.strip().upper().replace(".", " ").replace(":", " ").replace(",", " ").split()
    if words and words[0] in ("A", "B", "TIE"):
        return words[0]
    named = _NAMED.search(reply)
    return named.group(1) if named else None


class _Allowance:
    """Per policy: at most ``per_minute`` jobs in a rolling minute and ``budget`` USD a UTC day."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: dict[str, list[float]] = {}
        self._spent: dict[tuple[str, int], float] = {}

    def take(self, policy: str, per_minute: int, budget: float | None) -> str | None:
        """None when a job may start (and it is counted), else the reason it may not."""
        now = time.time()
        with self._lock:
            if budget is not None and self._spent.get((policy, int(now // 86400)), 0.0) >= budget:
                return "over_budget"
            starts = [t for t in self._starts.get(policy, []) if now - t < 60.0]
            if len(starts) >= per_minute:
                self._starts[policy] = starts
                return "rate_limited"
            self._starts[policy] = starts + [now]
            return None

    def spend(self, policy: str, usd: float) -> None:
        with self._lock:
            day = (policy, int(time.time() // 86400))
            self._spent[day] = self._spent.get(day, 0.0) + usd


class Shadows:
    def __init__(self, config: RouterConfig, dispatcher: Dispatcher, decision_log: DecisionLog | None,
                 metrics: RouterMetrics) -> None:
        self._config, self._dispatcher, self._log, self._metrics = config, dispatcher, decision_log, metrics
        self._allowance = _Allowance()
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shadow")

    def consider(self, request: GenerationRequest, decision: Decision, served: str, answer: str,
                 policy: PolicySettings) -> None:
        """After an answered policy request: start a shadow job if the policy samples this one."""
        shadow = policy.shadow
        if shadow is None or shadow.share <= 0 or request.request_id is None:
            return
        if stable_fraction(f"shadow:{request.request_id}") >= shadow.share:
            return
        outcome = "private" if decision.private is not None else \
            self._allowance.take(policy.name, shadow.max_per_minute, shadow.budget_usd_per_day)
        if outcome is None and not self._pending.acquire(blocking=False):
            outcome = "busy"
        if outcome is not None:
            self._metrics.shadows.labels(policy.name, outcome).inc()
            return
        keep = self._log is not None and self._log.keeps_text(policy.name, private=False)
        self._pool.submit(self._run, ShadowJob(request, policy, served, answer, keep))

    # --- in the pool ------------------------------------------------------------------------
    def _run(self, job: ShadowJob) -> None:
        policy, request_id = job.policy, job.request.request_id or ""
        judge = policy.shadow.judge if policy.shadow is not None else None
        try:
            other = policy.targets[0] if job.served == policy.targets[-1] else policy.targets[-1]
            shadow_request = dataclasses.replace(job.request, model=other, stream=False, include_usage=False,
                                                 request_id=f"{request_id}-shadow")
            completion, _ = self._dispatcher.complete((other,), shadow_request)
            cost = self._charge(policy.name, other, cost_usd(self._config.target(other), completion.usage))
            verdict, judge_cost = None, None
            if judge:
                try:
                    verdict, judge_cost = self._judge(job, judge, other, completion.text)
                except TargetError:  # the judge failed: the other answer is still worth keeping
                    pass
            if self._log is not None:
                self._log.add(ShadowRow(request_id, time.time(), policy.name, other,
                                        completion.text if job.keep_text else None, cost, judge, verdict, judge_cost))
                if verdict is not None:  # the verdict as grades, the way a person's comparison is logged
                    grades = {job.served: 0.5, other: 0.5} if verdict == "tie" else \
                        {job.served: float(verdict == "served"), other: float(verdict == "shadow")}
                    self._log.add(FeedbackRow(request_id, time.time(), None, None, json.dumps(grades, sort_keys=True),
                                              f"judge:{judge}"))
            self._metrics.shadows.labels(policy.name, "unjudged" if judge and verdict is None else "done").inc()
        except TargetError:
            self._metrics.shadows.labels(policy.name, "failed").inc()
        finally:
            self._pending.release()

    def _charge(self, policy: str, target: str, usd: float) -> float:
        self._allowance.spend(policy, usd)
        self._metrics.shadow_cost.labels(policy, target).inc(usd)
        return usd

    def _judge(self, job: ShadowJob, judge: str, other: str, other_answer: str) -> tuple[str | None, float]:
        """("served" | "shadow" | "tie" | None, the judge call's cost). The answers' order is
        drawn per request (a stable hash), so a judge's preference for A or B averages out."""
        served_first = stable_fraction(f"order:{job.request.request_id or ''}") < 0.5
        a, b = (job.answer, other_answer) if served_first else (other_answer, job.answer)
        question = window_text(job.request.messages, job.policy.window)
        prompt = JUDGE_PROMPT.format(question=question, a=a, b=b)
        request = GenerationRequest(model=judge, kind="chat", messages=(Message("user", prompt, {"role": "user",
                                                                                                "content": prompt}),),
                                    max_tokens=JUDGE_MAX_TOKENS, temperature=0.0,
                                    request_id=f"{job.request.request_id}-judge")
        completion, _ = self._dispatcher.complete((judge,), request)
        cost = self._charge(job.policy.name, judge, cost_usd(self._config.target(judge), completion.usage))
        said = verdict_of(completion.text)
        if said is None:
            return None, cost
        if said == "TIE":
            return "tie", cost
        return ("served" if (said == "A") == served_first else "shadow"), cost
