"""The chart's Grafana dashboard and alert rules against a real Prometheus that scrapes a real
router (gunicorn) and Triton after real traffic: every panel query and alert expression is
evaluated through Prometheus's HTTP API, every metric they name must exist, and the alerts fire
for the faults they describe. Also: /metrics with several gunicorn workers."""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
import requests

from local_stack.prometheus import Monitoring, PrometheusServer, metric_names, render_monitoring
from local_stack.triton_launcher import TritonServer, free_port

from .conftest import router_config_dict, run_router

CHAT = "/v1/chat/completions"
ALERTS = ("LLMRouterHighErrorRate", "LLMRouterClassifierUnavailable", "LLMRouterCircuitOpen",
          "LLMRouterStrongShareDrift", "LLMRouterUnfamiliarTraffic")
UNFAMILIAR_BELOW, UNFAMILIAR_SHARE = 0.05, 0.25  # the alert's bucket and the chart's default share
# Prompts like nothing the classifier was trained on.
GIBBERISH = [f"zxqv wlorp gnarf {i} " * 8 for i in range(3)]


@pytest.fixture(scope="module")
def monitoring() -> Monitoring:
    helm = os.environ.get("HELM_BIN", "")
    if not helm:
        pytest.fail("env HELM_BIN is not set: run the tests via `make test` (it builds the pinned helm)")
    # The chart's rules as shipped, with windows and waits short enough for a test.
    short = [f"metrics.prometheusRule.{a}.for=0s" for a in
             ("errorRate", "classifierUnavailable", "circuitOpen", "strongShareDrift", "unfamiliarTraffic")]
    return render_monitoring(Path(helm), *short, "metrics.prometheusRule.window=10m",
                             "metrics.prometheusRule.strongShareDrift.window=10m",
                             "metrics.prometheusRule.unfamiliarTraffic.window=10m")


def observed_config(triton: TritonServer) -> dict:
    """The default config plus what makes every panel and alert show: a target that is down
    (with and without a fallback), a policy whose classifier is missing (degraded), and one whose
    low-confidence action overrides its strong share (drift)."""
    config = router_config_dict(triton)
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config["classifiers"].append({"name": "missing", "triton_model": "no_such_model"})
    config["targets"] += [
        {"name": "down", "kind": "openai", "url": closed, "model": "m", "context_window": 2048,
         "usd_per_1m_input_tokens": 0.01, "usd_per_1m_output_tokens": 0.01, "fallbacks": ["smollm2-135m"]},
        {"name": "dead", "kind": "openai", "url": closed, "model": "m", "context_window": 2048},
    ]
    config["policies"] += [
        {"name": "viadown", "classifier": "minilm", "weak": "down", "strong": "gemma3-270m", "threshold": 1.0},
        {"name": "lowconf", "classifier": "minilm", "weak": "smollm2-135m", "strong": "gemma3-270m",
         "strong_share": 0.2, "low_confidence": {"below": 1.0, "action": "strong"}},
        {"name": "degraded", "classifier": "missing", "weak": "smollm2-135m", "strong": "gemma3-270m",
         "strong_share": 0.2},
    ]
    # An open circuit stays open for the whole test.
    config["reliability"] = {"circuit_breaker": {"failure_threshold": 3, "window_s": 600, "cooldown_s": 600}}
    return config


def _chat(url: str, model: str, content: str = "Say hi.", **extra: object) -> requests.Response:
    return requests.post(url + CHAT, json={"model": model, "max_tokens": 2, "messages": [
        {"role": "user", "content": content}], **extra}, timeout=120)


class Traffic(NamedTuple):
    sent: int  # requests
    confidences: dict[str, list[float]]  # per policy: x-router-confidence of each classified answer


