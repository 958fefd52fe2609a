"""A circuit breaker whose state lives in the shared store, so that every router process and
replica stops calling a failing target together: failures within the window are a sorted set,
the open circuit a timestamp, and the half-open trial a key only one process can take.

The hot path stays cheap: a process reads the circuit's state at most every ``refresh_s`` (a
circuit opened elsewhere is seen within that), and writes only on failures (and on the first
success after them). While the store is unreachable each process falls back to its own local
breaker, so routing goes on."""
from __future__ import annotations

import threading
import time
import uuid

from .circuit_breaker import BreakerSnapshot, CircuitBreaker, State
from .config import CircuitBreakerConfig
from .store import Store, StoreUnavailable

# KEYS: failures (sorted set), opened (ms timestamp), trial. ARGV: now ms, window ms, threshold,
# member. A failure while open (the half-open trial's) reopens; else it joins the window.
_FAIL = """
local now = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[2], now)
  redis.call('DEL', KEYS[3])
  return now
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], now)
  return now
end
return -1
"""


class SharedBreaker:
    def __init__(self, target: str, config: CircuitBreakerConfig, store: Store, refresh_s: float = 0.5,
                 clock=time.time) -> None:  # noqa: ANN001
        self._config = config
        self._store = store
        self._clock = clock
        self._refresh_s = refresh_s
        self._local = CircuitBreaker(config)  # while the store is unreachable
        self._keys = [store.key("breaker", target, part) for part in ("failures", "opened", "trial")]
        self._fail = store.client.register_script(_FAIL)
        self._lock = threading.Lock()
        self._opened_ms: float | None = None  # this process's view of the shared state
        self._read_at = float("-inf")
        self._dirty = False  # this process recorded failures not yet cleared by a success

    def _now_ms(self) -> float:
        return self._clock() * 1000

    def _opened(self) -> float | None:
        now = self._clock()
        if now - self._read_at >= self._refresh_s:
            raw = self._store.run("breaker_state", lambda c: c.get(self._keys[1]))
            with self._lock:
                self._opened_ms, self._read_at = (None if raw is None else float(raw)), now
        return self._opened_ms

    def _state(self, opened_ms: float | None) -> State:
        if opened_ms is None:
            return "closed"
        return "open" if self._now_ms() - opened_ms < self._config.cooldown_s * 1000 else "half_open"

    @property
    def state(self) -> State:
        """This process's view (refreshed at most every refresh_s): cheap enough for every request."""
        try:
            return self._state(self._opened())
        except StoreUnavailable:
            return self._local.state

    def allow(self) -> bool:
        try:
            state = self._state(self._opened())
            if state == "closed":
                return True
            if state == "open":
                return False
            # Half-open: one trial among all processes; it expires if its process dies mid-call.
            ttl = int(self._config.cooldown_s * 1000)
            return bool(self._store.run("breaker_trial", lambda c: c.set(self._keys[2], "1", nx=True, px=ttl)))
        except StoreUnavailable:
            return self._local.allow()

    def record_success(self) -> None:
        self._local.record_success()
        if not self._dirty and self._opened_ms is None:
            return  # nothing of ours to clear: no store call on the hot path
        try:
            self._store.run("breaker_success", lambda c: c.delete(*self._keys))
            with self._lock:
                self._opened_ms, self._read_at, self._dirty = None, self._clock(), False
        except StoreUnavailable:
            pass

    def record_failure(self) -> None:
        self._local.record_failure()
        now = self._now_ms()
        member = f"{now:.0f}-{uuid.uuid4().hex[:8]}"
        try:
            opened = self._store.run("breaker_failure", lambda c: self._fail(
                keys=self._keys, args=[int(now), int(self._config.window_s * 1000), self._config.failure_threshold,
                                       member], client=c))
        except StoreUnavailable:
            return
        with self._lock:
            self._dirty = True
            if float(opened) >= 0:
                self._opened_ms, self._read_at = float(opened), self._clock()

    def snapshot(self) -> BreakerSnapshot:
        try:
            def read(c):  # noqa: ANN001, ANN202
                with c.pipeline(transaction=False) as p:
                    p.get(self._keys[1])
                    p.zcount(self._keys[0], self._now_ms() - self._config.window_s * 1000, "+inf")
                    return p.execute()

            raw, failures = self._store.run("breaker_state", read)
        except StoreUnavailable:
            return self._local.snapshot()
        opened = None if raw is None else float(raw)
        state = self._state(opened)
        retry = 0.0 if opened is None else max(0.0, self._config.cooldown_s - (self._now_ms() - opened) / 1000)
        return BreakerSnapshot(state, int(failures), None if opened is None else opened / 1000, round(retry, 3))
