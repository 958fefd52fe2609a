"""One routing strategy per class. A strategy answers one question for a policy: given the
classifier's answer for this prompt (and the request's own operating point, if it sets one),
which of the policy's targets should serve it? Rules, constraints, fallbacks and failing open
are the decision engine's (policy.py), the same for every strategy."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from ..classifier import Classification
from ..config_base import PolicySettings
from ..generation import RouterOverrides

S = TypeVar("S", bound=PolicySettings)


@dataclass(frozen=True)
class Pick:
    target: str
    threshold: float | None = None  # the score cut used, if any
    strong_share: float | None = None  # the share of traffic sent strong, if routed by calibration


class RoutingStrategy(ABC, Generic[S]):
    """Subclasses set ``settings_model`` (its ``KIND`` is the policy's ``kind`` in the config)
    and are registered in strategies/__init__.py."""

    settings_model: ClassVar[type[PolicySettings]]

    def __init__(self, settings: S) -> None:
        self.settings = settings

    @property
    def targets(self) -> list[str]:
        return self.settings.targets

    @property
    def quality_target(self) -> float | None:
        """The quality (a fraction of the strong model's) the policy asks for instead of a cut;
        the decision engine turns it into a strong share from the served version's curve."""
        return None

    @property
    def strongest(self) -> str:
        """The always-strong baseline that savings are measured against."""
        return self.settings.targets[-1]

    def check(self, overrides: RouterOverrides) -> None:
        """Refuse (InvalidOverride) request options this strategy cannot honour, before any work."""

    @abstractmethod
    def pick(self, classification: Classification, overrides: RouterOverrides) -> Pick: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The policy's settings as /v1/models and /v1/router/stats show them."""