def _drive(url: str, training_prompts: list[str]) -> Traffic:
    """A traffic mix that exercises every series the dashboard reads. The default policy also gets
    prompts like nothing in training, `viadown` prompts from training (familiar)."""
    sent = []
    for i, prompt in enumerate(["What is 2+2?", "Prove that there are infinitely many primes.",
                                "Translate 'cat' to French.", "Explain the CAP theorem in depth."]):
        sent.append(_chat(url, "router", prompt))
        if i < 3:  # three failures open the circuit of `down`
            sent.append(_chat(url, "router:lowconf", prompt))
            sent.append(_chat(url, "router:viadown", training_prompts[i]))
            sent.append(_chat(url, "router", GIBBERISH[i]))
        if i < 2:
            sent.append(_chat(url, "router:degraded", prompt))
    with requests.post(url + CHAT, json={"model": "router", "stream": True, "max_tokens": 2, "messages": [
            {"role": "user", "content": "Stream a word."}]}, stream=True, timeout=120) as streamed:
        assert streamed.status_code == 200 and b"[DONE]" in streamed.content
        sent.append(streamed)
    sent += [requests.post(url + CHAT, json={"model": "router", "messages": []}, timeout=10)]  # a 400
    sent += [_chat(url, "dead") for _ in range(4)]  # 502s, then 503s once its circuit opens
    statuses = [r.status_code for r in sent]
    assert statuses.count(200) == len(sent) - 5 and 400 in statuses and {502, 503} & set(statuses), statuses
    confidences: dict[str, list[float]] = {}
    for r in sent:
        if "x-router-confidence" in r.headers:
            confidences.setdefault(r.headers["x-router-policy"], []).append(float(r.headers["x-router-confidence"]))
    return Traffic(len(sent), confidences)


