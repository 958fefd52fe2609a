"""The routing decision, in one place: which targets may serve this request, in which order, and why.

``model`` names a policy (``router`` = the default policy, ``router:<policy>``) or a target
(manual routing: no classification). For a policy, in order:
  1. rules pin a target when their pattern or keywords match the classified text;
  2. otherwise the classifier's score picks a target: strong iff score >= threshold (or iff the
     prompt is in the top ``strong_share`` of the calibration traffic), or the tier whose score
     band holds the score; if the classifier is unavailable the policy fails open to its
     ``fail_open_target`` and the decision is marked degraded.
Then constraints that no choice or fallback may break: prompts with private data stay on
self-hosted targets; a target must hold prompt + max_tokens in its context window (else the
request escalates to a bigger target, or is refused with context_length_exceeded); requests with
tools or response_format go only to targets that support them. The chosen target's configured
fallbacks follow it in the candidate list, filtered by the same constraints.
"""
from __future__ import annotations

from dataclasses import dataclass

from .chat_request import Message, RouterOverrides
from .classifier_client import Classification, ClassifierClient, ClassifierUnavailable
from .config import PolicyConfig, RouterConfig, TargetConfig, WindowConfig
from .errors import APIError, bad_request
from .targets import Usage
from .prompt_rules import PrivacyDetector, compile_rules
from .token_count import TokenCounter

POLICY_MODEL = "router"


@dataclass(frozen=True)
class RoutingRequest:
    model: str
    messages: tuple[Message, ...]
    overrides: RouterOverrides = RouterOverrides()
    max_tokens: int | None = None
    needs_tools: bool = False
    is_chat: bool = True


@dataclass(frozen=True)
class Decision:
    candidates: tuple[str, ...]  # the chosen target first, then its allowed fallbacks
    policy: str | None  # None: manual routing
    reason: str  # manual | classifier | rule:<name> | fail_open | with ":escalated" when the window forced it
    score: float | None = None
    threshold: float | None = None
    strong_share: float | None = None
    degraded: bool = False  # the classifier was unavailable; the policy failed open
    private: str | None = None  # the privacy detector that matched
    prompt_tokens: int = 0  # the estimate used for the context-window check

    @property
    def target(self) -> str:
        return self.candidates[0]


def window_text(messages: tuple[Message, ...], window: WindowConfig) -> str:
    """The conversation text the classifier reads: the last N user turns (and the turns between
    them), optionally the system prompt, cut to max_chars keeping the most recent text."""
    user_seen, start = 0, 0
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            user_seen += 1
            start = i
            if user_seen == window.last_turns:
                break
    turns = [m.content for m in messages[start:] if m.role not in ("system", "developer")] if user_seen else \
        [messages[-1].content]
    if window.include_system:
        turns = [m.content for m in messages if m.role in ("system", "developer")] + turns
    text = "\n".join(t for t in turns if t)
    return text[-window.max_chars:]


