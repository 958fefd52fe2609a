"""The router as a gateway, driven with the official `openai` client: API fidelity, policies,
rules, privacy, context windows, fallbacks, circuit breakers, Retry-After, streaming from an
external server, cost accounting. Upstreams are real: the Triton-hosted LLMs and llama.cpp's
OpenAI-compatible server standing in for an external provider (see tests/upstream.py)."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
import yaml
from openai import OpenAI

from local_stack.triton_launcher import TritonServer, free_port

from .conftest import router_config_dict, run_router
from .upstream import FaultProxy, OpenAIServer

HELLO = [{"role": "user", "content": "Say hello."}]
EMAIL_PROMPT = [{"role": "user", "content": "Draft a reply to jane.doe@example.com about the invoice."}]


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    server = OpenAIServer(tmp_path_factory.mktemp("external")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(external: OpenAIServer) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(external.url)
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture(autouse=True)
def _clean_proxy(request: pytest.FixtureRequest) -> None:
    if "proxy" in request.fixturenames:
        request.getfixturevalue("proxy").reset()


def gateway_config(triton: TritonServer, ext_url: str, **reliability: object) -> dict:
    config = router_config_dict(triton)
    config["targets"] += [
        {"name": "ext", "kind": "openai", "url": ext_url, "model": "ext-smollm2", "context_window": 2048,
         "usd_per_1m_input_tokens": 10.0, "usd_per_1m_output_tokens": 30.0, "api_key_env": "EXT_API_KEY",
         "fallbacks": ["gemma3-270m"]},
        {"name": "tiny", "kind": "triton", "model": "smollm2_135m", "context_window": 64,
         "usd_per_1m_input_tokens": 0.01, "usd_per_1m_output_tokens": 0.01},
    ]
    config["policies"] += [
        {"name": "ext", "classifier": "minilm", "weak": "smollm2-135m", "strong": "ext", "threshold": 0.5},
        {"name": "tiers", "kind": "tiered", "classifier": "minilm",
         "tiers": [{"target": "smollm2-135m", "max_score": 0.0}, {"target": "gemma3-270m", "max_score": 1.0},
                   {"target": "ext"}]},
        {"name": "small", "classifier": "minilm", "weak": "tiny", "strong": "gemma3-270m", "threshold": 1.0},
    ]
    config["rules"] = [{"name": "code", "keywords": ["python"], "target": "gemma3-270m"}]
    config["reliability"] = {"circuit_breaker": {"failure_threshold": 2, "window_s": 60, "cooldown_s": 2},
                             "max_retry_after_s": 2.0, **reliability}
    return config


@pytest.fixture(scope="module")
def gateway(triton: TritonServer, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_router(gateway_config(triton, proxy.url), tmp_path_factory.mktemp("gateway"),
                    env={"EXT_API_KEY": "test-key-not-secret"}) as url:
        yield url


def client(url: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


# --- API fidelity ---------------------------------------------------------------------------

def test_chat_with_openai_client_reports_routing_headers(gateway: str) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="router", max_tokens=8, temperature=0, seed=1, user="u-1", top_p=0.9,
        messages=[{"role": "system", "content": "You are brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
                  {"role": "assistant", "content": "Blue."},
                  {"role": "user", "content": "Another one?"}])
    reply = raw.parse()
    assert reply.model == raw.headers["x-router-target"] in ("smollm2-135m", "gemma3-270m")
    assert reply.choices[0].message.content
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0
    assert raw.headers["x-router-policy"] == "default"
    assert 0 <= float(raw.headers["x-router-score"]) <= 1
    assert float(raw.headers["x-router-cost-usd"]) > 0
    assert float(raw.headers["x-router-overhead-ms"]) > 0
    assert raw.headers["x-request-id"]


def test_streaming_with_usage_chunk(gateway: str) -> None:
    stream = client(gateway).chat.completions.create(model="smollm2-135m", messages=HELLO, max_tokens=8,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True})
    assert stream.response.headers["x-router-target"] == "smollm2-135m"
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_legacy_completions(gateway: str) -> None:
    api = client(gateway)
    raw = api.completions.with_raw_response.create(model="gemma3-270m", prompt="The capital of France is",
                                                   max_tokens=5, temperature=0)
    done = raw.parse()
    assert done.object == "text_completion" and done.choices[0].text
    assert done.usage.completion_tokens <= 5 and raw.headers["x-router-target"] == "gemma3-270m"
    streamed = "".join(c.choices[0].text for c in api.completions.create(
        model="gemma3-270m", prompt="The capital of France is", max_tokens=5, temperature=0, stream=True)
        if c.choices)
    assert streamed == done.choices[0].text
    auto = api.completions.with_raw_response.create(model="router", prompt="2+2=", max_tokens=3)
    assert auto.headers["x-router-policy"] == "default" and "x-router-score" in auto.headers


def test_models_lists_every_policy_and_target(gateway: str) -> None:
    models = {m.id: m for m in client(gateway).models.list()}
    assert {"router", "router:default", "router:ext", "router:tiers", "smollm2-135m", "gemma3-270m", "ext",
            "tiny"} <= set(models)
    assert models["ext"].owned_by == "openai" and models["smollm2-135m"].owned_by == "triton"
    assert models["router:tiers"].router["policy_kind"] == "tiered"


def test_manual_routing_to_external_streams_through(gateway: str, proxy: FaultProxy) -> None:
    stream = client(gateway).chat.completions.create(model="ext", messages=HELLO, max_tokens=8, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert stream.response.headers["x-router-target"] == "ext"
    assert len(proxy.requests_seen) == 1
    sent = json.loads(proxy.requests_seen[0])
    assert sent["model"] == "ext-smollm2" and sent["stream"] is True
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client(gateway).chat.completions.create(model="ext", messages=HELLO, max_tokens=8, temperature=0)
    assert text == plain.choices[0].message.content
    # llama.cpp's server sends no usage in streams: the router counts it, so usage is always filled.
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0


def test_request_id_reaches_the_upstream(gateway: str, proxy: FaultProxy) -> None:
    resp = requests.post(gateway + "/v1/chat/completions", headers={"X-Request-ID": "trace-42.a"}, timeout=60,
                         json={"model": "ext", "messages": HELLO, "max_tokens": 2})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "trace-42.a"
    # An id that is not a plain token is replaced by the router's own, which travels on instead.
    odd = requests.post(gateway + "/v1/chat/completions", headers={"X-Request-ID": "a b;c"}, timeout=60,
                        json={"model": "ext", "messages": HELLO, "max_tokens": 2})
    own = odd.headers["x-request-id"]
    assert odd.status_code == 200 and own != "a b;c" and len(own) == 32
    assert proxy.request_ids_seen == ["trace-42.a", own]


def test_api_key_comes_from_the_named_env_var(gateway: str, proxy: FaultProxy) -> None:
    client(gateway).chat.completions.create(model="ext", messages=HELLO, max_tokens=2)
    assert proxy.authorization_seen == ["Bearer test-key-not-secret"]


def test_response_format_goes_to_a_target_that_supports_it(gateway: str) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="router:ext", messages=[{"role": "user", "content": "Give a JSON object with a key a."}],
        max_tokens=24, temperature=0, response_format={"type": "json_object"}, extra_body={"router": {"threshold": 1.0}})
    # threshold 1.0 would pick the weak (local) target, which cannot do response_format: escalated.
    assert raw.headers["x-router-target"] == "ext"
    assert raw.headers["x-router-reason"] == "classifier:escalated"
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(model="smollm2-135m", messages=HELLO,
                                                response_format={"type": "json_object"})
    assert info.value.body["code"] == "unsupported_parameter"


def test_max_completion_tokens_reaches_openai_targets_under_its_own_name(gateway: str, proxy: FaultProxy) -> None:
    """OpenAI's reasoning models refuse `max_tokens`: the field the client used is the one sent."""
    proxy.fail_next(1, 400)  # the upstream's answer does not matter here, only what it was sent
    with pytest.raises(openai.BadRequestError):
        client(gateway).chat.completions.create(model="ext", messages=HELLO, max_completion_tokens=5)
    sent = json.loads(proxy.received[0])
    assert sent["max_completion_tokens"] == 5 and "max_tokens" not in sent


