"""Which version of a classifier's model decides, and which one is on trial beside it.

A release record per classifier lives in the shared store, so every worker and replica routes the
same way: the serving version, optionally a candidate on trial, and the versions it replaced (for
rollback). A candidate in ``shadow`` mode scores a ``share`` of the prompts in the background
(trials.py logs both versions' scores; they decide nothing); in ``canary`` mode it decides for a
``share`` of the prompts, picked by a hash of the prompt so a prompt always goes the same way.
``python -m export.promote`` writes the record (with the guard's report before a promotion); the
router reads it at most once per ``REFRESH_S`` per process, and keeps the last one it read when
the store is unreachable.

Without a record the classifier's configured ``model_version`` decides (empty: the newest version
Triton serves), so a new export serves as soon as Triton loads it. A ``guarded`` classifier pins
the version that answers its first classification as the serving one, so a later export serves
only once it is promoted.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import ClassifierConfig
from .store import Store, StoreUnavailable

REFRESH_S = 2.0  # how stale a process's view of a release may be


class Release(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serving: str = Field("", description='The version that decides ("": the newest Triton serves).')
    candidate: str | None = None
    mode: Literal["shadow", "canary"] = "shadow"
    share: float = Field(1.0, ge=0.0, le=1.0, description="shadow: the share of prompts the candidate scores; "
                         "canary: the share it decides")
    trial_started: float = Field(0.0, description="when the candidate's trial (shadow, then canary) began")
    previous: list[str] = Field(default_factory=list, description="serving versions it replaced, oldest first")
    changed_at: float = 0.0
    note: str = ""

    def deciding(self, fraction: float) -> str:
        """The version that decides for a prompt whose stable hash fraction is ``fraction``."""
        if self.candidate is not None and self.mode == "canary" and fraction < self.share:
            return self.candidate
        return self.serving

    def trial(self, fraction: float) -> str | None:
        """The candidate that also scores this prompt in the background (shadow mode), if any."""
        if self.candidate is not None and self.mode == "shadow" and fraction < self.share:
            return self.candidate
        return None


class ReleaseBook:
    """The release records of a router's classifiers, read through a short per-process cache."""

    def __init__(self, store: Store | None, classifiers: Sequence[ClassifierConfig],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._defaults = {c.name: Release(serving=c.model_version) for c in classifiers}
        self._guarded = {c.name for c in classifiers if c.guarded and store is not None}
        self._clock = clock
        self._cache: dict[str, tuple[float, Release | None]] = {}  # name -> (read at, record or None)
        self._pin_tried: dict[str, float] = {}

    def _key(self, name: str) -> str:
        assert self._store is not None
        return self._store.key("release", name)

    # -- what the CLI uses: the record itself ---------------------------------------------------
    def read(self, name: str) -> Release | None:
        """The stored record, or None; raises StoreUnavailable (or ValidationError for a bad one)."""
        if self._store is None:
            return None
        raw = self._store.run("release_get", lambda c: c.get(self._key(name)))
        return None if raw is None else Release.model_validate_json(raw)

    def write(self, name: str, release: Release, only_if_absent: bool = False) -> None:
        """Store ``release`` (stamped now); ``only_if_absent``: only where there is no record yet
        (SET NX: the first replica to pin wins)."""
        if self._store is None:
            raise StoreUnavailable("releases need the store (store.url)")
        record = release.model_copy(update={"changed_at": time.time()})
        self._store.run("release_set", lambda c: c.set(self._key(name), record.model_dump_json(), nx=only_if_absent))
        self._cache.pop(name, None)

    # -- what the router uses: the current release ----------------------------------------------
    def current(self, name: str) -> Release:
        """The release that routes now: the record (at most REFRESH_S old), else the configured version."""
        now = self._clock()
        cached = self._cache.get(name)
        if cached is None or now - cached[0] >= REFRESH_S:
            try:
                record = self.read(name)
            except (StoreUnavailable, ValidationError):
                record = cached[1] if cached is not None else None  # keep routing as before
            self._cache[name] = cached = (now, record)  # one assignment: no lock needed
        return cached[1] or self._defaults[name]

    def observe(self, name: str, version: str | None) -> None:
        """A guarded classifier without a record: pin ``version`` (the one that just answered) as
        serving. SET NX: the first replica to do so wins, the others read its record."""
        if name not in self._guarded or not version:
            return
        cached = self._cache.get(name)
        if cached is None or cached[1] is not None or self._pin_tried.get(name) == cached[0]:
            return
        self._pin_tried[name] = cached[0]  # once per read of the store, not once per request
        try:
            self.write(name, Release(serving=version, note=f"pinned {version}, the version serving when the "
                                     "guarded router started"), only_if_absent=True)
        except StoreUnavailable:
            pass  # the next read of the store tries again

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every classifier's current release, as /v1/router/stats shows it."""
        return {name: {**self.current(name).model_dump(), "guarded": name in self._guarded} for name in self._defaults}
