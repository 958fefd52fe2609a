"""Routing strategies, one class each. Adding one: a module with its settings (a
``PolicySettings`` subclass with a ``kind`` literal) and its ``RoutingStrategy`` subclass, and
one line in ``STRATEGIES`` below; the config schema and the decision engine pick it up."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag

from ..config_base import PolicySettings
from .base import Pick, RoutingStrategy
from .threshold import ThresholdSettings, ThresholdStrategy
from .tiered import Tier, TieredSettings, TieredStrategy

STRATEGIES: dict[str, type[RoutingStrategy[Any]]] = {
    cls.settings_model.KIND: cls for cls in (ThresholdStrategy, TieredStrategy)
}
DEFAULT_KIND = "threshold"


def _kind(value: Any) -> str | None:
    kind = value.get("kind", DEFAULT_KIND) if isinstance(value, dict) else getattr(value, "kind", DEFAULT_KIND)
    return kind if kind in STRATEGIES else None  # None: pydantic reports the custom error below


# The config's `policies` entries: validated by the settings model of their `kind` (for type
# checkers: any PolicySettings, the union being built from the registry at run time).
if TYPE_CHECKING:
    PolicyConfig = PolicySettings
else:
    PolicyConfig = Annotated[
        Union[tuple(Annotated[cls.settings_model, Tag(kind)] for kind, cls in STRATEGIES.items())],
        Discriminator(_kind, custom_error_type="policy_kind",
                      custom_error_message=f"policy kind must be one of {sorted(STRATEGIES)}"),
    ]


def build_strategy(settings: PolicySettings) -> RoutingStrategy[Any]:
    return STRATEGIES[settings.KIND](settings)


__all__ = ["STRATEGIES", "Pick", "PolicyConfig", "RoutingStrategy", "ThresholdSettings", "Tier", "TieredSettings",
           "build_strategy"]
