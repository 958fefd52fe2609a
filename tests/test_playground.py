"""The playground page (GET /ui) driven in a real headless Chromium (Debian's build, fetched by
`make chromium`) against the real stack: Triton with the exported classifier and the two local
LLMs, the router under gunicorn, and for the keyed case a real Valkey. Every figure the page shows
is checked against the router's own API. Screenshots go to $PLAYGROUND_SCREENSHOTS (the README's
is docs/playground.png) or to the test's temporary folder."""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from local_stack.triton_launcher import TritonServer
from local_stack.valkey import ValkeyServer

from .conftest import ROOT, router_config_dict, run_router

CHROMIUM_DIR = Path(os.environ.get("CHROMIUM_DIR", ROOT / "tools" / "chromium"))
WEAK, STRONG = "smollm2-135m", "gemma3-270m"
PROMPT = "Prove that the square root of 2 is irrational."
# SmolLM2 answers this, greedily, with a <script> element in its code block.
SCRIPT_PROMPT = "Write a minimal HTML page with a script tag that shows an alert."
MASTER = "mk-playground-0123456789"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver_path, chromium = CHROMIUM_DIR / "chromedriver", CHROMIUM_DIR / "chromium"
    assert driver_path.is_file() and chromium.is_file(), f"no Chromium in {CHROMIUM_DIR}: run `make chromium`"
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1300"):
        options.add_argument(arg)
    # An explicit driver: Selenium Manager would try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver_path)))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def playground_config(triton: TritonServer, **overrides: object) -> dict:
    config = router_config_dict(triton, **overrides)
    # A second policy that cuts by a raw score: the page marks its operating point through the calibration.
    config["policies"].append({"name": "by-score", "classifier": "minilm", "weak": WEAK, "strong": STRONG,
                               "threshold": 0.6})
    # And one that keeps a quality target: its share comes from the same curve.
    config["policies"].append({"name": "keep-95", "classifier": "minilm", "weak": WEAK, "strong": STRONG,
                               "quality": 0.95})
    return config


@pytest.fixture(scope="module")
def decisions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decision-log") / "decisions.sqlite"


