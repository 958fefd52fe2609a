"""Per-target circuit breaker: N failures within a window open it for a cooldown, after which
one trial call is let through (half-open); its success closes the circuit, its failure reopens it."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from .config import CircuitBreakerConfig

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class BreakerSnapshot:
    state: State
    recent_failures: int
    opened_at: float | None
    retry_in_s: float


class CircuitBreaker:
    def __init__(self, config: CircuitBreakerConfig, clock=time.monotonic) -> None:  # noqa: ANN001
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        self._trial_in_flight = False

    def _state(self, now: float) -> State:
        if self._opened_at is None:
            return "closed"
        return "open" if now - self._opened_at < self._config.cooldown_s else "half_open"

    @property
    def state(self) -> State:
        with self._lock:
            return self._state(self._clock())

    def allow(self) -> bool:
        """May a call go to this target now? In half-open state only one trial at a time."""
        with self._lock:
            state = self._state(self._clock())
            if state == "closed":
                return True
            if state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures.clear()
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            now = self._clock()
            if self._opened_at is not None:  # the half-open trial failed: open again
                self._opened_at = now
                self._trial_in_flight = False
                return
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self._config.window_s:
                self._failures.popleft()
            if len(self._failures) >= self._config.failure_threshold:
                self._opened_at = now

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            now = self._clock()
            state = self._state(now)
            retry_in = 0.0 if self._opened_at is None else max(0.0, self._config.cooldown_s - (now - self._opened_at))
            return BreakerSnapshot(state, len(self._failures), self._opened_at, round(retry_in, 3))
