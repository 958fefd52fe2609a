"""Config building blocks shared by the config file's schema (config.py) and the routing
strategies that declare their own policy settings (strategies/): kept apart so that neither
imports the other's module."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .classifier import UNFAMILIAR_BELOW


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowConfig(StrictModel):
    """Which part of the conversation the classifier reads."""

    # The last N user turns, with the assistant turns between them.
    last_turns: int = Field(1, ge=1)
    include_system: bool = False
    # The classifier truncates to its own token limit; this bounds the text sent (most recent kept).
    max_chars: int = Field(4000, gt=0)


class LowConfidence(StrictModel):
    """What a policy does with a prompt unlike the classifier's training data (its confidence
    below ``below``): ``score`` routes it by its score like any other, ``strong`` / ``weak`` send
    it to the policy's strongest / cheapest target,
    ``prior`` sends ``prior_share`` of such prompts to the strongest (picked by a hash of the
    text: the same prompt always goes the same way)."""

    below: float = Field(UNFAMILIAR_BELOW, ge=0.0, le=1.0)
    action: Literal["score", "strong", "weak", "prior"] = "strong"
    prior_share: float = Field(0.5, ge=0.0, le=1.0)


class ShadowConfig(StrictModel):
    """Shadow comparisons (shadow.py): for ``share`` of the policy's answered requests, the other
    end of the policy (its strongest target, or its cheapest when the strongest answered) answers
    the same request in the background, and ``judge`` (a target) grades the two answers."""

    share: float = Field(0.0, ge=0.0, le=1.0)
    judge: str | None = None
    max_per_minute: int = Field(60, ge=0)  # per router process
    budget_usd_per_day: float | None = Field(None, ge=0.0)  # shadow and judge calls, per router process


class PolicySettings(StrictModel):
    """What every policy has; each strategy subclasses it with its own fields and ``kind``."""

    KIND: ClassVar[str]

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    classifier: str
    window: WindowConfig = WindowConfig()
    # Served when the classifier is unavailable (fail open); default: the strongest target.
    fail_open_target: str | None = None
    # Unset: low-confidence prompts are routed by their score like any other.
    low_confidence: LowConfidence | None = None
    # Unset (or share 0): no shadow comparisons.
    shadow: ShadowConfig | None = None

    @property
    def targets(self) -> list[str]:
        """Every target the policy can pick, cheapest first."""
        return [name for _, name in self.target_roles()]

    def target_roles(self) -> list[tuple[str, str]]:
        """(role, target name) for each target the policy names, cheapest first."""
        raise NotImplementedError

    @property
    def strong_share_setting(self) -> float | None:
        """The share of traffic the policy is set to send to its strongest target, when it says."""
        return None

    def check_prices(self, prices: dict[str, float]) -> None:
        """Raise ValueError when the policy's targets are priced against its own logic."""