@pytest.fixture(scope="module")
def url(triton: TritonServer, decisions: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_router(playground_config(triton, decision_log={"path": str(decisions)}),
                    tmp_path_factory.mktemp("playground")) as base:
        yield base


def feedback_rows(db: Path, request_id: str, n: int) -> list[tuple[float | None, str | None]]:
    """(rating, grades) of a request's feedback, once the log's writer has written ``n`` of them."""
    deadline = time.monotonic() + 15
    while True:
        with sqlite3.connect(db, timeout=10) as conn:
            found = conn.execute("SELECT rating, grades FROM feedback WHERE request_id = ? ORDER BY time",
                                 (request_id,)).fetchall()
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("PLAYGROUND_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- helpers -------------------------------------------------------------------------------------
def wait(driver: WebDriver, what: Callable[[], Any], timeout: float = 30, message: str = "") -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda _: what())
    except TimeoutException:
        error = driver.find_element(By.ID, "error").text
        raise AssertionError(f"timed out waiting for {message or what}; the page's error line: {error!r}") from None


def open_page(driver: WebDriver, base: str) -> None:
    driver.get(base + "/ui")
    wait(driver, lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"
         or driver.find_element(By.ID, "error").text, message="the page to load")


def shown(driver: WebDriver, panel: str, name: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#{panel} [data-field='{name}']").text


def type_prompt(driver: WebDriver, text: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)


def set_value(driver: WebDriver, element_id: str, value: str) -> None:
    """Set an input as a user would (a range slider cannot be typed into): value, then the events."""
    driver.execute_script("const el = document.getElementById(arguments[0]); el.value = arguments[1];"
                          "el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change'));",
                          element_id, value)


def override_share(driver: WebDriver, percent: int) -> None:
    box = driver.find_element(By.ID, "share-override")
    if not box.is_selected():
        box.click()
    set_value(driver, "share", str(percent))


def ask(driver: WebDriver, base: str, prompt: str, max_tokens: int) -> None:
    """A fresh page with the prompt typed, greedy decoding and a completion budget."""
    open_page(driver, base)
    set_value(driver, "max-tokens", str(max_tokens))
    set_value(driver, "temperature", "0")
    type_prompt(driver, prompt)


def idle(driver: WebDriver) -> bool:
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "false"


def decision(base: str, prompt: str, model: str = "router", **router: object) -> dict:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if router:
        body["router"] = router
    resp = requests.post(base + "/v1/router/route", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def stats(base: str, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = requests.get(base + "/v1/router/stats", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def usd(x: float) -> str:
    return f"${x:.8f}"


def interpolate(points: list[tuple[float, float]], x: float) -> float:
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


# --- the page itself -----------------------------------------------------------------------------
def test_page_is_served_with_a_strict_content_policy(url: str) -> None:
    page = requests.get(url + "/ui", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    for asset, mime in (("playground.js", "javascript"), ("playground.css", "text/css")):
        resp = requests.get(f"{url}/ui/static/{asset}", timeout=10)
        assert resp.status_code == 200 and mime in resp.headers["Content-Type"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.get(url + "/ui/static/../config.py", timeout=10).status_code == 404


def test_the_page_can_be_turned_off() -> None:
    from router_service.app import create_app
    from router_service.config import load_config

    config = load_config(ROOT / "config" / "router.yaml", environ={})
    assert create_app(config).test_client().get("/ui").status_code == 200
    off = config.model_copy(update={"server": config.server.model_copy(update={"playground": False})})
    client = create_app(off).test_client()
    assert client.get("/ui").status_code == 404 and client.get("/ui/static/playground.js").status_code == 404


def test_decision_as_you_type_and_the_share_slider(browser: WebDriver, url: str) -> None:
    open_page(browser, url)
    models = requests.get(url + "/v1/models", timeout=10).json()["data"]
    policies = [m["id"] for m in models if m["router"]["kind"] == "policy"]
    assert [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "policy")).options] == policies

    # The served calibration as a scale under the slider: share -> the score that sends it strong.
    calibration = stats(url)["calibration"]["minilm"]
    ticks = [t.text.split("\n") for t in browser.find_elements(By.CSS_SELECTOR, "#scale span")]
    assert ticks == [[f"{float(s) * 100:.0f}%", f"≥{v:.3f}"] for s, v in calibration.items()]

    type_prompt(browser, PROMPT)
    expected = decision(url, PROMPT)
    wait(browser, lambda: shown(browser, "decision", "score") == f"{expected['score']:.4f}", message="the decision")
    assert shown(browser, "decision", "target") == expected["target"]
    assert shown(browser, "decision", "reason") == expected["reason"]
    assert shown(browser, "decision", "score_strong_share") == f"{expected['score_strong_share'] * 100:.1f}%"
    assert shown(browser, "decision", "cut") == "strong if in the top 20%"
    assert f"{expected['constraints']['prompt_tokens']} prompt tokens" in shown(browser, "decision", "constraints")

    # Moving the slider re-decides with that strong share, as the API does with router.strong_share.
    for percent, target in ((100, STRONG), (0, WEAK)):
        override_share(browser, percent)
        assert decision(url, PROMPT, strong_share=percent / 100)["target"] == target
        wait(browser, lambda: shown(browser, "decision", "target") == target
             and shown(browser, "decision", "cut") == f"strong if in the top {percent}%", message=f"{percent}%")
    browser.find_element(By.ID, "share-override").click()  # back to the policy's own share
    wait(browser, lambda: shown(browser, "decision", "cut") == "strong if in the top 20%")


def test_send_streams_the_answer_and_the_panel_counts_it(browser: WebDriver, url: str, shots: Path,
                                                          decisions: Path) -> None:
    ask(browser, url, PROMPT, 24)
    before = stats(url)
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda: idle(browser) and shown(browser, "answer-meta", "tokens") != "–", message="the answer")
    after = stats(url)
    target = shown(browser, "answer-meta", "target").split(" ")[0]
    assert target in (WEAK, STRONG)
    assert browser.find_element(By.ID, "answer").text.strip()

    # What the page says the request used and cost is what the router counted.
    was = before["by_target"].get(target, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0})
    now = after["by_target"][target]
    assert now["requests"] == was["requests"] + 1 and after["total"]["requests"] == before["total"]["requests"] + 1
    prompt_tokens, completion_tokens = now["prompt_tokens"] - was["prompt_tokens"], \
        now["completion_tokens"] - was["completion_tokens"]
    assert shown(browser, "answer-meta", "tokens") == f"{prompt_tokens} prompt, {completion_tokens} completion"
    assert 0 < completion_tokens <= 24
    assert shown(browser, "answer-meta", "cost") == usd(now["cost_usd"] - was["cost_usd"])

    # The live panel catches up with the router's stats.
    wait(browser, lambda: shown(browser, "totals", "requests") == str(after["total"]["requests"]), message="the panel")
    row = browser.find_element(By.CSS_SELECTOR, f"#by-target tr[data-target='{target}']").text.split()
    assert row == [target, str(now["requests"]), str(now["prompt_tokens"] + now["completion_tokens"]),
                   f"{now['cost_usd']:.8f}"]
    routed = after["by_policy"]["default"]
    assert shown(browser, "totals", "baseline") == usd(routed["baseline_cost_usd"])
    browser.save_screenshot(str(shots / "playground.png"))

    # Rating the answer records feedback on its request, in the decision log.
    request_id = browser.execute_script("return page.answerId")
    browser.find_element(By.ID, "thumbs-down").click()
    wait(browser, lambda: browser.find_element(By.ID, "rate-state").text == "recorded: bad", message="the rating")
    assert feedback_rows(decisions, request_id, 1) == [(0.0, None)]


def test_compare_asks_every_target_side_by_side(browser: WebDriver, url: str, shots: Path,
                                                decisions: Path) -> None:
    ask(browser, url, PROMPT, 12)
    before = stats(url)["total"]["requests"]
    browser.find_element(By.ID, "compare").click()
    cards = wait(browser, lambda: (lambda cs: cs if len(cs) == 2 and all(c.get_attribute("data-state") for c in cs)
                                   else None)(browser.find_elements(By.CSS_SELECTOR, "#comparison article")),
                 message="both answers")
    assert [c.get_attribute("data-target") for c in cards] == [WEAK, STRONG]
    assert [c.get_attribute("data-state") for c in cards] == ["done", "done"]
    for card in cards:
        # Greedy decoding: the page shows what the target answers to the same body.
        direct = requests.post(url + "/v1/chat/completions", timeout=60, json={
            "model": card.get_attribute("data-target"), "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 12, "temperature": 0}).json()["choices"][0]["message"]["content"]
        assert card.find_element(By.CSS_SELECTOR, "pre").get_attribute("textContent") == direct
        assert "completion tokens" in card.find_element(By.CSS_SELECTOR, "p").text
    assert stats(url)["total"]["requests"] == before + 4  # the page's two, the test's two

    # Picking the better answer grades both compared requests alike.
    cards[1].find_element(By.TAG_NAME, "button").click()
    wait(browser, lambda: cards[1].get_attribute("data-preferred") == "true", message="the preference")
    assert cards[0].get_attribute("data-preferred") == "false"
    for card in cards:
        got = feedback_rows(decisions, card.get_attribute("data-request-id"), 1)
        assert [(rating, json.loads(grades)) for rating, grades in got] == [(None, {WEAK: 0, STRONG: 1})]
    browser.save_screenshot(str(shots / "playground-compare.png"))


def test_model_output_is_shown_as_text_never_as_html(browser: WebDriver, url: str) -> None:
    ask(browser, url, SCRIPT_PROMPT, 40)
    override_share(browser, 0)  # the weak model, whose answer holds a <script> element
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda: idle(browser) and shown(browser, "answer-meta", "tokens") != "–", message="the answer")
    assert shown(browser, "answer-meta", "target").startswith(WEAK)
    answer = browser.find_element(By.ID, "answer")
    assert "<script>" in answer.text and "alert(" in answer.text
    direct = requests.post(url + "/v1/chat/completions", timeout=60, json={
        "model": WEAK, "messages": [{"role": "user", "content": SCRIPT_PROMPT}], "max_tokens": 40,
        "temperature": 0}).json()["choices"][0]["message"]["content"]
    assert answer.get_attribute("textContent") == direct  # the streamed pieces, put together
    browser.find_element(By.ID, "compare").click()
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#comparison article[data-state='done']")) == 2)
    assert "<script>" in browser.find_element(By.CSS_SELECTOR, "#comparison article[data-target='smollm2-135m'] pre").text
    # Nothing was parsed as HTML: no element inside the answers, no script beyond the page's own, no alert.
    assert browser.execute_script("return document.querySelectorAll('#answer *, #comparison pre *').length") == 0
    assert browser.execute_script("return Array.from(document.scripts, s => s.src)") == [url + "/ui/static/playground.js"]
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text


def test_quality_curve_marks_the_policy_operating_point(browser: WebDriver, url: str) -> None:
    open_page(browser, url)
    s = stats(url)
    quality = s["calibration_quality"]["minilm"]
    assert quality is not None and list(quality) == list(s["calibration"]["minilm"])
    curve = [(float(k), v) for k, v in quality.items()] + [(1.0, 1.0)]
    points = browser.find_element(By.CSS_SELECTOR, "#curve polyline").get_attribute("points").split()
    assert len(points) == len(curve) == 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curve circle")) == 1
    note = browser.find_element(By.ID, "operating-point").text
    assert f"20% of traffic strong → about {interpolate(curve, 0.2) * 100:.1f}%" in note

    # A threshold policy: its operating share is the share of calibration traffic scoring above it.
    Select(browser.find_element(By.ID, "policy")).select_by_value("router:by-score")
    by_score = sorted((v, float(k)) for k, v in s["calibration"]["minilm"].items())  # score -> share
    share = interpolate(by_score, 0.6)
    wait(browser, lambda: f"{share * 100:.0f}% of traffic strong → about {interpolate(curve, share) * 100:.1f}%"
         in browser.find_element(By.ID, "operating-point").text, message="the threshold policy's operating point")
    assert "strong if score ≥ 0.6" in browser.find_element(By.ID, "policy-info").text

    # A quality target: the share the router derives from the curve (the stats say which).
    Select(browser.find_element(By.ID, "policy")).select_by_value("router:keep-95")
    implied = stats(url)["policies"]["keep-95"]["implied_strong_share"]
    wait(browser, lambda: f"{implied * 100:.0f}% of traffic strong → about {interpolate(curve, implied) * 100:.1f}%"
         in browser.find_element(By.ID, "operating-point").text, message="the quality target's operating point")
    assert "keep 95% of the strong model's quality" in browser.find_element(By.ID, "policy-info").text


# --- behind keys -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_url(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ValkeyServer() as valkey, run_router(
            playground_config(triton, store={"url": valkey.url}, auth={"master_key": MASTER}),
            tmp_path_factory.mktemp("keyed")) as base:
        yield base


def test_the_page_works_behind_keys(browser: WebDriver, keyed_url: str) -> None:
    open_page(browser, keyed_url)
    assert "401" in browser.find_element(By.ID, "error").text and "Enter an API key" in \
        browser.find_element(By.ID, "error").text
    assert Select(browser.find_element(By.ID, "policy")).options == []

    created = requests.post(keyed_url + "/admin/keys", json={"metadata": {"team": "playground"}}, timeout=10,
                            headers={"Authorization": f"Bearer {MASTER}"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    browser.find_element(By.ID, "api-key").send_keys(key)
    browser.find_element(By.ID, "save-key").click()
    wait(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert browser.find_element(By.ID, "key-state").text == "key set for this tab"
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == ""  # not left in the form
    # Kept in this tab's session only, never in storage that outlives it.
    assert browser.execute_script("return sessionStorage.length") == 1
    assert browser.execute_script("return localStorage.length") == 0 and browser.get_cookies() == []

    type_prompt(browser, PROMPT)
    wait(browser, lambda: shown(browser, "decision", "target") in (WEAK, STRONG), message="a keyed decision")
    set_value(browser, "max-tokens", "4")
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda: idle(browser) and shown(browser, "answer-meta", "tokens") != "–", message="a keyed answer")
    spent = requests.get(keyed_url + "/admin/keys/" + created.json()["id"], timeout=10,
                         headers={"Authorization": f"Bearer {MASTER}"}).json()
    assert json.dumps(spent).count(key) == 0  # the secret is not answered back
    assert stats(keyed_url, MASTER)["total"]["requests"] == 1  # the page's send, under the key
    browser.execute_script("sessionStorage.clear()")
