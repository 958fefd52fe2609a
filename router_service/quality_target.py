"""A policy's quality target (``quality: 0.95``: keep 95% of the strong model's quality) as a
strong share, read off the served classifier version's quality/cost curve
(``calibration_quality``), and refreshed when another version answers."""
from __future__ import annotations

import threading
from collections.abc import Mapping

from .classifier import Classifier
from .routing_errors import PolicyUnavailable


def share_for(curve: Mapping[str, float], quality: float) -> float:
    """The smallest strong share whose quality reaches ``quality`` (linear between the curve's
    points; everything strong reaches the strong model's own quality, 1.0)."""
    points = sorted((float(share), q) for share, q in curve.items()) + [(1.0, 1.0)]
    if points[0][1] >= quality:
        return points[0][0]
    for (s0, q0), (s1, q1) in zip(points, points[1:]):
        if q1 >= quality:
            return s0 + (s1 - s0) * (quality - q0) / (q1 - q0)
    return 1.0


class QualityShares:
    def __init__(self, classifiers: Mapping[str, Classifier]) -> None:
        self._classifiers = classifiers
        self._curves: dict[str, tuple[str | None, dict[str, float]]] = {}  # classifier -> (version, curve)
        self._lock = threading.Lock()

    def share(self, classifier: str, quality: float, version: str | None) -> float:
        """The share for ``quality`` on the curve of ``version`` (the one that just classified)."""
        cached = self._curves.get(classifier)
        if cached is None or cached[0] != version:
            curve = self._classifiers[classifier].quality(version)
            if curve is None:
                raise PolicyUnavailable("This policy keeps a quality target, but the served router model has no "
                                        "quality/cost curve (export a new version).", code="calibration_unavailable")
            with self._lock:
                self._curves[classifier] = cached = (version, curve)
        return share_for(cached[1], quality)

    def implied(self, classifier: str, quality: float, version: str | None = None) -> float | None:
        """The share the last seen curve implies (for the stats); before any, the curve of
        ``version`` (the serving one); None when it has none."""
        cached = self._curves.get(classifier)
        curve = cached[1] if cached is not None else self._classifiers[classifier].quality(version or None)
        return None if curve is None else share_for(curve, quality)
