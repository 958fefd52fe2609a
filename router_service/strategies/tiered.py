"""Several targets ordered by price, each taking a band of scores: the first tier whose
``max_score`` is above the score serves; the last tier takes the rest."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..classifier import Classification
from ..config_base import PolicySettings, StrictModel
from ..generation import RouterOverrides
from ..routing_errors import InvalidOverride
from .base import Pick, RoutingStrategy


class Tier(StrictModel):
    target: str
    # Scores below this go to this tier; the last tier takes the rest and has no bound.
    max_score: float | None = Field(None, ge=0.0, le=1.0)


class TieredSettings(PolicySettings):
    KIND: ClassVar[str] = "tiered"

    kind: Literal["tiered"]
    tiers: list[Tier]

    @model_validator(mode="after")
    def _bands(self) -> "TieredSettings":
        if len(self.tiers) < 2:
            raise ValueError(f"policy {self.name!r}: a tiered policy needs two or more tiers")
        bounds = [t.max_score for t in self.tiers]
        if bounds[-1] is not None or any(b is None for b in bounds[:-1]):
            raise ValueError(f"policy {self.name!r}: every tier but the last needs max_score")
        if any(a >= b for a, b in zip(bounds[:-2], bounds[1:-1])):  # type: ignore[operator]
            raise ValueError(f"policy {self.name!r}: tier max_score values must increase")
        return self

    def target_roles(self) -> list[tuple[str, str]]:
        return [("tier", t.target) for t in self.tiers]

    def check_prices(self, prices: dict[str, float]) -> None:
        ordered = [prices[t] for t in self.targets]
        if ordered != sorted(ordered):
            raise ValueError(f"policy {self.name!r}: tiers must be ordered by price, cheapest first")


class TieredStrategy(RoutingStrategy[TieredSettings]):
    settings_model: ClassVar[type[PolicySettings]] = TieredSettings

    def check(self, overrides: RouterOverrides) -> None:
        # A single cut cannot say which of three or more bands a score falls in.
        if overrides.cut:
            param = "router.threshold" if overrides.threshold is not None else "router.strong_share"
            raise InvalidOverride(f"Policy '{self.settings.name}' is tiered: each tier takes a band of scores, so "
                                  f"'{param}' does not apply; use a threshold policy, or choose a policy with "
                                  "'router.policy'.", param=param, code="unsupported_override")

    def pick(self, classification: Classification, overrides: RouterOverrides) -> Pick:
        for tier in self.settings.tiers:
            if tier.max_score is None or classification.score < tier.max_score:
                return Pick(tier.target)
        raise AssertionError("the last tier has no bound")  # guaranteed by TieredSettings

    def describe(self) -> dict[str, Any]:
        return {"tiers": [t.model_dump() for t in self.settings.tiers]}