def test_fields_a_target_supports_are_forwarded_and_others_refused(gateway: str, proxy: FaultProxy) -> None:
    # logprobs: the local LLMs cannot give them, the OpenAI-compatible server can.
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="router:ext", messages=HELLO, max_tokens=2, logprobs=True, top_logprobs=2,
        extra_body={"router": {"threshold": 1.0}})
    # threshold 1.0 picks the weak local target, which cannot take logprobs: escalated to ext.
    assert raw.headers["x-router-target"] == "ext" and raw.headers["x-router-reason"] == "classifier:escalated"
    sent = json.loads(proxy.requests_seen[0])
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert raw.parse().choices[0].logprobs is not None  # the upstream's logprobs reach the client
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(model="smollm2-135m", messages=HELLO, logprobs=True)
    assert info.value.body["code"] == "unsupported_parameter" and info.value.body["param"] == "logprobs"
    # A field at its neutral value asks nothing of the target.
    ok = client(gateway).chat.completions.with_raw_response.create(model="smollm2-135m", messages=HELLO,
                                                                   max_tokens=2, logprobs=False, presence_penalty=0)
    assert ok.headers["x-router-target"] == "smollm2-135m"
    # A field the API does not have is refused, not dropped.
    resp = requests.post(gateway + "/v1/chat/completions", timeout=30,
                         json={"model": "smollm2-135m", "messages": HELLO, "max_tokens": 2, "temprature": 0})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "unknown_parameter"
    assert resp.json()["error"]["param"] == "temprature"


