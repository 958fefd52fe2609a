"""Shadow comparisons through a real gunicorn router: the other target answers in the background,
a local LLM judges (SmolLM2 on Triton, the one local model that answers the judge's question with a
letter; a production deployment names a strong model), the decision log keeps both answers and the
verdict, and export.from_log turns judged prompts into routing data."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import requests
import yaml

from export.from_log import main as from_log
from local_stack.triton_launcher import TritonServer
from router_service.shadow import verdict_of

from .conftest import router_config_dict, run_router

WEAK, STRONG = "smollm2-135m", "gemma3-270m"


def query(db: Path, sql: str, n: int, timeout_s: float = 90) -> list[sqlite3.Row]:
    deadline = time.monotonic() + timeout_s
    while True:
        with sqlite3.connect(db, timeout=10) as conn:
            conn.row_factory = sqlite3.Row
            found = conn.execute(sql).fetchall()
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def metric(url: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}{{{want}}} in /metrics")


def test_the_judge_verdict_is_read_strictly() -> None:
    replies = ("A", " b.", "TIE", "Tie: both", "A is better", "The better answer is B.", "Answer A", "I'm not sure",
               "a and b", "This is a guess", "")
    assert [verdict_of(r) for r in replies] == ["A", "B", "TIE", "TIE", "A", "B", "A", None, "A", None, None]


def test_shadows_are_answered_judged_logged_and_capped(triton: TritonServer, tmp_path: Path) -> None:
    db, config_path = tmp_path / "decisions.sqlite", tmp_path / "router.yaml"
    config = router_config_dict(triton, decision_log={"path": str(db), "prompts": ["default"]})
    config["policies"][0]["shadow"] = {"share": 1.0, "judge": WEAK, "max_per_minute": 3}
    config_path.write_text(yaml.safe_dump(config))
    with run_router(config, tmp_path) as url:
        answers = [requests.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "router", "messages": [{"role": "user", "content": f"What is {n} plus {n}?"}],
            "max_tokens": 8, "temperature": 0}) for n in range(5)]
        private = requests.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "router", "messages": [{"role": "user", "content": "Email jane.doe@example.com the sum."}],
            "max_tokens": 4})
        assert all(r.status_code == 200 for r in answers + [private])
        shadows = query(db, "SELECT * FROM shadows ORDER BY time", 3)
        time.sleep(1.0)  # nothing more may come: two were over the rate, one private
        shadows = query(db, "SELECT * FROM shadows ORDER BY time", 3)
        assert len(shadows) == 3
        served = {r.headers["x-request-id"]: r for r in answers}
        for row in shadows:
            resp = served[row["request_id"]]
            # The other end of the policy answered the same request; its text is kept (opted in).
            assert row["target"] == (WEAK if resp.headers["x-router-target"] == STRONG else STRONG)
            assert row["answer"] and row["cost_usd"] > 0 and row["judge"] == WEAK
            assert row["verdict"] in ("served", "shadow", "tie", None)
        assert metric(url, "router_shadow_comparisons_total", policy="default", outcome="rate_limited") == 2
        assert metric(url, "router_shadow_comparisons_total", policy="default", outcome="private") == 1
        judged = [r for r in shadows if r["verdict"] is not None]
        assert judged  # SmolLM2 answers with a letter
        assert metric(url, "router_shadow_comparisons_total", policy="default", outcome="done") == len(judged)
        assert metric(url, "router_shadow_comparisons_total", policy="default", outcome="unjudged") == \
            3 - len(judged)
        shadow_cost = sum(metric(url, "router_shadow_cost_usd_total", policy="default", target=t) for t in (WEAK, STRONG))
        assert shadow_cost == pytest.approx(sum(r["cost_usd"] + (r["judge_cost_usd"] or 0) for r in shadows), abs=1e-9)
        # The user's stats count the user's requests only.
        assert requests.get(url + "/v1/router/stats", timeout=10).json()["total"]["requests"] == 6

    # Each verdict is feedback: grades for both targets of the request's prompt.
    grades = {r["request_id"]: json.loads(r["grades"]) for r in query(
        db, "SELECT * FROM feedback WHERE comment = 'judge:smollm2-135m'", len(judged))}
    assert set(grades) == {r["request_id"] for r in judged}
    for row in judged:
        answered = served[row["request_id"]].headers["x-router-target"]
        expected = {"served": {answered: 1.0, row["target"]: 0.0}, "shadow": {answered: 0.0, row["target"]: 1.0},
                    "tie": {answered: 0.5, row["target"]: 0.5}}[row["verdict"]]
        assert grades[row["request_id"]] == expected
    # ...which export.from_log turns into routing data.
    out = tmp_path / "from-log"
    assert from_log(["--db", str(db), "--config", str(config_path), "--out-dir", str(out), "--val-fraction", "0"]) == 0
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(records) == len(judged)
    assert all(set(r["scores"]) == {WEAK, STRONG} for r in records)
