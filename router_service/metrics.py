"""Prometheus metrics of the router (``GET /metrics``): what it routes, what it costs against
always-strong, how long each part takes, and the state of its targets. One registry per app (no
process-global state); labels are bounded (policy, target, reason, status class: never a prompt,
a request id or a key).

Several gunicorn workers: ``gunicorn_conf`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker
imports prometheus_client, values then live in per-process files and a scrape of any worker
answers for all of them (prometheus_client's multiprocess mode). Gauges say how they aggregate."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .classifier import UNFAMILIAR_BELOW
from .config_base import PolicySettings

# From sub-millisecond routing overhead to long streamed generations; finer around the overhead
# aims (manual < 1 ms / < 3 ms, automatic < 8 ms / < 20 ms), so that quantiles read true there.
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
           5.0, 10.0, 30.0, 60.0, 120.0)
# The classifier's confidence (x-router-confidence): a bucket edge at UNFAMILIAR_BELOW, where
# the chart's dashboard and alert count unfamiliar prompts. Each policy's low_confidence.below
# becomes an edge as well (confidence_buckets).
CONFIDENCE_BUCKETS = (0.01, UNFAMILIAR_BELOW, 0.1, 0.25, 0.5, 0.75, 1.0)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
STATUS_CLASSES = ("2xx", "4xx", "5xx")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


SHADOW_OUTCOMES = ("done", "unjudged", "failed", "rate_limited", "over_budget", "busy", "private")


def confidence_buckets(policies: Sequence[PolicySettings]) -> tuple[float, ...]:
    """The confidence histogram's edges: the fixed ones and every policy's ``low_confidence.below``,
    so that the share of prompts a policy's action takes (or would take, with ``action: score``)
    reads exactly from one bucket."""
    edges = set(CONFIDENCE_BUCKETS) | {p.low_confidence.below for p in policies if p.low_confidence is not None}
    return tuple(sorted(edges))


class RouterMetrics:
    def __init__(self, policies: Sequence[PolicySettings] = (),
                 fallbacks: Mapping[str, Sequence[str]] | None = None) -> None:
        """``fallbacks``: every target, with the targets it falls back to."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._breaker_states: Callable[[], dict[str, str]] = dict
        self._published_breakers: dict[str, str] = {}
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        r = self.registry
        self.requests = Counter("router_requests", "Requests by policy, target, reason and status class",
                                ["policy", "target", "reason", "status"], registry=r)
        self.decisions = Counter("router_decisions", "Routing decisions of generation requests by policy; "
                                 "strong: the policy's strongest target was chosen", ["policy", "strong"], registry=r)
        self.duration = Histogram("router_request_duration_seconds", "End-to-end request duration",
                                  ["policy", "status"], buckets=BUCKETS, registry=r)
        self.overhead = Histogram("router_overhead_seconds", "The router's own time, upstream excluded",
                                  ["policy"], buckets=BUCKETS, registry=r)
        self.upstream = Histogram("router_upstream_duration_seconds", "Upstream call duration per target",
                                  ["target"], buckets=BUCKETS, registry=r)
        self.ttft = Histogram("router_time_to_first_token_seconds", "Streams: time from the request's arrival "
                              "to the first generated chunk, per target", ["target"], buckets=BUCKETS, registry=r)
        self.classifier = Histogram("router_classifier_duration_seconds", "Classification call duration",
                                    ["policy"], buckets=BUCKETS, registry=r)
        self.classifier_cache = Counter("router_classifier_cache", "Decision cache lookups: the same classifier "
                                        "input within its TTL reuses the score", ["classifier", "result"], registry=r)
        self.tokens = Counter("router_tokens", "Tokens by target and kind (prompt, completion)",
                              ["target", "kind"], registry=r)
        self.cost = Counter("router_cost_usd", "Cost of the answers in USD", ["policy", "target"], registry=r)
        self.baseline = Counter("router_baseline_cost_usd", "What the same tokens would have cost on the policy's "
                                "strongest target (savings = baseline - cost)", ["policy"], registry=r)
        self.fallbacks = Counter("router_fallbacks", "Answers served by a fallback", ["from_target", "to_target"],
                                 registry=r)
        self.degraded = Counter("router_degraded_decisions", "Decisions made without the classifier (failed open)",
                                ["policy"], registry=r)
        self.low_confidence = Counter("router_low_confidence_decisions", "Decisions a policy's low_confidence "
                                      "action made", ["policy"], registry=r)
        self.confidence = Histogram("router_classifier_confidence", "How familiar classified prompts are to the "
                                    "classifier (x-router-confidence): in-domain traffic puts a few percent below "
                                    "0.05, traffic unlike its training data far more", ["policy"],
                                    buckets=confidence_buckets(policies), registry=r)
        self.store_errors = Counter("router_store_errors", "Failed calls to the shared store (keys, limits, spend)",
                                    ["operation"], registry=r)
        self.refusals = Counter("router_access_refusals", "Requests refused by key checks, limits or budgets",
                                ["code"], registry=r)
        self.decision_log = Counter("router_decision_log_records", "Decision-log rows by outcome: written, or "
                                    "dropped because the writer fell behind (requests never wait for it)",
                                    ["outcome"], registry=r)
        for outcome in ("written", "dropped"):
            self.decision_log.labels(outcome)
        self.shadows = Counter("router_shadow_comparisons", "Shadow comparisons by policy and outcome: done, "
                               "unjudged, failed, or skipped (rate_limited, over_budget, busy, private)",
                               ["policy", "outcome"], registry=r)
        self.shadow_cost = Counter("router_shadow_cost_usd", "Cost of shadow and judge calls in USD",
                                   ["policy", "target"], registry=r)
        self.trials = Counter("router_release_trials", "Shadow trials of a candidate model version (release.py) "
                              "by classifier and outcome: scored, failed, or busy (skipped)", ["classifier", "outcome"],
                              registry=r)
        self.version_decisions = Counter("router_version_decisions", "Classifier decisions by policy, the model "
                                         "version that made them (a canary's beside the serving one) and whether "
                                         "they went to the strongest target", ["policy", "version", "strong"],
                                         registry=r)
        self.in_flight = Gauge("router_requests_in_flight", "Requests being served", registry=r,
                               multiprocess_mode="livesum")
        self.breaker = Gauge("router_circuit_breaker_state", "Circuit breaker per target: 0 closed, 1 half-open, "
                             "2 open (the worst over the workers)", ["target"], registry=r, multiprocess_mode="livemax")
        self.model_info = Gauge("router_classifier_model_info", "1 for the classifier model version that answered "
                                "last, 0 for earlier ones", ["version"], registry=r,
                                multiprocess_mode="livemostrecent")
        share_setting = Gauge("router_policy_strong_share_setting", "The strong share a policy is configured "
                              "for (compare with router_decisions_total)", ["policy"], registry=r,
                              multiprocess_mode="max")
        for p in policies:
            if p.strong_share_setting is not None:
                share_setting.labels(p.name).set(p.strong_share_setting)
        self._start_at_zero(policies, fallbacks or {})
        self._version: str | None = None

    def _start_at_zero(self, policies: Sequence[PolicySettings], fallbacks: Mapping[str, Sequence[str]]) -> None:
        """Create the series the configuration already names, at 0: a series born at its first
        increment hides that increment from rate(), and panels would say "no data" for a
        policy that never picked its strong target."""
        for target, later in fallbacks.items():
            for fallback in later:
                self.fallbacks.labels(target, fallback)
            self.upstream.labels(target)
            self.ttft.labels(target)
            for status in STATUS_CLASSES:
                self.requests.labels("manual", target, "manual", status)
        self.requests.labels("none", "none", "none", "4xx")  # refused before a decision
        for p in policies:
            for target in p.targets:
                for status in STATUS_CLASSES:
                    self.requests.labels(p.name, target, "classifier", status)
            for strong in ("true", "false"):
                self.decisions.labels(p.name, strong)
            self.overhead.labels(p.name)
            self.classifier.labels(p.name)
            self.duration.labels(p.name, "2xx")
            self.baseline.labels(p.name)
            self.degraded.labels(p.name)
            self.low_confidence.labels(p.name)
            self.confidence.labels(p.name)
            for target in p.targets:
                self.cost.labels(p.name, target)
            if p.shadow is not None and p.shadow.share > 0:
                for outcome in SHADOW_OUTCOMES:
                    self.shadows.labels(p.name, outcome)
                for target in {*p.targets, *([p.shadow.judge] if p.shadow.judge else [])}:
                    self.shadow_cost.labels(p.name, target)

    def watch_breakers(self, states: Callable[[], dict[str, str]]) -> None:
        """Where the breaker states come from (the dispatcher, built after the metrics)."""
        self._breaker_states = states
        self.refresh_breakers()

    def refresh_breakers(self) -> None:
        """Publish this process's breaker states (at scrape time; see after_upstream_call)."""
        for target, state in self._breaker_states().items():
            if self._published_breakers.get(target) != state:
                self.breaker.labels(target).set(BREAKER_STATES[state])
                self._published_breakers[target] = state

    def after_upstream_call(self) -> None:
        """One process answers its own scrapes, and refreshes the states then; with several, a
        scrape reads the others' files, so each publishes what its calls changed as they end."""
        if self._multiprocess:
            self.refresh_breakers()

    def set_model_version(self, version: str) -> None:
        if version != self._version:  # a new version answered: it alone is current
            if self._version is not None:
                self.model_info.labels(self._version).set(0)
            self.model_info.labels(version).set(1)
            self._version = version

    def render(self) -> bytes:
        self.refresh_breakers()
        if not self._multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
