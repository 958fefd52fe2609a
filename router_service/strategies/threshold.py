"""Two targets: strong iff the score reaches a threshold, or iff the prompt is in the top
``strong_share`` of the served model's calibration traffic (a share stays right when a new
model version shifts its scores; a raw threshold does not)."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..classifier import Classification
from ..config_base import PolicySettings
from ..generation import RouterOverrides
from ..routing_errors import InvalidOverride, PolicyUnavailable
from .base import Pick, RoutingStrategy

DEFAULT_THRESHOLD = 0.5


class ThresholdSettings(PolicySettings):
    KIND: ClassVar[str] = "threshold"

    kind: Literal["threshold"] = "threshold"
    weak: str
    strong: str
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    strong_share: float | None = Field(None, ge=0.0, le=1.0)
    # The quality to keep, as a fraction of the strong model's (the served version's quality/cost
    # curve says which strong share reaches it).
    quality: float | None = Field(None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_cut(self) -> "ThresholdSettings":
        if sum(v is not None for v in (self.threshold, self.strong_share, self.quality)) > 1:
            raise ValueError(f"policy {self.name!r}: give one of threshold, strong_share and quality")
        return self

    def target_roles(self) -> list[tuple[str, str]]:
        return [("weak", self.weak), ("strong", self.strong)]

    @property
    def strong_share_setting(self) -> float | None:
        return self.strong_share


class ThresholdStrategy(RoutingStrategy[ThresholdSettings]):
    settings_model: ClassVar[type[PolicySettings]] = ThresholdSettings

    def pick(self, classification: Classification, overrides: RouterOverrides) -> Pick:
        s = self.settings
        share = overrides.strong_share
        if share is None and overrides.threshold is None:
            share = s.strong_share
        if share is not None:
            if classification.strong_share is None:
                if overrides.strong_share is not None:
                    raise InvalidOverride("The served router model has no calibration, so 'strong_share' cannot be "
                                          "used; give a threshold instead.", param="router.strong_share",
                                          code="calibration_unavailable")
                raise PolicyUnavailable(f"Policy '{s.name}' routes by strong_share, but the served router model "
                                        "has no calibration (export a new version).", code="calibration_unavailable")
            strong = share > 0 and classification.strong_share <= share
            return Pick(s.strong if strong else s.weak, strong_share=share)
        threshold = overrides.threshold if overrides.threshold is not None else \
            (DEFAULT_THRESHOLD if s.threshold is None else s.threshold)
        return Pick(s.strong if classification.score >= threshold else s.weak, threshold=threshold)

    @property
    def quality_target(self) -> float | None:
        return self.settings.quality

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"weak": s.weak, "strong": s.strong, "threshold": s.threshold, "strong_share": s.strong_share,
                "quality": s.quality}
