"""The router end to end: real gunicorn router -> real Triton (classifier + local LLMs)."""
from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.utils import floatToGoString

from router_service.classifier import UNFAMILIAR_BELOW, ClassifierUnavailable
from router_service.classifier_client import ClassifierClient
from router_service.metrics import CONFIDENCE_BUCKETS
from router_service.request_log import RequestLog
from local_stack.triton_launcher import TritonPorts, TritonServer, free_port

from .conftest import ROOT, router_config_dict, run_router

CHAT = "/v1/chat/completions"
PROMPTS = [
    "What is the capital of France?",
    "Prove that there are infinitely many primes, then generalise the argument to primes of the form 4k+3.",
    "Say hello.",
    "Find the degree of the field extension Q(sqrt(2), sqrt(3)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:",
]


def _chat(url: str, **body: object) -> requests.Response:
    body.setdefault("model", "router")
    body.setdefault("messages", [{"role": "user", "content": "Say hello in one short sentence."}])
    body.setdefault("max_tokens", 12)
    body.setdefault("temperature", 0)
    return requests.post(url + CHAT, json=body, timeout=120)


def _sse_events(resp: requests.Response) -> list[str]:
    return [line[len("data: "):] for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]


def test_classifier_through_triton_batch(triton: TritonServer) -> None:
    client = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30)
    batch = client.score(PROMPTS)
    assert len(batch) == len(PROMPTS)
    assert all(0.0 <= s <= 1.0 for s in batch)
    assert client.score(PROMPTS) == pytest.approx(batch, abs=1e-6)  # deterministic
    singles = [client.score([p])[0] for p in PROMPTS]
    assert singles == pytest.approx(batch, abs=1e-5)  # batching/padding does not change a score
    assert len(set(round(s, 6) for s in batch)) > 1  # the scores depend on the prompt
    client.close()


def test_classifier_over_http_answers_as_over_grpc(triton: TritonServer) -> None:
    """The gevent worker's client (Triton's HTTP endpoint) returns what the gRPC one does: the same
    classifications and version, calibration, quality curve, versions and readiness."""
    grpc = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30)
    http = ClassifierClient(triton.http_url, "router_classifier", timeout_s=30, protocol="http")
    try:
        over_http = http.classify(PROMPTS, request_id="http-1")
        assert over_http == grpc.classify(PROMPTS)
        assert over_http[0].model_version and over_http[0].confidence is not None and over_http[0].strong_share is not None
        assert http.calibration() == grpc.calibration() and http.calibration()
        assert http.quality() == grpc.quality()
        assert http.versions() == grpc.versions() and http.is_ready()
        with pytest.raises(ClassifierUnavailable):
            http.classify(PROMPTS[:1], version="99")  # a version Triton does not serve
    finally:
        grpc.close()
        http.close()
    down = ClassifierClient(f"http://127.0.0.1:{free_port()}", "router_classifier", timeout_s=2, protocol="http")
    assert not down.is_ready()
    with pytest.raises(ClassifierUnavailable):
        down.classify(PROMPTS[:1])


def test_models_lists_policies_and_targets(router_url: str) -> None:
    resp = requests.get(router_url + "/v1/models", timeout=10)
    assert resp.status_code == 200
    models = {m["id"]: m for m in resp.json()["data"]}
    assert models["router"]["router"]["kind"] == "policy"
    assert models["router:default"]["router"]["weak"] == "smollm2-135m"
    assert models["smollm2-135m"]["router"]["target_kind"] == "triton"
    assert models["gemma3-270m"]["owned_by"] == "triton"


def test_automatic_routing_uses_the_classifier(router_url: str, triton: TritonServer) -> None:
    prompt = PROMPTS[1]
    resp = _chat(router_url, messages=[{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": prompt}])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    score = float(resp.headers["x-router-score"])
    expected = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30).classify([prompt])[0]
    assert score == pytest.approx(expected.score, abs=1e-5)  # the last user turn is what was classified
    share = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())["policies"][0]["strong_share"]
    target = "gemma3-270m" if expected.strong_share <= share else "smollm2-135m"
    assert resp.headers["x-router-target"] == body["model"] == target
    assert resp.headers["x-router-policy"] == "default"
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"].strip()
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert float(resp.headers["x-router-overhead-ms"]) >= 0
    assert resp.headers["x-request-id"]


@pytest.mark.parametrize("threshold, target", [(0.0, "gemma3-270m"), (1.0, "smollm2-135m")])
def test_threshold_override_picks_the_target(router_url: str, threshold: float, target: str) -> None:
    resp = _chat(router_url, router={"threshold": threshold}, max_tokens=4)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-router-target"] == target


def test_manual_routing_skips_the_classifier(router_url: str) -> None:
    resp = _chat(router_url, model="smollm2-135m", max_tokens=4, stop=["\n"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-router-target"] == "smollm2-135m"
    assert resp.headers["x-router-policy"] == "manual"
    assert "x-router-score" not in resp.headers
    assert resp.headers["x-request-id"]


def test_request_id_is_propagated(router_url: str) -> None:
    resp = requests.post(router_url + CHAT, headers={"X-Request-ID": "abc-123"},
                         json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}],
                               "max_tokens": 2}, timeout=60)
    assert resp.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize("model", ["router", "smollm2-135m"])
