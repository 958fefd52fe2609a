"""The running totals of /v1/router/stats summed over every router process through the store.
Each process records locally (no store call on the hot path) and adds what it recorded to the
store's hashes every ``flush_s`` seconds, and before it answers /v1/router/stats; other
processes' answers are at most that old."""
from __future__ import annotations

import threading
from dataclasses import fields
from typing import Any

from .generation import Usage
from .stats import COUNTERS, Stats, Totals, with_policy_savings
from .store import Store, StoreUnavailable

_FLOATS = {"cost_usd", "baseline_cost_usd"}


class SharedStats:
    def __init__(self, store: Store, flush_s: float = 1.0) -> None:
        self._store = store
        self._pending = Stats()
        self._flush_s = flush_s
        self._flusher: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stop = threading.Event()

    def _ensure_flusher(self) -> None:
        # Started by the first request, in the worker process (a thread does not survive a fork).
        if self._flusher is None:
            with self._start_lock:
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._run, name="stats-flush", daemon=True)
                    self._flusher.start()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()

    def record(self, target: str, policy: str | None, usage: Usage, cost_usd: float,
               baseline_cost_usd: float | None, *, fallback: bool = False, degraded: bool = False,
               confidence: float | None = None, low_confidence: bool = False) -> None:
        self._pending.record(target, policy, usage, cost_usd, baseline_cost_usd, fallback=fallback,
                             degraded=degraded, confidence=confidence, low_confidence=low_confidence)
        self._ensure_flusher()

    def record_error(self, target: str | None) -> None:
        self._pending.record_error(target)
        self._ensure_flusher()

    def flush(self) -> None:
        drained = self._pending.drain()
        groups = {name: t for name, t in drained.groups().items() if t != Totals()}
        counters = {k: v for k, v in drained.counters().items() if v}
        if not groups and not counters:
            return

        def write(c):  # noqa: ANN001, ANN202
            with c.pipeline(transaction=True) as p:
                for name, totals in groups.items():
                    key = self._store.key("stats", name)
                    p.sadd(self._store.key("stats", "groups"), name)
                    for f in fields(Totals):
                        value = getattr(totals, f.name)
                        if value:
                            (p.hincrbyfloat if f.name in _FLOATS else p.hincrby)(key, f.name, value)
                for name, value in counters.items():
                    p.hincrby(self._store.key("stats", "counters"), name, value)
                p.execute()

        try:
            self._store.run("stats_flush", write)
        except StoreUnavailable:
            self._pending.merge(drained)  # kept for the next flush

    def snapshot(self) -> dict[str, Any]:
        self.flush()

        def read(c):  # noqa: ANN001, ANN202
            names = sorted(c.smembers(self._store.key("stats", "groups")))
            with c.pipeline(transaction=False) as p:
                for name in names:
                    p.hgetall(self._store.key("stats", name))
                p.hgetall(self._store.key("stats", "counters"))
                *groups, counters = p.execute()
            return dict(zip(names, groups)), counters

        groups, counters = self._store.run("stats_read", read)

        def totals(raw: dict[str, str]) -> dict[str, Any]:
            t = Totals()
            for f in fields(Totals):
                setattr(t, f.name, (float if f.name in _FLOATS else int)(raw.get(f.name, 0)))
            return t.as_dict()

        by = {"target": {}, "policy": {}}  # type: dict[str, dict[str, Any]]
        for name, raw in groups.items():
            kind, _, key = name.partition(":")
            if kind in by:
                by[kind][key] = totals(raw)
        return with_policy_savings({
            "total": totals(groups.get("total", {})), "by_target": dict(sorted(by["target"].items())),
            "by_policy": dict(sorted(by["policy"].items())),
            **{k: int(counters.get(k, 0)) for k in COUNTERS},
            "scope": "all router processes sharing the store"})
