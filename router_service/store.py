"""The shared store: a Redis-protocol server (Valkey, Redis) that every router process of a
deployment talks to, so that keys, limits and budgets hold across workers and replicas."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import redis
from redis.exceptions import RedisError

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error."""


class Store:
    """A connection pool to the store and a key namespace. Every call goes through ``run``, which
    turns the client's errors into StoreUnavailable (and counts them)."""

    def __init__(self, url: str, prefix: str, timeout_s: float,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           health_check_interval=30, decode_responses=True)
        self.prefix = prefix
        self._on_error = on_error or (lambda _operation: None)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def run(self, operation: str, call: Callable[[redis.Redis], T]) -> T:
        try:
            return call(self.client)
        except RedisError as exc:
            self._on_error(operation)
            # The client's message names the host and port, never a password.
            raise StoreUnavailable(f"store {operation} failed: {type(exc).__name__}") from None

    def ping(self) -> bool:
        try:
            return bool(self.run("ping", lambda c: c.ping()))
        except StoreUnavailable:
            return False
