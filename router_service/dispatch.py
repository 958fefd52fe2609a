"""Calling the decided targets: ordered fallbacks, Retry-After and per-target circuit breakers.

The candidates come from the policy (already filtered for privacy, context window and tools),
so a fallback can never break those rules. A candidate is skipped while its circuit is open;
connection errors, timeouts, 5xx, 429 and a refused upstream key (401/403) move on to the next
candidate (a 429 whose Retry-After is short is first retried on the same target); any other
error is the client's and is final.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .circuit_breaker import BreakerSnapshot
from .config import ReliabilityConfig
from .generation import Chunk, Completion, GenerationRequest
from .targets import Target, TargetError

T = TypeVar("T")


@dataclass(frozen=True)
class Served:
    target: str
    attempts: tuple[str, ...]  # every target tried, in order, the serving one last

    @property
    def fell_back(self) -> bool:
        return len(self.attempts) > 1


class Breaker(Protocol):
    """circuit_breaker.CircuitBreaker (one process) or shared_breaker.SharedBreaker (the store)."""

    @property
    def state(self) -> str: ...
    def allow(self) -> bool: ...
    def record_success(self) -> None: ...
    def record_failure(self) -> None: ...
    def snapshot(self) -> BreakerSnapshot: ...


class Dispatcher:
    def __init__(self, targets: dict[str, Target], reliability: ReliabilityConfig,
                 breaker: Callable[[str], Breaker]) -> None:
        self.targets = targets
        self.reliability = reliability
        self.breakers = {name: breaker(name) for name in targets}

    def _run(self, candidates: tuple[str, ...], call: Callable[[Target], T]) -> tuple[T, Served]:
        attempts: list[str] = []
        last_error: TargetError | None = None
        for name in candidates:
            breaker = self.breakers[name]
            if not breaker.allow():
                last_error = TargetError(f"target '{name}' is unavailable (circuit open)", 503,
                                         code="circuit_open")
                continue
            attempts.append(name)
            retried = False
            while True:
                try:
                    result = call(self.targets[name])
                except TargetError as err:
                    if not err.retryable:
                        breaker.record_success()  # the target answered; the request was at fault
                        raise
                    breaker.record_failure()
                    last_error = err
                    wait = err.retry_after_s
                    if (err.status == 429 and not retried and wait is not None
                            and wait <= self.reliability.max_retry_after_s and breaker.allow()):
                        retried = True
                        time.sleep(wait)
                        continue
                    break
                except BaseException:
                    # An adapter bug or an interrupted call: count it against the target, so that a
                    # half-open breaker's trial is settled (else the target is never tried again).
                    breaker.record_failure()
                    raise
                breaker.record_success()
                return result, Served(name, tuple(attempts))
        assert last_error is not None
        if len(candidates) > 1:
            last_error.message = f"all candidate targets failed ({', '.join(candidates)}); last: {last_error.message}"
        raise last_error

    def complete(self, candidates: tuple[str, ...], request: GenerationRequest) -> tuple[Completion, Served]:
        return self._run(candidates, lambda target: target.complete(request))

    def stream(self, candidates: tuple[str, ...], request: GenerationRequest
               ) -> tuple[Chunk | None, Iterator[Chunk], Served]:
        """Open a stream on the first candidate that yields its first chunk; later failures stay in it."""
        def open_stream(target: Target) -> tuple[Chunk | None, Iterator[Chunk]]:
            chunks = target.stream(request)
            return next(chunks, None), chunks

        (first, rest), served = self._run(candidates, open_stream)
        return first, rest, served