# --- policies ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, target", [({"threshold": 0.0}, "ext"), ({"threshold": 1.0}, "smollm2-135m"),
                                               ({"policy": "tiers"}, "gemma3-270m")])
def test_per_request_overrides(gateway: str, overrides: dict, target: str) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="router:ext", messages=HELLO, max_tokens=2, extra_body={"router": overrides})
    assert raw.headers["x-router-target"] == target


@pytest.mark.parametrize("overrides", [{"threshold": 0.5}, {"strong_share": 0.3}])
def test_tiered_policy_refuses_a_single_cut(gateway: str, overrides: dict) -> None:
    """A threshold or a share cannot say which of three bands a score is in: refused, not ignored."""
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(model="router:tiers", messages=HELLO, max_tokens=2,
                                                extra_body={"router": overrides})
    assert info.value.body["code"] == "unsupported_override"
    assert info.value.body["param"] == f"router.{next(iter(overrides))}"
    assert "tiered" in info.value.body["message"]


def test_tiered_policy_picks_the_band(gateway: str) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(model="router:tiers", messages=HELLO, max_tokens=2)
    assert raw.headers["x-router-target"] == "gemma3-270m"  # 0.0 <= score < 1.0: the middle tier
    assert raw.headers["x-router-policy"] == "tiers"


def test_keyword_rule_pins_a_target(gateway: str) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": "Write Python to sort a list."}], max_tokens=2,
        extra_body={"router": {"threshold": 1.0}})
    assert raw.headers["x-router-target"] == "gemma3-270m"
    assert raw.headers["x-router-reason"] == "rule:code" and "x-router-score" not in raw.headers


def test_context_window_escalates_then_refuses(gateway: str) -> None:
    long_prompt = [{"role": "user", "content": "Summarise: " + "the quick brown fox " * 20}]
    raw = client(gateway).chat.completions.with_raw_response.create(model="router:small", messages=long_prompt,
                                                                    max_tokens=4)
    assert raw.headers["x-router-target"] == "gemma3-270m"  # 'tiny' (64-token window) cannot hold it
    assert raw.headers["x-router-reason"].endswith(":escalated")
    short = client(gateway).chat.completions.with_raw_response.create(model="router:small", messages=HELLO,
                                                                      max_tokens=4)
    assert short.headers["x-router-target"] == "tiny"
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(model="router", max_tokens=4,
                                                messages=[{"role": "user", "content": "word " * 3000}])
    assert info.value.body["code"] == "context_length_exceeded"


# --- privacy ----------------------------------------------------------------------------------

def test_private_prompt_stays_self_hosted(gateway: str, proxy: FaultProxy) -> None:
    # threshold 0 would send it to the external strong target; the privacy rule keeps it on
    # self-hosted ones: ext's own (self-hosted) fallback first, then the policy's weak target.
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="router:ext", messages=EMAIL_PROMPT, max_tokens=4, extra_body={"router": {"threshold": 0.0}})
    assert raw.headers["x-router-target"] == "gemma3-270m"
    assert raw.headers["x-router-reason"] == "classifier:escalated"
    manual = client(gateway).chat.completions.with_raw_response.create(model="ext", messages=EMAIL_PROMPT,
                                                                       max_tokens=4)
    assert manual.headers["x-router-target"] == "gemma3-270m"  # ext's self-hosted fallback
    assert proxy.requests_seen == []


