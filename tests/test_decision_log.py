"""The decision log and feedback, through real gunicorn routers in front of the real Triton
(classifier and local LLMs), written to a real SQLite file, read back with sqlite3."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import requests
import yaml

from local_stack.triton_launcher import TritonServer
from local_stack.valkey import ValkeyServer
from router_service.config import DecisionLogConfig
from router_service.decision_log import DecisionLog, DecisionRow

from .conftest import router_config_dict, run_router

WEAK, STRONG = "smollm2-135m", "gemma3-270m"
SECRET_WORD = "zanzibar-marmalade"  # in prompts, to see where prompt text ends up
MASTER = "mk-decision-log-0123456789"


def chat(url: str, content: str, model: str = "router", key: str | None = None, **extra: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url + "/v1/chat/completions", timeout=120, headers=headers, json={
        "model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 3, **extra})


def rows(db: Path, sql: str, *args: object, wait_for: int = 0, timeout_s: float = 15) -> list[sqlite3.Row]:
    """Query the log, waiting (the writer is asynchronous) until at least ``wait_for`` rows answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        with sqlite3.connect(db, timeout=10) as conn:
            conn.row_factory = sqlite3.Row
            found = conn.execute(sql, args).fetchall()
        if len(found) >= wait_for or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def feedback(url: str, key: str | None = None, **body: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url + "/v1/router/feedback", json=body, headers=headers, timeout=30)


def logged_router(triton: TritonServer, tmp_path: Path, **log: object) -> tuple[AbstractContextManager[str], Path]:
    """A router with a decision log in ``tmp_path``: (its URL, the log's file) once entered."""
    db = tmp_path / "decisions.sqlite"
    return run_router(router_config_dict(triton, decision_log={"path": str(db), **log}), tmp_path), db


