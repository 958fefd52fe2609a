"""A classifier with a memory: the same classifier input (the conversation window the policy
reads) within a TTL reuses the classification instead of calling Triton again. Agents, retries
and repeated prompts send the same text; the model is deterministic, so a hit changes nothing
but the time. Bounded (least recently used entries go first); hits and misses are counted."""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from .classifier import Classification, Classifier


class CachedClassifier:
    def __init__(self, inner: Classifier, size: int, ttl_s: float,
                 on_lookup: Callable[[bool], None] = lambda hit: None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.inner = inner
        self._size = size
        self._ttl_s = ttl_s
        self._on_lookup = on_lookup
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, Classification]] = OrderedDict()

    @staticmethod
    def _key(text: str, version: str | None) -> bytes:
        # A digest, not the text: the cache holds no prompt. Each model version scores apart.
        return hashlib.blake2b(f"{version or ''}\0{text}".encode("utf-8"), digest_size=16).digest()

    def _get(self, key: bytes, now: float) -> Classification | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or now - found[0] > self._ttl_s:
                return None
            self._entries.move_to_end(key)
            return found[1]

    def _put(self, key: bytes, now: float, value: Classification) -> None:
        with self._lock:
            self._entries[key] = (now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def classify(self, texts: Sequence[str], request_id: str = "", version: str | None = None
                 ) -> list[Classification]:
        now = self._clock()
        keys = [self._key(t, version) for t in texts]
        found = [self._get(k, now) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        for f in found:
            self._on_lookup(f is not None)
        if missing:
            fresh = self.inner.classify([texts[i] for i in missing], request_id, version)
            for i, value in zip(missing, fresh):
                found[i] = value
                self._put(keys[i], now, value)
        return [f for f in found if f is not None]

    def calibration(self, version: str | None = None) -> dict[str, float] | None:
        return self.inner.calibration(version)

    def quality(self, version: str | None = None) -> dict[str, float] | None:
        return self.inner.quality(version)

    def is_ready(self) -> bool:
        return self.inner.is_ready()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
