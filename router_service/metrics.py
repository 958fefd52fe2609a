"""Prometheus metrics of the router (``GET /metrics``): what it routes, what it costs against
always-strong, how long each part takes, and the state of its targets. One registry per app (no
process-global state); labels are bounded (policy, target, reason, status class: never a prompt,
a request id or a key). Per process: with several gunicorn workers each answers for itself."""
from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# From sub-millisecond routing overhead to long streamed generations.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class _Breakers(Collector):
    """Circuit-breaker state per target, read at scrape time (0 closed, 1 half-open, 2 open)."""

    def __init__(self, states: Callable[[], dict[str, str]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("router_circuit_breaker_state", "Circuit breaker per target: 0 closed, "
                                   "1 half-open, 2 open", labels=["target"])
        for target, state in sorted(self._states().items()):
            family.add_metric([target], BREAKER_STATES[state])
        yield family


class RouterMetrics:
    def __init__(self, breaker_states: Callable[[], dict[str, str]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("router_requests", "Requests by policy, target, reason and status class",
                                ["policy", "target", "reason", "status"], registry=r)
        self.duration = Histogram("router_request_duration_seconds", "End-to-end request duration",
                                  ["policy", "status"], buckets=BUCKETS, registry=r)
        self.overhead = Histogram("router_overhead_seconds", "The router's own time, upstream excluded",
                                  ["policy"], buckets=BUCKETS, registry=r)
        self.upstream = Histogram("router_upstream_duration_seconds", "Upstream call duration per target",
                                  ["target"], buckets=BUCKETS, registry=r)
        self.classifier = Histogram("router_classifier_duration_seconds", "Classification call duration",
                                    ["policy"], buckets=BUCKETS, registry=r)
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
        self.in_flight = Gauge("router_requests_in_flight", "Requests being served", registry=r)
        self.model_info = Gauge("router_classifier_model_info", "The classifier model version that last answered",
                                ["version"], registry=r)
        r.register(_Breakers(breaker_states))
        self._version: str | None = None

    def set_model_version(self, version: str) -> None:
        if version != self._version:  # a new version answered: it alone is current
            self.model_info.clear()
            self.model_info.labels(version).set(1)
            self._version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)
