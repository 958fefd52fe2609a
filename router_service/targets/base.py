"""What every target adapter takes and returns (the types themselves live in generation.py)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ..generation import Chunk, Completion, GenerationRequest, Usage


class TargetError(Exception):
    """The upstream failed. ``status`` is what the router answers; ``retryable`` drives fallbacks
    and the circuit breaker (a non-retryable error is the request's fault, not the target's)."""

    def __init__(self, message: str, status: int = 502, *, code: str = "upstream_error", retryable: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Target(Protocol):
    name: str
    kind: str

    def complete(self, request: GenerationRequest) -> Completion: ...

    def stream(self, request: GenerationRequest) -> Iterator[Chunk]: ...


__all__ = ["Chunk", "Completion", "GenerationRequest", "Target", "TargetError", "Usage"]