@pytest.fixture(scope="module")
def scraped(triton: TritonServer, monitoring: Monitoring, routing_data: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, Traffic]]:
    lines = (routing_data / "mmlu-train.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    with run_router(observed_config(triton), tmp_path_factory.mktemp("observed")) as url:
        host = url.removeprefix("http://")
        triton_metrics = triton.metrics_url.removeprefix("http://").removesuffix("/metrics")
        with PrometheusServer({"router": [host], "triton": [triton_metrics]}, monitoring.rule_groups) as prom:
            # Both scraped before the traffic (rate() counts increases after a series' first sample).
            prom.wait_for("sum(up)", lambda r: bool(r) and float(r[0]["value"][1]) == 2)
            traffic = _drive(url, [json.loads(line)["prompt"] for line in lines])
            # Wait until a scrape after the last request has landed.
            prom.wait_for("sum(router_requests_total)",
                          lambda r: bool(r) and float(r[0]["value"][1]) == traffic.sent)
            time.sleep(3)  # and a few more, so that every series has samples on both sides of it
            yield prom, traffic


def test_rules_pass_promtool(monitoring: Monitoring, scraped: tuple[PrometheusServer, Traffic]) -> None:
    prom, _ = scraped
    assert f"SUCCESS: {len(ALERTS)} rules found" in prom.check_rules()
    assert {r["alert"] for r in monitoring.rules} == set(ALERTS)


def test_every_metric_the_dashboard_and_alerts_name_exists(monitoring: Monitoring,
                                                           scraped: tuple[PrometheusServer, Traffic]) -> None:
    prom, _ = scraped
    named = set().union(*(metric_names(q.expr) for q in monitoring.queries),
                        *(metric_names(r["expr"]) for r in monitoring.rules))
    assert {"router_requests_total", "router_overhead_seconds_bucket", "nv_inference_count"} <= named
    assert named - prom.metric_names() == set()


def test_every_dashboard_panel_returns_data(monitoring: Monitoring, scraped: tuple[PrometheusServer, Traffic]) -> None:
    prom, _ = scraped
    titles = {p["title"] for p in monitoring.dashboard["panels"] if p["type"] != "row"}
    assert len(titles) >= 12
    empty = []
    for q in monitoring.queries:
        values = [float(s["value"][1]) for s in prom.query(q.promql())]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{q.panel}: {q.expr} -> {values}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert {q.panel for q in monitoring.queries} == titles  # every panel has a query


def test_dashboard_figures_agree_with_the_traffic(scraped: tuple[PrometheusServer, Traffic]) -> None:
    prom, traffic = scraped

    def value(promql: str) -> dict[str, float]:
        return {"/".join(s["metric"].values()): float(s["value"][1]) for s in prom.query(promql)}

    assert value("sum(router_requests_total)") == {"": traffic.sent}
    assert value("max by (target) (router_circuit_breaker_state)") == {
        "dead": 2, "down": 2, "gemma3-270m": 0, "smollm2-135m": 0}
    assert value("sum by (from_target, to_target) (router_fallbacks_total)") == {"down/smollm2-135m": 3}
    assert value("sum by (policy) (router_degraded_decisions_total)") == {
        "default": 0, "lowconf": 0, "viadown": 0, "degraded": 2}
    # lowconf's action sends every prompt strong: its share is 1 against a setting of 0.2.
    shares = value('sum by (policy) (router_decisions_total{strong="true"}) / sum by (policy) (router_decisions_total)')
    assert shares["lowconf"] == 1.0 and shares["viadown"] == 0.0
    assert value("sum(router_time_to_first_token_seconds_count)") == {"": 1}
    # Every classified answer's confidence, as its header said, in the policy's histogram.
    assert value("sum by (policy) (router_classifier_confidence_count)") == {
        "default": 8, "lowconf": 3, "viadown": 3, "degraded": 0}
    below = value(f'sum by (policy) (router_classifier_confidence_bucket{{le="{UNFAMILIAR_BELOW}"}})')
    assert below == {p: sum(c <= UNFAMILIAR_BELOW for c in traffic.confidences.get(p, [])) for p in below}


def _unfamiliar_policies(confidences: dict[str, list[float]]) -> set[str]:
    """The policies whose share of prompts below the alert's confidence is above its share."""
    # Headers round to 4 decimals: none may sit where rounding could move it across the bucket edge,
    # and no policy's share where the alert's comparison would hang on Prometheus's arithmetic.
    assert not [c for cs in confidences.values() for c in cs if abs(c - UNFAMILIAR_BELOW) < 1e-3], confidences
    shares = {p: sum(c < UNFAMILIAR_BELOW for c in cs) / len(cs) for p, cs in confidences.items()}
    assert all(abs(share - UNFAMILIAR_SHARE) > 0.05 for share in shares.values()), shares
    return {p for p, share in shares.items() if share > UNFAMILIAR_SHARE}


def test_alerts_fire_for_the_faults(scraped: tuple[PrometheusServer, Traffic]) -> None:
    prom, traffic = scraped
    unfamiliar = _unfamiliar_policies(traffic.confidences)
    # The gibberish makes the default policy's traffic unfamiliar; viadown's training prompts are not.
    assert "default" in unfamiliar and "viadown" not in unfamiliar, traffic.confidences
    deadline = time.monotonic() + 60
    while True:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        firing = {(a["labels"]["alertname"], a["labels"].get("target") or a["labels"].get("policy"))
                  for a in prom.api("alerts")["alerts"] if a["state"] == "firing"}
        expected = {("LLMRouterCircuitOpen", "dead"), ("LLMRouterCircuitOpen", "down"),
                    ("LLMRouterClassifierUnavailable", "degraded"), ("LLMRouterStrongShareDrift", "lowconf"),
                    ("LLMRouterHighErrorRate", None)} | {("LLMRouterUnfamiliarTraffic", p) for p in unfamiliar}
        if expected <= firing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    assert expected <= firing
    # Healthy parts do not page: the working targets' circuits, the classifier-backed policies.
    assert not {("LLMRouterCircuitOpen", "smollm2-135m"), ("LLMRouterCircuitOpen", "gemma3-270m"),
                ("LLMRouterClassifierUnavailable", "default"), ("LLMRouterStrongShareDrift", "viadown")} & firing
    assert {p for name, p in firing if name == "LLMRouterUnfamiliarTraffic"} == unfamiliar


def test_metrics_add_up_across_gunicorn_workers(triton: TritonServer, tmp_path: Path) -> None:
    """Two workers of one thread each under concurrent requests: both serve, and any scrape
    (whichever worker answers it) counts all of them (prometheus_client's multiprocess mode)."""
    n, values = 12, tmp_path / "metrics"
    with run_router(router_config_dict(triton), tmp_path, {"WEB_CONCURRENCY": "2", "ROUTER_THREADS": "1",
                                                           "PROMETHEUS_MULTIPROC_DIR": str(values)}) as url:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: _chat(url, "smollm2-135m", f"Count to {i}."), range(n)))
        assert all(r.status_code == 200 for r in answers)
        assert len(list(values.glob("counter_*.db"))) == 2  # both workers counted requests
        completion = sum(r.json()["usage"]["completion_tokens"] for r in answers)
        from prometheus_client.parser import text_string_to_metric_families

        for _ in range(6):
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in
                       text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text)
                       for s in f.samples}
            assert samples[("router_requests_total", (("policy", "manual"), ("reason", "manual"),
                                                      ("status", "2xx"), ("target", "smollm2-135m")))] == n
            assert samples[("router_tokens_total", (("kind", "completion"), ("target", "smollm2-135m")))] == completion
            assert samples[("router_requests_in_flight", ())] == 0
