"""The decision log: every routed request, kept in SQLite for learning from the router's own
traffic (routing data for `make export`), with the feedback clients send about the answers.

Requests never wait for it: ``record`` puts the row on a bounded queue and a background thread
writes batches (under the gevent worker a greenlet, whose sqlite calls run on a real thread);
when the queue is full the row is dropped and counted (``on_drop``). Prompt and
answer text are kept only for the policies the operator opted in (``decision_log.prompts``) and
never for a prompt the privacy rule matched. Rows older than ``retention_days`` are deleted by the
writer, at start and hourly. Several gunicorn workers may share one file (WAL mode)."""
from __future__ import annotations

import atexit
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import DecisionLogConfig
from .cooperative import off_loop

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    request_id TEXT PRIMARY KEY, time REAL NOT NULL, key_id TEXT, model TEXT, policy TEXT, target TEXT,
    reason TEXT, score REAL, confidence REAL, strong_share REAL, model_version TEXT, status INTEGER,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, latency_ms REAL, prompt TEXT, answer TEXT);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, time REAL NOT NULL, key_id TEXT, rating REAL, grades TEXT, comment TEXT);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
CREATE TABLE IF NOT EXISTS shadows (
    request_id TEXT NOT NULL, time REAL NOT NULL, policy TEXT, target TEXT, answer TEXT, cost_usd REAL,
    judge TEXT, verdict TEXT, judge_cost_usd REAL);
CREATE INDEX IF NOT EXISTS shadows_request ON shadows (request_id);
CREATE TABLE IF NOT EXISTS trials (
    request_id TEXT NOT NULL, time REAL NOT NULL, classifier TEXT, serving_version TEXT, serving_score REAL,
    serving_share REAL, candidate_version TEXT, candidate_score REAL, candidate_share REAL);