def test_privacy_survives_fallback(triton: TritonServer, proxy: FaultProxy, tmp_path: Path) -> None:
    """The self-hosted fallback is down: the private prompt fails rather than going external."""
    config = gateway_config(triton, proxy.url)
    config["targets"].append({"name": "local-down", "kind": "triton", "model": "smollm2_135m",
                              "context_window": 2048, "url": f"http://127.0.0.1:{free_port()}",
                              "fallbacks": ["ext"]})
    with run_router(config, tmp_path, env={"EXT_API_KEY": "k"}) as url:
        with pytest.raises(openai.APIStatusError) as info:
            client(url).chat.completions.create(model="local-down", messages=EMAIL_PROMPT, max_tokens=4)
        assert info.value.status_code == 503
        ok = client(url).chat.completions.with_raw_response.create(model="local-down", messages=HELLO, max_tokens=2)
        assert ok.headers["x-router-target"] == "ext"  # not private: the external fallback may serve it
        assert ok.headers["x-router-fallback-from"] == "local-down"
    assert len(proxy.requests_seen) == 1 and b"jane.doe" not in proxy.requests_seen[0]


# --- reliability ------------------------------------------------------------------------------

def test_retry_after_short_is_honoured_on_the_same_target(gateway: str, proxy: FaultProxy) -> None:
    proxy.fail_next(1, 429, retry_after="1")
    t0 = time.monotonic()
    raw = client(gateway).chat.completions.with_raw_response.create(model="ext", messages=HELLO, max_tokens=2)
    assert raw.headers["x-router-target"] == "ext" and "x-router-fallback-from" not in raw.headers
    assert proxy.rejected == 1 and len(proxy.requests_seen) == 1
    assert time.monotonic() - t0 >= 1.0  # it waited as told


def test_429_with_long_retry_after_falls_back_or_is_passed_on(triton: TritonServer, proxy: FaultProxy,
                                                              tmp_path: Path) -> None:
    config = gateway_config(triton, proxy.url)
    config["targets"].append({"name": "ext-alone", "kind": "openai", "url": proxy.url, "model": "m",
                              "context_window": 2048})
    with run_router(config, tmp_path, env={"EXT_API_KEY": "k"}) as url:
        proxy.fail_next(1, 429, retry_after="30")
        raw = client(url).chat.completions.with_raw_response.create(model="ext", messages=HELLO, max_tokens=2)
        assert raw.headers["x-router-target"] == "gemma3-270m" and raw.headers["x-router-fallback-from"] == "ext"
        proxy.fail_next(1, 429, retry_after="30")
        resp = requests.post(url + "/v1/chat/completions", json={"model": "ext-alone", "messages": HELLO}, timeout=30)
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "30"
        assert resp.json()["error"]["code"] == "rate_limited"


def test_fallback_when_external_server_stops_and_circuit_breaker(triton: TritonServer, tmp_path: Path) -> None:
    server = OpenAIServer(tmp_path).start()
    try:
        with run_router(gateway_config(triton, server.url), tmp_path, env={"EXT_API_KEY": "k"}) as url:
            api = client(url)
            assert api.chat.completions.with_raw_response.create(model="ext", messages=HELLO, max_tokens=2
                                                                 ).headers["x-router-target"] == "ext"
            server.stop()  # the provider goes away mid-test
            for _ in range(2):
                raw = api.chat.completions.with_raw_response.create(model="ext", messages=HELLO, max_tokens=2)
                assert raw.headers["x-router-target"] == "gemma3-270m"
                assert raw.headers["x-router-fallback-from"] == "ext"
            stats = requests.get(url + "/v1/router/stats", timeout=10).json()
            assert stats["circuit_breakers"]["ext"]["state"] == "open"  # 2 failures in the window
            assert stats["fallbacks"] == 2
            # Open: ext is skipped without being tried.
            raw = api.chat.completions.with_raw_response.create(model="ext", messages=HELLO, max_tokens=2)
            assert raw.headers["x-router-target"] == "gemma3-270m" and "x-router-fallback-from" not in raw.headers
            server.start()
            time.sleep(2.2)  # the configured cooldown
            assert requests.get(url + "/v1/router/stats", timeout=10).json()["circuit_breakers"]["ext"]["state"] \
                == "half_open"
            raw = api.chat.completions.with_raw_response.create(model="ext", messages=HELLO, max_tokens=2)
            assert raw.headers["x-router-target"] == "ext"  # the trial call succeeded
            assert requests.get(url + "/v1/router/stats", timeout=10).json()["circuit_breakers"]["ext"]["state"] \
                == "closed"
    finally:
        server.stop()


