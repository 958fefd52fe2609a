"""The routing decision, in one place: which target serves this request, and why.

``model`` names either a policy (``router`` = the default policy, ``router:<policy>``) or a
target (manual routing: no classification). A threshold policy asks its classifier for
P(strong needed) and picks the strong target iff score >= threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

from .chat_request import Message, RouterOverrides
from .classifier_client import ClassifierClient, ClassifierUnavailable
from .config import PolicyConfig, RouterConfig
from .errors import APIError

POLICY_MODEL = "router"


@dataclass(frozen=True)
class Decision:
    target: str
    policy: str | None  # None: manual routing
    score: float | None = None
    threshold: float | None = None
    degraded: bool = False  # the classifier was unavailable; the policy failed open


def classifier_text(messages: tuple[Message, ...]) -> str:
    """The text the classifier sees: the last user turn (falling back to the last message)."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return messages[-1].content


class Router:
    def __init__(self, config: RouterConfig, classifiers: dict[str, ClassifierClient]) -> None:
        self.config = config
        self.classifiers = classifiers
        self._targets = {t.name for t in config.targets}

    def policy_for_model(self, model: str, overrides: RouterOverrides) -> PolicyConfig | None:
        """The policy a request's ``model`` selects, or None for a target name (manual routing)."""
        if model in self._targets and overrides.policy is None:
            return None
        if overrides.policy is not None:
            name = overrides.policy
        elif model == POLICY_MODEL:
            name = self.config.default_policy
        elif model.startswith(POLICY_MODEL + ":"):
            name = model.split(":", 1)[1]
        else:
            raise APIError(404, f"The model '{model}' does not exist; GET /v1/models lists the policies and "
                                "targets.", param="model", code="model_not_found")
        try:
            return self.config.policy(name)
        except StopIteration:
            param = "router.policy" if overrides.policy is not None else "model"
            raise APIError(404, f"Unknown routing policy '{name}'.", param=param, code="policy_not_found") from None

    def decide(self, model: str, messages: tuple[Message, ...], overrides: RouterOverrides) -> Decision:
        policy = self.policy_for_model(model, overrides)
        if policy is None:
            return Decision(target=model, policy=None)
        threshold = policy.threshold if overrides.threshold is None else overrides.threshold
        try:
            score = self.classifiers[policy.classifier].score([classifier_text(messages)])[0]
        except ClassifierUnavailable:
            raise APIError(503, "The router classifier is unavailable.", type="api_error",
                           code="classifier_unavailable") from None
        target = policy.strong if score >= threshold else policy.weak
        return Decision(target=target, policy=policy.name, score=score, threshold=threshold)