class Router:
    def __init__(self, config: RouterConfig, classifiers: dict[str, ClassifierClient]) -> None:
        self.config = config
        self.classifiers = classifiers
        self._targets = {t.name: t for t in config.targets}
        self._rules = compile_rules(config.rules)
        self._privacy = PrivacyDetector(config.privacy)
        # Targets with the same tokenizer (most: none, i.e. the estimate) share one counter, so a
        # decision counts the prompt once per tokenizer, not once per candidate target.
        shared: dict[str | None, TokenCounter] = {}
        self._counters = {t.name: shared.setdefault(t.tokenizer, TokenCounter(t.tokenizer)) for t in config.targets}

    # -- which policy ------------------------------------------------------------------------
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

    # -- the decision ------------------------------------------------------------------------
    def decide(self, request: RoutingRequest) -> Decision:
        policy = self.policy_for_model(request.model, request.overrides)
        private = self._privacy.find("\n".join(m.content for m in request.messages))
        if policy is None:
            choice = Decision((request.model,), None, "manual", private=private)
        else:
            choice = self._policy_choice(policy, request, private)
        return self._constrain(choice, policy, request)

    def _policy_choice(self, policy: PolicyConfig, request: RoutingRequest, private: str | None) -> Decision:
        text = window_text(request.messages, policy.window)
        for rule in self._rules:
            if rule.matches(text):
                return Decision((rule.target,), policy.name, f"rule:{rule.name}", private=private)
        try:
            classification = self.classifiers[policy.classifier].classify([text])[0]
        except ClassifierUnavailable:
            fail_open = policy.fail_open_target or policy.targets[-1]
            return Decision((fail_open,), policy.name, "fail_open", degraded=True, private=private)
        target, threshold, share = self._pick(policy, classification, request.overrides)
        return Decision((target,), policy.name, "classifier", score=classification.score, threshold=threshold,
                        strong_share=share, private=private)

    @staticmethod
    def _pick(policy: PolicyConfig, c: Classification, overrides: RouterOverrides
              ) -> tuple[str, float | None, float | None]:
        """(target, threshold used, strong share used) for a classifier score."""
        if policy.kind == "tiered":
            for tier in policy.tiers:
                if tier.max_score is None or c.score < tier.max_score:
                    return tier.target, None, None
        share = overrides.strong_share
        if share is None and overrides.threshold is None:
            share = policy.strong_share
        if share is not None:
            if c.strong_share is None:
                if overrides.strong_share is not None:
                    raise APIError(400, "The served router model has no calibration, so 'strong_share' cannot be "
                                        "used; give a threshold instead.", param="router.strong_share",
                                   code="calibration_unavailable")
                raise APIError(503, f"Policy '{policy.name}' routes by strong_share, but the served router model "
                                    "has no calibration (export a new version).", type="api_error",
                               code="calibration_unavailable")
            strong = share > 0 and c.strong_share <= share
            return (policy.strong if strong else policy.weak), None, share  # type: ignore[return-value]
        threshold = overrides.threshold if overrides.threshold is not None else policy.effective_threshold
        return (policy.strong if c.score >= threshold else policy.weak), threshold, None  # type: ignore[return-value]

    def fill_usage(self, decision: Decision, target: str, usage: Usage, text: str) -> Usage:
        """Usage as reported, or counted here when an upstream reports none (some streams)."""
        if usage.prompt_tokens or usage.completion_tokens or not text:
            return usage
        return Usage(decision.prompt_tokens, self._counters[target].count_text(text))

    # -- constraints -------------------------------------------------------------------------
    def _fits(self, target: TargetConfig, request: RoutingRequest, counted: dict[int, int]) -> tuple[bool, int]:
        """Does prompt + max_tokens fit the target's window? ``counted`` caches counts per counter."""
        counter = self._counters[target.name]
        tokens = counted.get(id(counter))
        if tokens is None:
            contents = [m.content for m in request.messages]
            tokens = counter.count_chat(contents) if request.is_chat else counter.count_text(contents[0])
            counted[id(counter)] = tokens
        budget = request.max_tokens or target.default_max_tokens
        return tokens + budget <= target.context_window, tokens

    def _allowed(self, target: TargetConfig, request: RoutingRequest, private: str | None,
                 counted: dict[int, int]) -> bool:
        if private is not None and not target.is_self_hosted:
            return False
        if request.needs_tools and not target.can_use_tools:
            return False
        return self._fits(target, request, counted)[0]

    def _constrain(self, choice: Decision, policy: PolicyConfig | None, request: RoutingRequest) -> Decision:
        ordered = [choice.target]
        reason = choice.reason
        for name in list(ordered):
            ordered += [f for f in self._targets[name].fallbacks if f not in ordered]
        if policy is not None and choice.target in policy.targets:
            # When a constraint rules the choice out: the policy's pricier targets first (bigger
            # windows, tools), then its cheaper ones (e.g. the self-hosted one for private data).
            ranked = policy.targets
            at = ranked.index(choice.target)
            ordered += [t for t in ranked[at + 1:] + ranked[:at][::-1] if t not in ordered]
        counted: dict[int, int] = {}
        allowed = [n for n in ordered if self._allowed(self._targets[n], request, choice.private, counted)]
        if not allowed:
            self._refuse(ordered, request, choice.private, counted)
        if allowed[0] != choice.target:
            reason += ":escalated"
        # Fallbacks come from the chosen (or escalated-to) target's own list, not the escalation chain.
        head = allowed[0]
        fallbacks = [f for f in self._targets[head].fallbacks if f in allowed and f != head]
        return Decision(candidates=(head, *fallbacks), policy=choice.policy, reason=reason, score=choice.score,
                        threshold=choice.threshold, strong_share=choice.strong_share, degraded=choice.degraded,
                        private=choice.private, prompt_tokens=self._fits(self._targets[head], request, counted)[1])

    def _refuse(self, ordered: list[str], request: RoutingRequest, private: str | None,
                counted: dict[int, int]) -> None:
        """No candidate is allowed: say which constraint ruled them all out."""
        targets = [self._targets[n] for n in ordered]
        if private is not None:
            targets = [t for t in targets if t.is_self_hosted]
            if not targets:
                raise bad_request(f"The prompt contains private data ({private}) and the privacy rule keeps it on "
                                  "self-hosted targets, none of which can serve this request.",
                                  param="messages", code="privacy_violation")
        if request.needs_tools:
            targets = [t for t in targets if t.can_use_tools]
            if not targets:
                raise bad_request("No target this request may use supports 'tools' or 'response_format'.",
                                  param="tools", code="unsupported_parameter")
        tokens = self._fits(targets[0], request, counted)[1]
        budget = request.max_tokens or targets[0].default_max_tokens
        raise bad_request(f"The prompt (~{tokens} tokens) plus max_tokens ({budget}) exceeds the context window of "
                          "every target this request may use.", param="messages", code="context_length_exceeded")
