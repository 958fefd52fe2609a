"""Shadow trials of a candidate model version: after a request ended, the candidate that its
classifier's release has in ``shadow`` mode (release.py) scores the same classifier input, and
the decision log keeps both versions' scores side by side (table ``trials``). The candidate
decides nothing; ``python -m export.promote report`` reads the pairs as the live score drift.

Off the hot path: one background thread per router process and a bounded backlog; a full
backlog skips the trial (counted), the user's request never waits."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .classifier import Classifier, ClassifierUnavailable
from .config_base import PolicySettings
from .decision_log import DecisionLog, TrialRow
from .generation import GenerationRequest
from .metrics import RouterMetrics
from .policy import Decision, window_text

MAX_PENDING = 256


class Trials:
    def __init__(self, classifiers: dict[str, Classifier], decision_log: DecisionLog | None,
                 metrics: RouterMetrics) -> None:
        self._classifiers, self._log, self._metrics = classifiers, decision_log, metrics
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial")  # threads start on first use

    def consider(self, request: GenerationRequest, decision: Decision, policy: PolicySettings) -> None:
        """After a request: score it with the candidate its decision names, if there is one."""
        version = decision.trial_version
        if version is None or self._log is None:
            return
        if not self._pending.acquire(blocking=False):
            self._metrics.trials.labels(policy.classifier, "busy").inc()
            return
        self._pool.submit(self._score, window_text(request.messages, policy.window), request.request_id or "",
                          decision, policy.classifier, version)

    def _score(self, text: str, request_id: str, decision: Decision, classifier: str, version: str) -> None:
        try:
            found = self._classifiers[classifier].classify([text], f"{request_id}-trial", version)[0]
            assert self._log is not None
            self._log.add(TrialRow(request_id, time.time(), classifier, decision.model_version, decision.score,
                                   decision.score_share, version, found.score, found.strong_share))
            self._metrics.trials.labels(classifier, "scored").inc()
        except ClassifierUnavailable:
            self._metrics.trials.labels(classifier, "failed").inc()
        finally:
            self._pending.release()