@pytest.fixture(scope="module")
def logged(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("decision-log")
    db = tmp / "decisions.sqlite"
    config = router_config_dict(triton, decision_log={"path": str(db), "prompts": ["texts"]})
    config["policies"].append({"name": "texts", "classifier": "minilm", "weak": WEAK, "strong": STRONG,
                               "strong_share": 0.5})
    with run_router(config, tmp, env={"WEB_CONCURRENCY": "2"}) as url:  # two workers, one file
        yield url, db


@pytest.fixture(scope="module")
def comparisons(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """A router that keeps the text of manually routed requests (comparisons): (URL, log, config file)."""
    tmp = tmp_path_factory.mktemp("comparisons")
    db, config_path = tmp / "decisions.sqlite", tmp / "router.yaml"
    config = router_config_dict(triton, decision_log={"path": str(db), "prompts": ["manual"]})
    config_path.write_text(yaml.safe_dump(config))
    with run_router(config, tmp) as url:
        yield url, db, config_path


def test_every_routed_request_is_logged_as_answered(logged: tuple[str, Path]) -> None:
    url, db = logged
    answers = [chat(url, f"What is {n} times {n}? {SECRET_WORD}") for n in range(6)]
    answers.append(chat(url, "Name a prime.", model=WEAK))  # manual routing
    answers.append(chat(url, "Name a colour.", stream=True, stream_options={"include_usage": True}))
    answers.append(chat(url, "x", router={"threshold": 2.0}))  # refused: 400, no decision
    assert [r.status_code for r in answers] == [200] * 8 + [400]
    ids = [r.headers["x-request-id"] for r in answers[:8]]
    found = {r["request_id"]: r for r in rows(db, f"SELECT * FROM decisions WHERE request_id IN "
                                                  f"({','.join('?' * len(ids))})", *ids, wait_for=len(ids))}
    assert set(found) == set(ids)
    assert not rows(db, "SELECT * FROM decisions WHERE request_id = ?", answers[8].headers["x-request-id"])
    for resp in answers[:7]:  # the non-streamed ones: every field as the answer reported it
        row = found[resp.headers["x-request-id"]]
        usage = resp.json()["usage"]
        assert row["target"] == resp.headers["x-router-target"] and row["status"] == 200
        assert row["policy"] == (None if resp.headers["x-router-policy"] == "manual" else resp.headers["x-router-policy"])
        assert row["reason"] == resp.headers["x-router-reason"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert row["cost_usd"] == pytest.approx(float(resp.headers["x-router-cost-usd"]), abs=1e-8)
        if "x-router-score" in resp.headers:
            assert row["score"] == pytest.approx(float(resp.headers["x-router-score"]), abs=1e-6)
            assert row["model_version"] and row["strong_share"] == 0.2
        assert row["latency_ms"] > 0 and row["key_id"] is None
        assert row["prompt"] is None and row["answer"] is None  # no text unless a policy opts in
    stream_row = found[ids[7]]
    assert stream_row["status"] == 200 and stream_row["completion_tokens"] >= 1
    for part in db.parent.glob(db.name + "*"):  # the database and its write-ahead log
        assert SECRET_WORD.encode() not in part.read_bytes()


def test_opted_in_policy_keeps_text_but_never_a_private_prompt(logged: tuple[str, Path]) -> None:
    url, db = logged
    kept = chat(url, f"Spell {SECRET_WORD}.", model="router:texts")
    private = chat(url, f"Mail {SECRET_WORD} to jane.doe@example.com please.", model="router:texts")
    assert kept.status_code == private.status_code == 200
    kept_row, private_row = (rows(db, "SELECT * FROM decisions WHERE request_id = ?", r.headers["x-request-id"],
                                  wait_for=1)[0] for r in (kept, private))
    assert json.loads(kept_row["prompt"]) == [{"role": "user", "content": f"Spell {SECRET_WORD}."}]
    assert kept_row["answer"] == kept.json()["choices"][0]["message"]["content"]
    assert private_row["prompt"] is None and private_row["answer"] is None
    assert private_row["policy"] == "texts"


def test_feedback_joins_the_logged_request(logged: tuple[str, Path]) -> None:
    url, db = logged
    rid = chat(url, "Name a river.").headers["x-request-id"]
    # Sent at once: the row may still be on its way to the file, and the feedback is taken anyway.
    up = feedback(url, request_id=rid, thumbs="up", comment="good")
    assert up.status_code == 202, up.text
    assert up.json()["rating"] == 1.0
    graded = feedback(url, request_id=rid, grades={WEAK: 0.25, STRONG: 1.0})
    assert graded.status_code == 202, graded.text
    joined = rows(db, "SELECT d.target, f.rating, f.grades, f.comment FROM feedback f JOIN decisions d "
                      "USING (request_id) WHERE request_id = ? ORDER BY f.time", rid, wait_for=2)
    assert [(r["rating"], r["comment"]) for r in joined] == [(1.0, "good"), (None, None)]
    assert json.loads(joined[1]["grades"]) == {WEAK: 0.25, STRONG: 1.0}

    # Client mistakes: OpenAI-style errors, and nothing written.
    for body, status, code in (
            ({"request_id": "no-such-request", "rating": 0.5}, 404, "request_not_found"),
            ({"request_id": rid}, 400, "missing_required_parameter"),
            ({"request_id": rid, "rating": 1.5}, 400, "invalid_value"),
            ({"request_id": rid, "rating": 1.0, "thumbs": "up"}, 400, "invalid_value"),
            ({"request_id": rid, "grades": {"nobody": 1.0}}, 400, "invalid_value"),
            ({"request_id": rid, "rating": 1.0, "stars": 5}, 400, "unknown_parameter"),
            ({"request_id": "bad id!", "rating": 1.0}, 400, "invalid_value")):
        resp = feedback(url, **body)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]["code"] == code, (body, resp.text)
    time.sleep(0.5)
    assert len(rows(db, "SELECT * FROM feedback WHERE request_id = ?", rid)) == 2


def test_a_stalled_writer_drops_rows_and_never_delays_requests(triton: TritonServer, tmp_path: Path) -> None:
    router, db = logged_router(triton, tmp_path, queue_size=2)
    with router as url:
        assert chat(url, "warm up", model=WEAK).status_code == 200
        rows(db, "SELECT * FROM decisions", wait_for=1)
        # Another process holds the file's write lock: the writer cannot write.
        holder = sqlite3.connect(db, timeout=1, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            answers = [chat(url, f"Count to {n}.", model=WEAK) for n in range(8)]
            assert all(r.status_code == 200 for r in answers)
            metrics = requests.get(url + "/metrics", timeout=10).text
            dropped = next(float(line.split()[-1]) for line in metrics.splitlines()
                           if line.startswith('router_decision_log_records_total{outcome="dropped"}'))
            # At most one batch in the writer's hands (what was queued when it woke: up to 2) and
            # two queued: the rest dropped, and counted.
            assert dropped >= 8 - 4
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Once the lock is gone, what was kept is written.
        kept = rows(db, "SELECT * FROM decisions", wait_for=1 + 8 - int(dropped))
        assert len(kept) == 1 + 8 - int(dropped)


def test_old_rows_are_deleted_after_the_retention(triton: TritonServer, tmp_path: Path) -> None:
    router, db = logged_router(triton, tmp_path, retention_days=1)
    with router as url:
        assert chat(url, "Hi", model=WEAK).status_code == 200
        rows(db, "SELECT * FROM decisions", wait_for=1)
    with sqlite3.connect(db) as conn:  # a row from two days ago, with its feedback
        conn.execute("INSERT INTO decisions (request_id, time, status, latency_ms) VALUES ('old', ?, 200, 1.0)",
                     (time.time() - 2 * 86400,))
        conn.execute("INSERT INTO feedback (request_id, time, rating) VALUES ('old', ?, 1.0)", (time.time(),))
    with logged_router(triton, tmp_path, retention_days=1)[0]:  # the writer purges when it starts
        gone = rows(db, "SELECT * FROM decisions WHERE request_id = 'old'")
        deadline = time.monotonic() + 15
        while gone and time.monotonic() < deadline:
            time.sleep(0.1)
            gone = rows(db, "SELECT * FROM decisions WHERE request_id = 'old'")
        assert not gone and not rows(db, "SELECT * FROM feedback WHERE request_id = 'old'")
        assert len(rows(db, "SELECT * FROM decisions")) == 1  # the recent row stays


def test_feedback_belongs_to_the_key_that_made_the_request(triton: TritonServer, tmp_path: Path) -> None:
    db = tmp_path / "decisions.sqlite"
    with ValkeyServer() as valkey:
        config = router_config_dict(triton, decision_log={"path": str(db)}, store={"url": valkey.url},
                                    auth={"master_key": MASTER})
        with run_router(config, tmp_path) as url:
            keys = []
            for _ in range(2):
                made = requests.post(url + "/admin/keys", json={}, timeout=10,
                                     headers={"Authorization": f"Bearer {MASTER}"})
                assert made.status_code == 201, made.text
                keys.append((made.json()["id"], made.json()["key"]))
            (mine_id, mine), (_, theirs) = keys
            rid = chat(url, "Name a planet.", key=mine).headers["x-request-id"]
            assert rows(db, "SELECT key_id FROM decisions WHERE request_id = ?", rid, wait_for=1)[0][0] == mine_id
            assert feedback(url, request_id=rid, rating=0.5).status_code == 401  # no key
            assert feedback(url, theirs, request_id=rid, rating=0.5).status_code == 404  # not theirs to rate
            assert feedback(url, mine, request_id=rid, rating=0.5).status_code == 202
            assert feedback(url, MASTER, request_id=rid, rating=0.75).status_code == 202
            got = rows(db, "SELECT key_id, rating FROM feedback WHERE request_id = ? ORDER BY time", rid, wait_for=2)
            assert [(r["key_id"], r["rating"]) for r in got] == [(mine_id, 0.5), (None, 0.75)]


def test_feedback_without_a_decision_log_says_so(router_url: str) -> None:
    resp = feedback(router_url, request_id="abc", rating=1.0)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "decision_log_disabled"


def test_graded_comparisons_become_routing_data(comparisons: tuple[str, Path, Path], tmp_path: Path) -> None:
    """The log, as `make export` reads routing data: prompts graded for both of the policy's
    targets (comparison grades, or ratings of each target's answer), the newest ones for validation."""
    from export.data import load_models, load_routing_set
    from export.from_log import main as from_log

    url, db, config_path = comparisons
    expected = {}
    for n, (weak_grade, strong_grade) in enumerate([(0.0, 1.0), (1.0, 1.0), (0.25, 0.75)]):
        prompt = f"Compare answers {n}: what is {n} + {n}?"
        ids = [chat(url, prompt, model=target).headers["x-request-id"] for target in (WEAK, STRONG)]
        for rid in ids:  # both compared requests carry the same grades, as the playground sends them
            assert feedback(url, request_id=rid, grades={WEAK: weak_grade, STRONG: strong_grade}).status_code == 202
        expected[prompt] = {WEAK: weak_grade, STRONG: strong_grade}
    rated = "Rated answers: name a fruit."
    for target, thumbs in ((WEAK, "down"), (STRONG, "up"), (STRONG, "down")):
        rid = chat(url, rated, model=target).headers["x-request-id"]
        assert feedback(url, request_id=rid, thumbs=thumbs).status_code == 202
    expected[rated] = {WEAK: 0.0, STRONG: 0.5}  # the mean of what each target got
    one_sided = chat(url, "Only the weak one was rated.", model=WEAK).headers["x-request-id"]
    assert feedback(url, request_id=one_sided, rating=1.0).status_code == 202
    private = chat(url, "Reply to jane.doe@example.com", model=WEAK).headers["x-request-id"]
    assert feedback(url, request_id=private, grades={WEAK: 1.0, STRONG: 0.0}).status_code == 202
    rows(db, "SELECT * FROM feedback", wait_for=11)

    out = tmp_path / "from-log"
    assert from_log(["--db", str(db), "--config", str(config_path), "--out-dir", str(out),
                     "--val-fraction", "0.25"]) == 0
    pair = load_models(out / "models.json")
    assert (pair.weak, pair.strong) == (WEAK, STRONG)
    assert json.loads((out / "models.json").read_text())["models"][STRONG]["usd_per_1m_output_tokens"] == 0.05
    train, val = (load_routing_set(out / f"{name}.jsonl", pair) for name in ("train", "val"))
    assert train.prompts == list(expected)[:3] and val.prompts == [rated]  # the newest prompt validates
    for data in (train, val):
        for prompt, w, s in zip(data.prompts, data.weak, data.strong):
            assert (w, s) == (expected[prompt][WEAK], expected[prompt][STRONG])


def test_feedback_finds_a_row_another_worker_has_not_written_yet(tmp_path: Path) -> None:
    """Two workers share one file (the real SQLite, no router). Feedback sent the moment an answer
    arrives may reach the worker that did not answer, while the answering worker's writer is still
    behind: it looks again until the row lands, and says "no such request" only for an unknown one."""
    config = DecisionLogConfig(path=str(tmp_path / "decisions.sqlite"))
    answered, other = DecisionLog(config), DecisionLog(config)
    holder = sqlite3.connect(config.path, timeout=1, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # the answering worker's writer cannot write yet
    answered.record(DecisionRow("req-1", time.time(), "key-1", "router", "balanced", WEAK, "classifier", 0.2, 0.9,
                                0.3, "5", 200, 10, 3, 0.0, 12.0))
    assert answered.owner("req-1", wait_s=0) == (True, "key-1")  # its own queue
    assert other.owner("req-1", wait_s=0) == (False, None)  # not in the file yet
    release = threading.Timer(0.3, holder.execute, ("COMMIT",))
    release.start()
    try:
        assert other.owner("req-1") == (True, "key-1")
    finally:
        release.join()
    assert other.owner("no-such-request", wait_s=0.2) == (False, None)