@pytest.mark.parametrize("status", [401, 403])
def test_refused_upstream_key_falls_back_and_trips_the_breaker(triton: TritonServer, proxy: FaultProxy,
                                                               tmp_path: Path, status: int) -> None:
    """A wrong upstream key is the operator's fault: the client gets another target's answer (or a
    502), never a 400 that blames its request; the breaker stops calling the target."""
    config = gateway_config(triton, proxy.url)
    config["targets"].append({"name": "ext-alone", "kind": "openai", "url": proxy.url, "model": "m",
                              "context_window": 2048, "api_key_env": "EXT_API_KEY"})
    with run_router(config, tmp_path, env={"EXT_API_KEY": "wrong-key-do-not-log"}) as url:
        proxy.fail_next(2, status)
        for _ in range(2):
            raw = client(url).chat.completions.with_raw_response.create(model="ext", messages=HELLO, max_tokens=2)
            assert raw.headers["x-router-target"] == "gemma3-270m"
            assert raw.headers["x-router-fallback-from"] == "ext"
        stats = requests.get(url + "/v1/router/stats", timeout=10).json()
        assert stats["circuit_breakers"]["ext"]["state"] == "open"  # 2 failures in the window
        proxy.fail_next(1, status)
        resp = requests.post(url + "/v1/chat/completions", json={"model": "ext-alone", "messages": HELLO}, timeout=30)
        assert resp.status_code == 502
        error = resp.json()["error"]
        assert error["type"] == "api_error" and error["code"] == "upstream_auth_failed"
        assert "wrong-key" not in resp.text


@pytest.mark.parametrize("status", [400, 500, 429])
def test_an_upstream_error_that_echoes_the_key_is_redacted(triton: TritonServer, proxy: FaultProxy,
                                                           tmp_path: Path, status: int) -> None:
    """A provider quoting the router's key back in its error text: the client sees the error,
    never the key (nor anything shaped like one)."""
    config = gateway_config(triton, proxy.url)
    config["targets"].append({"name": "ext-alone", "kind": "openai", "url": proxy.url, "model": "m",
                              "context_window": 2048, "api_key_env": "EXT_API_KEY"})
    secret = "sk-live-0a1b2c3d4e5f6a7b8c9d"
    with run_router(config, tmp_path, env={"EXT_API_KEY": secret}) as url:
        proxy.fail_next(1, status, echo_auth=True)
        resp = requests.post(url + "/v1/chat/completions", json={"model": "ext-alone", "messages": HELLO}, timeout=30)
    assert resp.status_code == {400: 400, 500: 502, 429: 429}[status]
    assert "injected fault; you sent Bearer [redacted]" in resp.json()["error"]["message"]
    assert secret not in resp.text and secret[3:] not in resp.text


def test_broken_upstream_stream_ends_with_an_error_event(gateway: str, proxy: FaultProxy) -> None:
    proxy.break_stream_after = 3
    with requests.post(gateway + "/v1/chat/completions", stream=True, timeout=60,
                       json={"model": "ext", "messages": HELLO, "max_tokens": 16, "stream": True}) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "error" in json.loads(events[-2])
    assert any(json.loads(e).get("choices") for e in events[:-2])  # some content came first


def test_classifier_down_fails_open(triton: TritonServer, tmp_path: Path) -> None:
    config = router_config_dict(triton)
    # The classifier's Triton is unreachable (nothing listens there, over gRPC or HTTP); the local
    # LLMs' Triton is up.
    for target in config["targets"]:
        if target["kind"] == "triton":
            target["url"] = triton.http_url
    config["triton"].update(grpc_url=f"127.0.0.1:{free_port()}", http_url=f"http://127.0.0.1:{free_port()}",
                            timeout_s=1.0)
    config["policies"][0]["fail_open_target"] = "smollm2-135m"
    with run_router(config, tmp_path) as url:
        raw = client(url).chat.completions.with_raw_response.create(model="router", messages=HELLO, max_tokens=2)
        assert raw.headers["x-router-degraded"] == "true"
        assert raw.headers["x-router-target"] == "smollm2-135m" and raw.headers["x-router-reason"] == "fail_open"
        assert requests.get(url + "/health/ready", timeout=10).status_code == 503