def test_streaming_matches_non_streaming(router_url: str, model: str) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    plain = _chat(router_url, model=model, messages=messages, max_tokens=16)
    assert plain.status_code == 200, plain.text
    with requests.post(router_url + CHAT, json={"model": model, "messages": messages, "max_tokens": 16,
                                                "temperature": 0, "stream": True,
                                                "stream_options": {"include_usage": True}},
                       stream=True, timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-router-target"] == plain.headers["x-router-target"]
        events = _sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain.json()["choices"][0]["message"]["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == [plain.json()["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain.json()["usage"]


# --- client errors: OpenAI-style error JSON, the right 4xx, and the service keeps working ---

def _assert_error(resp: requests.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    "data, status, param",
    [
        (b"{not json", 400, None),
        (b"", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"model": "router"}).encode(), 400, "messages"),
        (json.dumps({"model": "router", "messages": []}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (json.dumps({"model": "router", "messages": "hello"}).encode(), 400, "messages"),
        (json.dumps({"model": "router", "messages": [{"role": "user", "content": 5}]}).encode(), 400,
         "messages[0].content"),
        (json.dumps({"model": "router", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400,
         "messages[0].role"),
        (json.dumps({"model": "router", "messages": [{"role": "user"}]}).encode(), 400, "messages[0].content"),
        (json.dumps({"model": "router", "messages": [{"role": "user", "content": "x"}],
                     "temperature": "hot"}).encode(), 400, "temperature"),
        (json.dumps({"model": "router", "messages": [{"role": "user", "content": "x"}],
                     "temperature": 3}).encode(), 400, "temperature"),
        (json.dumps({"model": "router", "messages": [{"role": "user", "content": "x"}],
                     "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "router", "messages": [{"role": "user", "content": "x"}],
                     "stream": "yes"}).encode(), 400, "stream"),
        (json.dumps({"model": "router", "messages": [{"role": "user", "content": "x"}], "n": 2}).encode(), 400,
         "n"),
        (json.dumps({"model": "router", "messages": [{"role": "user", "content": "x"}],
                     "router": {"threshold": 2}}).encode(), 400, "router.threshold"),
        # Deeply nested JSON, at the top and inside a field: a 400, not a recursion error (a 500).
        (b"[" * 5000 + b"]" * 5000, 400, None),
        (b'{"model": "router", "messages": [{"role": "user", "content": "x"}], "metadata": ' + b'{"a": ' * 5000
         + b'1' + b'}' * 5001, 400, None),
        (b'{"model": "router", "messages": "\xff\xfe"}', 400, None),  # not UTF-8
        (json.dumps({"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "model"),
        (json.dumps({"model": "router:nope", "messages": [{"role": "user", "content": "x"}]}).encode(), 404,
         "model"),
    ],
)
def test_client_errors(router_url: str, data: bytes, status: int, param: str | None) -> None:
    resp = requests.post(router_url + CHAT, data=data, headers={"Content-Type": "application/json"}, timeout=10)
    _assert_error(resp, status, param)


def test_openapi_document_covers_every_route_and_validates_bodies(router_url: str) -> None:
    import jsonschema

    doc = requests.get(router_url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    from router_service.app import create_app
    from router_service.config import load_config

    app = create_app(load_config(ROOT / "config" / "router.yaml", environ={}))
    routes = {re.sub(r"<(\w+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()
              if not rule.endpoint.endswith("static")}  # the app's and the playground's assets
    assert routes == set(doc["paths"])  # every route documented, nothing documented that is not served
    schemas = doc["components"]["schemas"]

    def validator(name: str) -> jsonschema.Draft202012Validator:
        schema = {**schemas[name], "$defs": schemas}
        jsonschema.Draft202012Validator.check_schema(schema)
        return jsonschema.Draft202012Validator(json.loads(json.dumps(schema).replace("#/components/schemas/",
                                                                                      "#/$defs/")))

    chat = validator("ChatCompletionRequest")
    body = {"model": "router", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 3, "router": {"strong_share": 0.2}, "stream": True}
    chat.validate(body)
    for bad in ({**body, "temprature": 1}, {**body, "messages": []}, {**body, "router": {"threshold": 2}}):
        assert not chat.is_valid(bad)
        assert requests.post(router_url + CHAT, json=bad, timeout=10).status_code == 400  # the server agrees
    validator("CompletionRequest").validate({"model": "router", "prompt": ["once"]})


def test_body_over_the_limit_is_413(router_url: str) -> None:
    big = {"model": "router", "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    _assert_error(requests.post(router_url + CHAT, json=big, timeout=30), 413)


def test_unknown_route_and_method(router_url: str) -> None:
    _assert_error(requests.get(router_url + "/v1/nothing", timeout=5), 404)
    _assert_error(requests.get(router_url + CHAT, timeout=5), 405)


def test_service_keeps_working_after_errors(router_url: str) -> None:
    for _ in range(3):
        requests.post(router_url + CHAT, data=b"{", timeout=5)
    assert _chat(router_url, model="smollm2-135m", max_tokens=2).status_code == 200


def test_unreachable_target_is_503(triton: TritonServer, tmp_path: Path) -> None:
    config = router_config_dict(triton)
    config["targets"].append({"name": "down", "kind": "triton", "model": "smollm2_135m", "context_window": 2048,
                              "url": f"http://127.0.0.1:{free_port()}"})
    with run_router(config, tmp_path) as url:
        error = _assert_error(_chat(url, model="down"), 503)
        assert error["type"] == "api_error" and "down" in error["message"]
        with requests.post(url + CHAT, json={"model": "down", "stream": True,
                                             "messages": [{"role": "user", "content": "x"}]}, timeout=30) as resp:
            _assert_error(resp, 503)


def test_readiness_follows_triton(model_repo: Path, tmp_path: Path) -> None:
    """A Triton of our own (classifier only) so that stopping it leaves the shared one alone."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "router_classifier").symlink_to(model_repo / "router_classifier")
    server = TritonServer(repo, ports=TritonPorts.free(),
                          log_file=tmp_path / "triton.log")
    server.start(timeout_s=300)
    try:
        with run_router(router_config_dict(server), tmp_path) as url:
            ready = requests.get(url + "/health/ready", timeout=30)
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            server.stop()
            not_ready = requests.get(url + "/health/ready", timeout=30)
            assert not_ready.status_code == 503 and not_ready.json()["status"] == "not_ready"
            assert requests.get(url + "/health/live", timeout=5).status_code == 200
            # With the classifier gone, automatic routing answers 503, not 500.
            _assert_error(_chat(url), 503)
    finally:
        server.stop()


# --- calibration: strong_share routing with the calibration stored in the served version ---

def test_calibration_is_served_with_the_model(router_url: str, triton: TritonServer) -> None:
    client = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30)
    calibration = client.calibration()
    assert calibration is not None and list(calibration) == [f"{k / 10:.1f}" for k in range(1, 10)]
    thresholds = list(calibration.values())
    assert thresholds == sorted(thresholds, reverse=True)  # a larger strong share needs a lower threshold
    stats = requests.get(router_url + "/v1/router/stats", timeout=10).json()
    assert stats["calibration"]["minilm"] == calibration
    # The version's quality/cost curve, on the same grid (the playground draws it).
    quality = client.quality()
    assert quality is not None and list(quality) == list(calibration)
    assert all(0.5 < q <= 1.5 for q in quality.values())
    assert stats["calibration_quality"]["minilm"] == quality
    for c in client.classify(PROMPTS):
        assert c.strong_share is not None and 0.0 <= c.strong_share <= 1.0
    # strong_share is monotone in the score: higher score, smaller share of traffic above it.
    ranked = sorted(client.classify(PROMPTS), key=lambda c: c.score)
    assert [c.strong_share for c in ranked] == sorted((c.strong_share for c in ranked), reverse=True)


def test_quality_target_routes_by_the_share_the_curve_implies(triton: TritonServer, tmp_path: Path) -> None:
    """`quality: 0.95`: the strong share where the served version's quality/cost curve reaches 95%
    of the strong model's quality (computed here independently, on a fine grid)."""
    import numpy as np

    config = router_config_dict(triton)
    config["policies"].append({"name": "keep-95", "classifier": "minilm", "weak": "smollm2-135m",
                               "strong": "gemma3-270m", "quality": 0.95})
    curve = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30).quality()
    assert curve is not None
    xs, ys = [float(k) for k in curve] + [1.0], list(curve.values()) + [1.0]
    grid = np.linspace(xs[0], 1.0, 100_001)
    share = float(grid[np.argmax(np.interp(grid, xs, ys) >= 0.95)])
    with run_router(config, tmp_path) as url:
        for prompt in PROMPTS:
            resp = requests.post(url + "/v1/router/route", timeout=30, json={
                "model": "router:keep-95", "messages": [{"role": "user", "content": prompt}]})
            assert resp.status_code == 200, resp.text
            d = resp.json()
            assert d["strong_share"] == pytest.approx(share, abs=1e-4)
            assert d["target"] == ("gemma3-270m" if d["score_strong_share"] <= d["strong_share"] else "smollm2-135m")
        policy = requests.get(url + "/v1/router/stats", timeout=10).json()["policies"]["keep-95"]
        assert policy["quality"] == 0.95 and policy["implied_strong_share"] == pytest.approx(share, abs=1e-4)
        # Prices (input + output per 1M): weak 0.04, strong 0.10.
        assert policy["implied_cost_vs_always_strong"] == pytest.approx((share * 0.10 + (1 - share) * 0.04) / 0.10,
                                                                         abs=1e-3)
        # A request's own operating point still wins.
        forced = requests.post(url + "/v1/router/route", timeout=30, json={
            "model": "router:keep-95", "messages": [{"role": "user", "content": PROMPTS[0]}],
            "router": {"strong_share": 1.0}}).json()
        assert forced["strong_share"] == 1.0 and forced["target"] == "gemma3-270m"


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_strong_share_override_routes_by_calibration(router_url: str, triton: TritonServer, share: float) -> None:
    client = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30)
    for prompt in PROMPTS:
        expected = client.classify([prompt])[0]
        strong = share > 0 and expected.strong_share <= share
        resp = _chat(router_url, messages=[{"role": "user", "content": prompt}], max_tokens=1,
                     router={"strong_share": share})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-router-target"] == ("gemma3-270m" if strong else "smollm2-135m")


# --- confidence: how familiar a prompt is, and what a policy does when it is not ---

TRAINING_PROMPT_INDEX = 3  # a prompt of the tiny export's training slice (in its kNN index)


def _training_prompt(routing_data: Path) -> str:
    lines = (routing_data / "mmlu-train.jsonl").read_text(encoding="utf-8").splitlines()
    return json.loads(lines[TRAINING_PROMPT_INDEX])["prompt"]


GIBBERISH = "zxqv wlorp gnarf " * 8


def test_confidence_is_reported_with_the_decision(router_url: str, triton: TritonServer, routing_data: Path) -> None:
    client = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30)
    familiar, unfamiliar = client.classify([_training_prompt(routing_data), GIBBERISH])
    assert familiar.confidence is not None and unfamiliar.confidence is not None
    assert unfamiliar.confidence < familiar.confidence
    resp = _chat(router_url, messages=[{"role": "user", "content": GIBBERISH}], max_tokens=1)
    assert resp.status_code == 200, resp.text
    assert float(resp.headers["x-router-confidence"]) == pytest.approx(unfamiliar.confidence, abs=1e-4)


@pytest.mark.parametrize("action, target", [("strong", "gemma3-270m"), ("weak", "smollm2-135m")])
def test_low_confidence_action(triton: TritonServer, tmp_path: Path, routing_data: Path, action: str,
                               target: str) -> None:
    client = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30)
    familiar, unfamiliar = client.classify([_training_prompt(routing_data), GIBBERISH])
    below = (familiar.confidence + unfamiliar.confidence) / 2  # between the two prompts
    config = router_config_dict(triton)
    # The opposite of the action's target for every prompt the score decides: 0.0 = all strong, 1.0 = none.
    config["policies"][0] = {"name": "default", "classifier": "minilm", "weak": "smollm2-135m",
                             "strong": "gemma3-270m", "threshold": 1.0 if action == "strong" else 0.0,
                             "low_confidence": {"below": below, "action": action}}
    with run_router(config, tmp_path) as url:
        low = _chat(url, messages=[{"role": "user", "content": GIBBERISH}], max_tokens=1)
        assert low.status_code == 200, low.text
        assert low.headers["x-router-target"] == target and low.headers["x-router-reason"] == "low_confidence"
        high = _chat(url, messages=[{"role": "user", "content": _training_prompt(routing_data)}], max_tokens=1)
        assert high.headers["x-router-reason"] == "classifier" and high.headers["x-router-target"] != target
        stats = requests.get(url + "/v1/router/stats", timeout=10).json()
        assert stats["low_confidence"] == 1 and stats["classified_with_confidence"] == 2
        assert stats["unfamiliar"] == sum(c < UNFAMILIAR_BELOW for c in (familiar.confidence, unfamiliar.confidence))
        # Both confidences in the policy's histogram, whatever the action made of them.
        s = _samples(requests.get(url + "/metrics", timeout=10).text)
    assert s[("router_classifier_confidence_count", (("policy", "default"),))] == 2
    for edge in CONFIDENCE_BUCKETS:
        expected = sum(c <= edge for c in (familiar.confidence, unfamiliar.confidence))
        assert s[("router_classifier_confidence_bucket", (("le", str(edge)), ("policy", "default")))] == expected
    # The policy's own threshold is an edge too: its bucket holds the prompt its action took.
    assert s[("router_classifier_confidence_bucket", (("le", floatToGoString(below)), ("policy", "default")))] == 1


# --- the decision API: what chat completions would do, without forwarding ---

def test_decision_api_agrees_with_chat_completions(router_url: str, triton: TritonServer) -> None:
    client = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30)
    for prompt in PROMPTS:
        for router in ({}, {"threshold": 0.0}, {"strong_share": 0.5}):
            body = {"model": "router", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                    **({"router": router} if router else {})}
            decision = requests.post(router_url + "/v1/router/route", json=body, timeout=30)
            assert decision.status_code == 200, decision.text
            d = decision.json()
            served = requests.post(router_url + CHAT, json=body, timeout=120)
            assert served.status_code == 200
            assert d["object"] == "router.decision" and d["policy"] == "default" and d["reason"] == "classifier"
            assert d["target"] == served.headers["x-router-target"] == served.json()["model"]
            assert d["score"] == pytest.approx(float(served.headers["x-router-score"]), abs=1e-6)
            expected = client.classify([prompt])[0]
            assert d["score_strong_share"] == pytest.approx(expected.strong_share, abs=1e-6)
            assert d["confidence"] == pytest.approx(expected.confidence, abs=1e-6)
            assert d["classifier_model_version"] == expected.model_version == "1"
            assert d["classifier_ms"] > 0 and d["constraints"]["prompt_tokens"] > 0
            if router.get("threshold") is not None:
                assert d["threshold"] == 0.0 and d["target"] == "gemma3-270m"
    manual = requests.post(router_url + "/v1/router/route", timeout=30,
                           json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]}).json()
    assert manual["policy"] is None and manual["reason"] == "manual" and manual["score"] is None
    private = requests.post(router_url + "/v1/router/route", timeout=30,
                            json={"model": "router", "messages": [{"role": "user", "content": "mail a@b.example"}]})
    assert private.json()["constraints"]["private_data"] == "email"
    # The same validation and errors as chat completions.
    for bad, status in (({"model": "router", "messages": []}, 400), ({"model": "nope", "messages": PROMPTS[:0]}, 400),
                        ({"model": "router:nope", "messages": [{"role": "user", "content": "x"}]}, 404)):
        assert requests.post(router_url + "/v1/router/route", json=bad, timeout=30).status_code == status
        assert requests.post(router_url + CHAT, json=bad, timeout=30).status_code == status


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_version_from_before_confidence_still_routes(model_repo: Path, tmp_path: Path, protocol: str) -> None:
    """A version exported by an older model.py (no `confidence` output), served with today's
    config.pbtxt as during an upgrade: the router still classifies, without a confidence."""
    code = (ROOT / "model_repository" / "router_classifier" / "model.py").read_text()
    # The older contract: the same code without the `confidence` output (it refuses unknown outputs).
    old_code = code.replace('OUTPUTS = ("score", "strong_share", "confidence",', 'OUTPUTS = ("score", "strong_share",')
    assert old_code != code
    repo = tmp_path / "repo"
    (repo / "router_classifier").mkdir(parents=True)
    (repo / "router_classifier" / "config.pbtxt").write_text(
        (model_repo / "router_classifier" / "config.pbtxt").read_text())
    version = repo / "router_classifier" / "1"
    shutil.copytree(model_repo / "router_classifier" / "1", version)
    (version / "model.py").write_text(old_code)
    server = TritonServer(repo, ports=TritonPorts.free(), log_file=tmp_path / "triton.log")
    server.start(timeout_s=300)
    try:
        client = ClassifierClient(server.http_url if protocol == "http" else server.grpc_url, "router_classifier",
                                  timeout_s=30, protocol=protocol)  # type: ignore[arg-type]
        first, second = client.classify(PROMPTS[:1]), client.classify(PROMPTS[1:2])
        assert first[0].confidence is None and second[0].confidence is None
        assert 0.0 <= first[0].score <= 1.0 and first[0].strong_share is not None
    finally:
        server.stop()


# --- request logs: one JSON line per request, no prompt unless the operator opts in ---

def _request_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{") and '"log":"request"' in line:
            lines.append(json.loads(line))
    return lines


@pytest.mark.parametrize("log_prompts", [False, True])
def test_request_log_lines(triton: TritonServer, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                           log_prompts: bool) -> None:
    marker = "zebra-marmalade-7731"  # a prompt word that must not reach the logs by default
    config = router_config_dict(triton, server={"max_body_bytes": 1048576, "log_prompts": log_prompts})
    with run_router(config, tmp_path) as url:
        ok = _chat(url, model="smollm2-135m", messages=[{"role": "user", "content": f"Say {marker}."}],
                   max_tokens=3, stop=["\n"])
        auto = _chat(url, messages=[{"role": "user", "content": f"Explain {marker}."}], max_tokens=2)
        with requests.post(url + CHAT, json={"model": "smollm2-135m", "stream": True, "max_tokens": 3,
                                             "messages": [{"role": "user", "content": marker}]},
                           headers={"X-Request-ID": "stream-1"}, stream=True, timeout=60) as streamed:
            assert streamed.status_code == 200 and b"[DONE]" in b"".join(streamed.iter_content(None))
        bad = requests.post(url + CHAT, json={"model": "router", "messages": [], "note": marker}, timeout=10)
        requests.get(url + "/health/live", timeout=5)
        time.sleep(0.5)  # the stream's line is written as the stream ends
    out = capfd.readouterr()
    lines = _request_lines(out.out + out.err)
    by_id = {line["request_id"]: line for line in lines}
    assert len(lines) == 4 and not any(line["path"].startswith("/health") for line in lines)
    manual = by_id[ok.headers["x-request-id"]]
    assert manual["status"] == 200 and manual["policy"] == "manual" and manual["target"] == "smollm2-135m"
    assert manual["completion_tokens"] == ok.json()["usage"]["completion_tokens"] and manual["cost_usd"] > 0
    assert manual["duration_ms"] >= manual["upstream_ms"] > 0
    routed = by_id[auto.headers["x-request-id"]]
    assert routed["policy"] == "default" and routed["target"] == auto.headers["x-router-target"]
    assert routed["score"] == pytest.approx(float(auto.headers["x-router-score"]), abs=1e-6)
    assert routed["reason"] == "classifier" and routed["model_version"] == "1"
    stream_line = by_id["stream-1"]
    assert stream_line["stream"] is True and stream_line["status"] == 200 and stream_line["completion_tokens"] > 0
    assert by_id[bad.headers["x-request-id"]]["status"] == 400
    if log_prompts:
        assert marker in json.dumps(manual["prompt"]) and "answer" in manual
        assert "log_prompts is on" in out.err
    else:
        assert marker not in out.out + out.err
        assert all("prompt" not in line and "answer" not in line for line in lines)


def test_request_log_writes_one_line_per_request_and_survives_a_closed_stream() -> None:
    import io

    stream = io.StringIO()
    log = RequestLog(enabled=True, log_prompts=False, stream=stream)
    log.emit({"request_id": "a", "status": 200, "prompt": ["secret"], "score": None})
    log.emit({"request_id": "b", "status": 400})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["request_id"], line["status"]) for line in lines] == [("a", 200), ("b", 400)]
    assert all("prompt" not in line and "score" not in line for line in lines)
    stream.close()
    log.emit({"request_id": "c", "status": 200})  # the line is lost; the request it belongs to is not


@pytest.mark.parametrize("access_log", [None, "-"])
def test_gunicorn_access_log_is_off_unless_asked(triton: TritonServer, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, access_log: str | None) -> None:
    """By default the router's JSON line is the only line per request; ROUTER_ACCESS_LOG="-" adds
    gunicorn's access line on stdout."""
    monkeypatch.delenv("ROUTER_ACCESS_LOG", raising=False)
    env = {} if access_log is None else {"ROUTER_ACCESS_LOG": access_log}
    with run_router(router_config_dict(triton), tmp_path, env=env) as url:
        resp = _chat(url, model="smollm2-135m", max_tokens=1)
        assert resp.status_code == 200
        time.sleep(0.3)  # both lines are written once the answer has gone out
    out = capfd.readouterr()
    access = [line for line in out.out.splitlines() if '"POST /v1/chat/completions HTTP/1.1" 200' in line]
    assert len(access) == (1 if access_log else 0)
    assert [line["request_id"] for line in _request_lines(out.out + out.err)] == [resp.headers["x-request-id"]]


# --- Prometheus metrics ---

def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_what_was_routed(triton: TritonServer, tmp_path: Path) -> None:
    marker = "okapi-quartz-118"
    with run_router(router_config_dict(triton), tmp_path) as url:
        manual = _chat(url, model="smollm2-135m", max_tokens=2, messages=[{"role": "user", "content": marker}])
        auto = [_chat(url, max_tokens=1, messages=[{"role": "user", "content": p}]) for p in PROMPTS]
        bad = requests.post(url + CHAT, json={"model": "router", "messages": []}, timeout=10)
        with requests.post(url + CHAT, json={"model": "smollm2-135m", "stream": True, "max_tokens": 2,
                                             "stream_options": {"include_usage": True},
                                             "messages": [{"role": "user", "content": "hi"}]}, stream=True,
                           timeout=60) as streamed:
            stream_usage = json.loads(_sse_events(streamed)[-2])["usage"]
        time.sleep(0.3)
        resp = requests.get(url + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert marker not in text and manual.headers["x-request-id"] not in text  # bounded labels only
    s = _samples(text)

    def requests_to(policy: str, target: str, reason: str, status: str) -> float:
        return s.get(("router_requests_total", (("policy", policy), ("reason", reason), ("status", status),
                                                ("target", target))), 0.0)

    assert requests_to("manual", "smollm2-135m", "manual", "2xx") == 2  # the plain and the streamed one
    by_target: dict[str, int] = {}
    for r in auto:
        by_target[r.headers["x-router-target"]] = by_target.get(r.headers["x-router-target"], 0) + 1
    for target, n in by_target.items():
        assert requests_to("default", target, "classifier", "2xx") == n
    assert requests_to("none", "none", "none", "4xx") == 1 and bad.status_code == 400
    assert s[("router_classifier_duration_seconds_count", (("policy", "default"),))] == len(PROMPTS)
    assert s[("router_request_duration_seconds_count", (("policy", "default"), ("status", "2xx")))] == len(PROMPTS)
    completion = sum(v for (name, labels), v in s.items()
                     if name == "router_tokens_total" and ("kind", "completion") in labels)
    answered = [manual.json()["usage"]] + [r.json()["usage"] for r in auto] + [stream_usage]
    assert completion == sum(u["completion_tokens"] for u in answered)
    cost = sum(v for (name, _), v in s.items() if name == "router_cost_usd_total")
    # The stream's cost at smollm2-135m's prices (config/router.yaml: 0.02 USD per 1M tokens either way).
    stream_cost = (stream_usage["prompt_tokens"] + stream_usage["completion_tokens"]) * 0.02 / 1e6
    assert cost == pytest.approx(float(manual.headers["x-router-cost-usd"]) + stream_cost + sum(
        float(r.headers["x-router-cost-usd"]) for r in auto), abs=1e-7)
    assert s[("router_baseline_cost_usd_total", (("policy", "default"),))] > 0
    assert s[("router_requests_in_flight", ())] == 0
    assert s[("router_circuit_breaker_state", (("target", "gemma3-270m"),))] == 0
    assert s[("router_classifier_model_info", (("version", "1"),))] == 1


def _metric(url: str, name: str, **labels: str) -> float:
    return _samples(requests.get(url + "/metrics", timeout=10).text).get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_client_that_leaves_a_stream_is_counted_once(triton: TritonServer, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """Mid-stream (through gunicorn): the router stops, records a 499 and frees the request."""
    with run_router(router_config_dict(triton), tmp_path) as url:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"model": "smollm2-135m", "stream": True, "max_tokens": 400, "messages": [
            {"role": "user", "content": "Write a long story about a lighthouse."}]}).encode()
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"X-Request-ID: left-early\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            received = b""
            while received.count(b"data: ") < 3:  # the role chunk and two tokens
                received += sock.recv(4096)
            assert received.startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 30
        while _metric(url, "router_requests_in_flight") != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(url, "router_requests_in_flight") == 0
        gone = dict(policy="manual", reason="manual", status="4xx", target="smollm2-135m")
        assert _metric(url, "router_requests_total", **gone) == 1
        assert _metric(url, "router_requests_total", **{**gone, "status": "2xx"}) == 0
    line = next(x for x in _request_lines(capfd.readouterr().err) if x["request_id"] == "left-early")
    assert line["status"] == 499 and line["stream"] is True


def test_a_stream_never_read_is_still_recorded(triton: TritonServer) -> None:
    """A client gone before the body was read: the generator never runs, closing the response
    still records the request (in-process, where the WSGI iterable can be left unread)."""
    from router_service.app import create_app
    from router_service.config import parse_config

    app = create_app(parse_config(router_config_dict(triton)))
    client = app.test_client()
    resp = client.post(CHAT, json={"model": "smollm2-135m", "stream": True, "max_tokens": 2,
                                   "messages": [{"role": "user", "content": "hi"}]}, buffered=False)
    assert resp.status_code == 200
    assert _samples(app.extensions["router"].metrics.render().decode())[("router_requests_in_flight", ())] == 1
    resp.close()
    s = _samples(app.extensions["router"].metrics.render().decode())
    assert s[("router_requests_in_flight", ())] == 0
    assert s[("router_requests_total", (("policy", "manual"), ("reason", "manual"), ("status", "4xx"),
                                        ("target", "smollm2-135m")))] == 1


def test_request_id_reaches_triton(model_repo: Path, tmp_path: Path) -> None:
    """The classifier call and the Triton LLM call carry the request id (Triton's verbose log names
    it), the classifier's over HTTP."""
    server = TritonServer(model_repo, ports=TritonPorts.free(), log_file=tmp_path / "triton.log",
                          extra_args=["--log-verbose=1"])
    server.start(timeout_s=600)
    try:
        with run_router(router_config_dict(server), tmp_path) as url:
            routed = requests.post(url + CHAT, json={"model": "router", "max_tokens": 1, "messages": [
                {"role": "user", "content": "hi"}]}, headers={"X-Request-ID": "trace-me-42"}, timeout=60)
            assert routed.status_code == 200
    finally:
        server.stop()
    log = (tmp_path / "triton.log").read_text()
    target_model = {"smollm2-135m": "smollm2_135m", "gemma3-270m": "gemma3_270m"}[routed.headers["x-router-target"]]
    named = {m for m in ("router_classifier", target_model)
             if f"request id: trace-me-42, model: {m}" in log}
    assert named == {"router_classifier", target_model}
    # Under the default gevent worker the classifier is called over HTTP, and nothing over gRPC.
    assert "HTTP request: 2 /v2/models/router_classifier/infer" in log
    assert "ModelInferHandler, rpc_ok=1" not in log


# --- decision cache ---

def _classifier_inferences(triton: TritonServer, expected: int | None = None, timeout_s: float = 10.0) -> int:
    """Triton's count of classifier inferences. Triton records an inference in its statistics after
    the reply has left, so a count read right after a call can lag behind it: with ``expected`` it is
    read until it gets there (or the time is up); without, until two reads 0.2 s apart agree."""
    def count() -> int:
        stats = requests.get(f"{triton.http_url}/v2/models/router_classifier/stats", timeout=10).json()
        return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])

    deadline, seen = time.monotonic() + timeout_s, count()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if expected is not None and seen >= expected:
            return seen
        seen, last = count(), seen
        if expected is None and seen == last:
            return seen
    return seen