CREATE INDEX IF NOT EXISTS trials_versions ON trials (candidate_version, time);
"""
_BATCH = 500
_PURGE_EVERY_S = 3600.0
# Feedback may name a request that another worker answered a moment ago and has not written yet
# (its row waits in that worker's queue): the file is read again for this long before "no such request".
_OWNER_WAIT_S = 3.0


@dataclass(frozen=True)
class DecisionRow:
    request_id: str
    time: float
    key_id: str | None
    model: str | None
    policy: str | None
    target: str | None
    reason: str | None
    score: float | None
    confidence: float | None
    strong_share: float | None
    model_version: str | None
    status: int
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    latency_ms: float
    prompt: str | None = None  # only for opted-in policies, never for a private prompt
    answer: str | None = None


@dataclass(frozen=True)
class FeedbackRow:
    request_id: str
    time: float
    key_id: str | None
    rating: float | None
    grades: str | None  # JSON: target -> score in [0, 1]
    comment: str | None


@dataclass(frozen=True)
class ShadowRow:
    """The other target's answer to a logged request (shadow.py), and the judge's verdict."""

    request_id: str
    time: float
    policy: str
    target: str
    answer: str | None  # only where the policy's text is kept
    cost_usd: float
    judge: str | None
    verdict: str | None  # which answer the judge preferred: "served", "shadow", "tie", or None (no verdict)
    judge_cost_usd: float | None


@dataclass(frozen=True)
class TrialRow:
    """A candidate model version's score for a logged request, beside the serving version's (a
    release in shadow mode, trials.py): what the candidate would have decided."""

    request_id: str
    time: float
    classifier: str
    serving_version: str | None
    serving_score: float | None
    serving_share: float | None
    candidate_version: str
    candidate_score: float
    candidate_share: float | None


# Rows other than decisions, by the table they go to (columns = the dataclass's fields).
_TABLES: dict[type, str] = {FeedbackRow: "feedback", ShadowRow: "shadows", TrialRow: "trials"}
Row = DecisionRow | FeedbackRow | ShadowRow | TrialRow


def _insert(table: str, columns: list[str], verb: str = "INSERT") -> str:
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class DecisionLog:
    def __init__(self, config: DecisionLogConfig, on_write: Callable[[int], None] = lambda n: None,
                 on_drop: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.keeps_prompts = frozenset(config.prompts)
        Path(config.path).parent.mkdir(parents=True, exist_ok=True)
        with _connect(config.path) as conn:
            conn.executescript(_SCHEMA)
        self._queue: queue.Queue[Row] = queue.Queue(maxsize=config.queue_size)
        self._on_write, self._on_drop = on_write, on_drop
        # Request ids queued, not yet written (feedback may name them already) -> their key id.
        self._pending: dict[str, str | None] = {}
        self._lock = threading.Lock()
        # One reading connection, opened on first use. Not one per thread: under the gevent worker
        # threading.local is per greenlet, so every feedback request would open the file anew.
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()
        atexit.register(self.flush, 5.0)  # a worker that stops writes what it still holds

    def keeps_text(self, policy: str | None, private: bool) -> bool:
        return (policy or "manual") in self.keeps_prompts and not private

    def record(self, row: DecisionRow) -> None:
        """Queue the row; never blocks. A full queue drops it (counted)."""
        with self._lock:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._on_drop()
                return
            self._pending[row.request_id] = row.key_id

    def owner(self, request_id: str, wait_s: float = _OWNER_WAIT_S) -> tuple[bool, str | None]:
        """(is the request in the log, the key id it was made with). A request this worker has not
        written yet is known from its queue; until ``wait_s`` passes the queue and the file are
        looked at again: another worker's writer may be behind, or a stream's row on its way."""
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                if request_id in self._pending:
                    return True, self._pending[request_id]
            with self._reader_lock:
                if self._reader is None:
                    self._reader = _connect(self.config.path)
                found = self._reader.execute("SELECT key_id FROM decisions WHERE request_id = ?",
                                             (request_id,)).fetchone()
            if found is not None:
                return True, found[0]
            if time.monotonic() >= deadline:
                return False, None
            time.sleep(0.05)  # cooperative under the gevent worker

    def add(self, row: FeedbackRow | ShadowRow | TrialRow) -> bool:
        """Queue a feedback, shadow or trial row; False when the queue is full (dropped, counted)."""
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._on_drop()
            return False
        return True

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    # --- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        conn = _connect(self.config.path)
        next_purge = 0.0
        while True:
            if time.monotonic() >= next_purge:
                self._purge(conn)
                next_purge = time.monotonic() + _PURGE_EVERY_S
            try:
                batch = [self._queue.get(timeout=1.0)]
            except queue.Empty:
                continue
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(conn, batch)

    def _write(self, conn: sqlite3.Connection, batch: list[Row]) -> None:
        decisions = [asdict(r) for r in batch if isinstance(r, DecisionRow)]
        others = {table: [asdict(r) for r in batch if isinstance(r, cls)] for cls, table in _TABLES.items()}
        while True:
            try:
                off_loop(self._transaction, conn, decisions, others)
                break
            except sqlite3.OperationalError:  # locked for longer than the busy timeout: keep the batch, retry
                time.sleep(0.5)
        with self._lock:
            for row in decisions:
                self._pending.pop(row["request_id"], None)
        for _ in batch:
            self._queue.task_done()
        self._on_write(len(decisions))

    @staticmethod
    def _transaction(conn: sqlite3.Connection, decisions: list[dict], others: dict[str, list[dict]]) -> None:
        with conn:  # one transaction per batch
            if decisions:
                conn.executemany(_insert("decisions", list(decisions[0]), "INSERT OR REPLACE"), decisions)
            for table, rows in others.items():
                if rows:
                    conn.executemany(_insert(table, list(rows[0])), rows)

    def _purge(self, conn: sqlite3.Connection) -> None:
        off_loop(self._delete_older, conn, time.time() - self.config.retention_days * 86400)

    @staticmethod
    def _delete_older(conn: sqlite3.Connection, cutoff: float) -> None:
        try:
            with conn:
                for table in _TABLES.values():
                    conn.execute(f"DELETE FROM {table} WHERE request_id IN "
                                 "(SELECT request_id FROM decisions WHERE time < ?)", (cutoff,))
                conn.execute("DELETE FROM decisions WHERE time < ?", (cutoff,))
        except sqlite3.OperationalError:
            pass  # locked: the next purge will do it

