"""What the decision engine needs from a classifier, whatever serves it: a score per prompt in
[0, 1] (higher: more need for the strong model) and, when the served model version carries a
calibration, the share of calibration traffic that scores at or above the prompt."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


# Below this confidence a prompt counts as unfamiliar in the stats and metrics: the confidence is a
# percentile among unseen in-domain prompts, so in-domain traffic puts a few percent there.
UNFAMILIAR_BELOW = 0.05


class ClassifierUnavailable(RuntimeError):
    """The classifier could not answer (server down, model not loaded, timeout)."""


@dataclass(frozen=True)
class Classification:
    score: float  # need for the strong model, in [0, 1]
    strong_share: float | None  # None when the model carries no calibration
    # How familiar the prompt is, in [0, 1]: the share of the model's unseen in-domain reference
    # prompts that are no more similar to its training data. None when the model does not say.
    confidence: float | None = None
    model_version: str | None = None  # the served model version that answered, when the server says


class Classifier(Protocol):
    def classify(self, texts: Sequence[str], request_id: str = "", version: str | None = None
                 ) -> list[Classification]:
        """One classification per text, in order; raises ClassifierUnavailable. The request id
        travels with the call (Triton's logs and traces name it). ``version``: the model version
        to ask (release.py); None: the configured one."""
        ...

    def calibration(self, version: str | None = None) -> dict[str, float] | None:
        """Score thresholds by strong share ("0.1" -> score), or None without a calibration."""
        ...

    def quality(self, version: str | None = None) -> dict[str, float] | None:
        """A version's quality/cost curve: quality (a fraction of the strong model's) by strong
        share ("0.1" -> 0.93), or None when the version does not carry one."""
        ...

    def is_ready(self) -> bool: ...