def test_decision_cache_reuses_a_classification(triton: TritonServer) -> None:
    """Against the real classifier: a repeated input is answered from the cache (Triton's own
    statistics show no new inference) with the same classification; the TTL and the size bound
    send it back to Triton."""
    from router_service.decision_cache import CachedClassifier

    now = [0.0]
    lookups: list[bool] = []
    cached = CachedClassifier(ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30), size=2,
                              ttl_s=60, on_lookup=lookups.append, clock=lambda: now[0])
    before = _classifier_inferences(triton)
    first = cached.classify([PROMPTS[0]])
    assert cached.classify([PROMPTS[0]]) == first and _classifier_inferences(triton, before + 1) == before + 1
    now[0] = 61.0  # expired
    assert cached.classify([PROMPTS[0]]) == first and _classifier_inferences(triton, before + 2) == before + 2
    cached.classify([PROMPTS[1], PROMPTS[2]])  # batch of two misses; size 2 evicts PROMPTS[0]
    assert _classifier_inferences(triton, before + 3) == before + 3
    cached.classify([PROMPTS[0]])
    assert _classifier_inferences(triton, before + 4) == before + 4
    assert lookups == [False, True, False, False, False, False]


def test_decision_cache_in_the_router(triton: TritonServer, tmp_path: Path) -> None:
    with run_router(router_config_dict(triton), tmp_path) as url:
        answers = [_chat(url, max_tokens=1, messages=[{"role": "user", "content": PROMPTS[3]}]) for _ in range(3)]
        text = requests.get(url + "/metrics", timeout=10).text
    assert len({r.headers["x-router-score"] for r in answers}) == 1
    s = _samples(text)
    assert s[("router_classifier_cache_total", (("classifier", "minilm"), ("result", "miss")))] == 1
    assert s[("router_classifier_cache_total", (("classifier", "minilm"), ("result", "hit")))] == 2
    config = router_config_dict(triton)
    config["classifiers"][0]["cache"] = {"size": 0}
    with run_router(config, tmp_path) as url:
        _chat(url, max_tokens=1, messages=[{"role": "user", "content": PROMPTS[3]}])
        assert "router_classifier_cache_total{" not in requests.get(url + "/metrics", timeout=10).text


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_stopping_the_router_lets_running_streams_finish(triton: TritonServer, tmp_path: Path,
                                                         worker_class: str) -> None:
    """SIGTERM (a pod being stopped): the stream in flight ends normally within the grace period,
    new connections are no longer accepted, and the router then exits by itself, long before the
    grace period would have it killed, although a client keeps an idle keep-alive connection open
    (gunicorn's own gevent worker waited for it) and the classifier was called."""
    from local_stack.stack import start_router, wait_ready
    from local_stack.processes import stop_process

    config_path = tmp_path / "router.yaml"
    config_path.write_text(yaml.safe_dump(router_config_dict(triton)))
    port = free_port()
    proc = start_router(config_path, "127.0.0.1", port, {"ROUTER_GRACEFUL_TIMEOUT": "120",
                                                         "ROUTER_WORKER_CLASS": worker_class})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/health/live", proc, timeout_s=60)
        assert "x-router-score" in _chat(url, max_tokens=1).headers  # the classifier was called
        idle = requests.Session()  # a keep-alive connection, left open between requests
        assert idle.get(url + "/health/live", timeout=10).ok
        with requests.post(url + CHAT, stream=True, timeout=120, json={
                "model": "smollm2-135m", "stream": True, "max_tokens": 120, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Write a story about a lighthouse keeper."}]}) as resp:
            lines = resp.iter_lines()
            first = next(line for line in lines if line.startswith(b"data: "))
            proc.terminate()  # what the kubelet does
            time.sleep(1.0)
            with pytest.raises(requests.ConnectionError):
                requests.get(url + "/health/live", timeout=5)
            rest = [line for line in lines if line.startswith(b"data: ")]
        assert first and rest[-1] == b"data: [DONE]"
        usage = json.loads(rest[-2][6:])["usage"]
        assert usage["completion_tokens"] > 10  # the stream ran on after the signal, to its end
        assert proc.wait(timeout=60) == 0  # a worker stuck at exit would be killed only at 120 s
        idle.close()
    finally:
        stop_process(proc)