# --- cost accounting --------------------------------------------------------------------------

def test_cost_headers_and_running_totals(triton: TritonServer, proxy: FaultProxy, tmp_path: Path) -> None:
    with run_router(gateway_config(triton, proxy.url), tmp_path, env={"EXT_API_KEY": "k"}) as url:
        api = client(url)
        weak = api.chat.completions.with_raw_response.create(model="router:ext", messages=HELLO, max_tokens=3,
                                                             extra_body={"router": {"threshold": 1.0}})
        strong = api.chat.completions.with_raw_response.create(model="router:ext", messages=HELLO, max_tokens=3,
                                                               extra_body={"router": {"threshold": 0.0}})
        manual = api.chat.completions.create(model="ext", messages=HELLO, max_tokens=3)  # a target, no policy
        stats = requests.get(url + "/v1/router/stats", timeout=10).json()
    w, s = weak.parse().usage, strong.parse().usage
    weak_cost = (w.prompt_tokens * 0.02 + w.completion_tokens * 0.02) / 1e6
    strong_cost = (s.prompt_tokens * 10 + s.completion_tokens * 30) / 1e6
    assert float(weak.headers["x-router-cost-usd"]) == pytest.approx(weak_cost, abs=1e-8)
    assert float(strong.headers["x-router-cost-usd"]) == pytest.approx(strong_cost, abs=1e-8)
    policy = stats["by_policy"]["ext"]
    assert policy["requests"] == 2
    assert policy["cost_usd"] == pytest.approx(weak_cost + strong_cost, abs=1e-8)
    always_strong = ((w.prompt_tokens + s.prompt_tokens) * 10 + (w.completion_tokens + s.completion_tokens) * 30) / 1e6
    assert policy["baseline_cost_usd"] == pytest.approx(always_strong, abs=1e-8)
    assert policy["savings_usd"] == pytest.approx(always_strong - weak_cost - strong_cost, abs=1e-8)
    assert stats["by_target"]["ext"]["requests"] == 2 and stats["by_target"]["smollm2-135m"]["requests"] == 1
    # The manual request costs money but has no always-strong baseline: it counts in the total
    # cost, not against the savings.
    manual_cost = (manual.usage.prompt_tokens * 10 + manual.usage.completion_tokens * 30) / 1e6
    assert stats["total"]["cost_usd"] == pytest.approx(weak_cost + strong_cost + manual_cost, abs=1e-8)
    assert stats["total"]["savings_usd"] == pytest.approx(policy["savings_usd"], abs=1e-8)


def test_many_streams_do_not_keep_short_requests_waiting(triton: TritonServer, tmp_path: Path) -> None:
    """With the production gunicorn settings (no thread override): 300 streams held open on a slow
    upstream, and a short request sent meanwhile is answered while every stream is still running
    (with 16 threads it waited for streams to end). The slow upstream is bench's instant server
    in streaming mode: a real HTTP server, standing in for a slow provider (non-streamed requests
    to it are answered at once). The streams are held by make bench's own step."""
    from bench.concurrency import hold_streams
    from bench.instant_upstream import InstantUpstream
    from local_stack.processes import stop_process
    from local_stack.stack import start_router, wait_ready

    n, seconds = 300, 8.0
    with InstantUpstream(stream_seconds=seconds) as upstream:
        config = router_config_dict(triton)
        config["targets"].append({"name": "slow", "kind": "openai", "url": upstream.url, "model": "m",
                                  "context_window": 4096})
        path = tmp_path / "router.yaml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        proc = start_router(path, "127.0.0.1", port)
        try:
            wait_ready(f"http://127.0.0.1:{port}/health/live", proc, timeout_s=60)
            held = hold_streams(f"http://127.0.0.1:{port}/v1/chat/completions", n, seconds, "slow", "slow",
                                proc.pid, shorts=1)  # a short request raises unless it is a 200
        finally:
            stop_process(proc)
    assert held["streams_ok"] == n
    assert held["stream_events_min"] == held["stream_events_max"] == 13  # 10 tokens, stop, usage-less end
    assert held["shorts_before_any_stream_ended"] == 1.0  # answered while every stream still ran
