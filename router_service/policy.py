"""The routing decision, in one place: which targets may serve this request, in which order, and why.

``model`` names a policy (``router`` = the default policy, ``router:<policy>``) or a target
(manual routing: no classification). For a policy, in order:
  1. rules pin a target when their pattern or keywords match the classified text;
  2. otherwise the classifier scores the text (with the model version its release names:
     release.py; a canary version for its share of prompts) and the policy's strategy
     (strategies/: threshold, tiered, ...) picks a target; a prompt the classifier is not confident about (unlike its
     training data) follows the policy's ``low_confidence`` action when it has one; if the
     classifier is unavailable the policy fails open to its ``fail_open_target`` and the decision
     is marked degraded.
Then constraints that no choice or fallback may break: prompts with private data stay on
self-hosted targets; a target must hold prompt + max_tokens in its context window (else the
request escalates to a bigger target, or is refused with context_length_exceeded); fields that
change the answer (tools, response_format, logprobs, ...) go only to targets that accept them.
The chosen target's configured fallbacks follow it in the candidate list, filtered by the same
constraints.

This module decides; it knows neither HTTP (it raises routing_errors) nor prices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .classifier import Classification, Classifier, ClassifierUnavailable
from .config import RouterConfig, TargetConfig
from .config_base import PolicySettings, WindowConfig
from .generation import GenerationRequest, Message
from .prompt_rules import PrivacyDetector, compile_rules
from .quality_target import QualityShares
from .release import ReleaseBook
from .routing_errors import CannotServe, ModelNotFound
from .strategies import RoutingStrategy, build_strategy
from .token_count import TokenCounters

POLICY_MODEL = "router"


@dataclass(frozen=True)
class Decision:
    candidates: tuple[str, ...]  # the chosen target first, then its allowed fallbacks
    policy: str | None  # None: manual routing
    # manual | classifier | low_confidence | rule:<name> | fail_open | budget_downgrade; ":escalated" when a
    # constraint forced it
    reason: str
    score: float | None = None
    confidence: float | None = None  # how familiar the prompt is to the classifier, when it says
    score_share: float | None = None  # the share of calibration traffic scoring at or above this prompt
    model_version: str | None = None  # the classifier model version that scored it
    classifier_ms: float | None = None  # the classification call's duration
    threshold: float | None = None
    strong_share: float | None = None
    degraded: bool = False  # the classifier was unavailable; the policy failed open
    private: str | None = None  # the privacy detector that matched
    prompt_tokens: int = 0  # the estimate used for the context-window check
    baseline_target: str | None = None  # the policy's always-strong alternative (savings are measured against it)
    trial_version: str | None = None  # a candidate version to score this prompt in the background (trials.py)

    @property
    def target(self) -> str:
        return self.candidates[0]

    @property
    def policy_label(self) -> str:
        """The policy as headers, logs and metrics name it: ``manual`` for a target name."""
        return self.policy or "manual"

    @property
    def low_confidence(self) -> bool:
        """A policy's low_confidence action made this decision (escalated or not)."""
        return self.reason.startswith("low_confidence")


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: a sampling decision that repeats for the same key."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") / 2 ** 64


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
    def __init__(self, config: RouterConfig, classifiers: Mapping[str, Classifier], counters: TokenCounters,
                 releases: ReleaseBook | None = None) -> None:
        self.config = config
        self.classifiers = classifiers
        self.releases = releases or ReleaseBook(None, config.classifiers)
        self.strategies: dict[str, RoutingStrategy[Any]] = {p.name: build_strategy(p) for p in config.policies}
        self._targets = {t.name: t for t in config.targets}
        self._rules = compile_rules(config.rules)
        self._privacy = PrivacyDetector(config.privacy)
        self._counters = counters
        self.quality_shares = QualityShares(classifiers)

    # -- which policy ------------------------------------------------------------------------
    def policy_for(self, request: GenerationRequest) -> PolicySettings | None:
        """The policy a request's ``model`` selects, or None for a target name (manual routing)."""
        model, overrides = request.model, request.router
        if model in self._targets and overrides.policy is None:
            return None
        if overrides.policy is not None:
            name = overrides.policy
        elif model == POLICY_MODEL:
            name = self.config.default_policy
        elif model.startswith(POLICY_MODEL + ":"):
            name = model.split(":", 1)[1]
        else:
            raise ModelNotFound(f"The model '{model}' does not exist; GET /v1/models lists the policies and targets.",
                                param="model", code="model_not_found")
        if name not in self.strategies:
            param = "router.policy" if overrides.policy is not None else "model"
            raise ModelNotFound(f"Unknown routing policy '{name}'.", param=param, code="policy_not_found")
        return self.strategies[name].settings

    # -- the decision ------------------------------------------------------------------------
    def decide(self, request: GenerationRequest, downgrade: bool = False) -> Decision:
        """``downgrade``: the client's key is near its budget; a policy then picks its cheapest
        target without asking the classifier (manual routing is unaffected)."""
        policy = self.policy_for(request)
        private = self._privacy.find("\n".join(m.content for m in request.messages))
        if policy is None:
            choice = Decision((request.model,), None, "manual", private=private)
        elif downgrade:
            strategy = self.strategies[policy.name]
            strategy.check(request.router)
            choice = Decision((strategy.targets[0],), policy.name, "budget_downgrade", private=private,
                              baseline_target=strategy.strongest)
        else:
            choice = self._policy_choice(self.strategies[policy.name], request, private)
        return self._constrain(choice, policy, request)

    def _policy_choice(self, strategy: RoutingStrategy[Any], request: GenerationRequest,
                       private: str | None) -> Decision:
        policy = strategy.settings
        strategy.check(request.router)
        text = window_text(request.messages, policy.window)
        for rule in self._rules:
            if rule.matches(text):
                return Decision((rule.target,), policy.name, f"rule:{rule.name}", private=private,
                                baseline_target=strategy.strongest)
        started = time.perf_counter()
        try:
            classification, trial = self._classify(policy.classifier, text, request.request_id or "")
        except ClassifierUnavailable:
            fail_open = policy.fail_open_target or strategy.strongest
            return Decision((fail_open,), policy.name, "fail_open", degraded=True, private=private,
                            baseline_target=strategy.strongest)
        overrides = request.router
        if strategy.quality_target is not None and overrides.threshold is None and overrides.strong_share is None:
            share = self.quality_shares.share(policy.classifier, strategy.quality_target, classification.model_version)
            overrides = dataclasses.replace(overrides, strong_share=share)
        pick = strategy.pick(classification, overrides)
        target, reason = pick.target, "classifier"
        low = policy.low_confidence
        if (low is not None and low.action != "score" and classification.confidence is not None
                and classification.confidence < low.below):
            target, reason = self._low_confidence_target(strategy, low.action, low.prior_share, text), "low_confidence"
        return Decision((target,), policy.name, reason, score=classification.score,
                        confidence=classification.confidence, score_share=classification.strong_share,
                        model_version=classification.model_version,
                        classifier_ms=(time.perf_counter() - started) * 1000, threshold=pick.threshold,
                        strong_share=pick.strong_share, private=private, baseline_target=strategy.strongest,
                        trial_version=trial)

    def _classify(self, name: str, text: str, request_id: str) -> tuple[Classification, str | None]:
        """The classification by the version the classifier's release picks for this prompt, and
        the candidate version to score it in the background (shadow trial), if any."""
        release = self.releases.current(name)
        fraction = stable_fraction(text) if release.candidate is not None else 1.0
        version = release.deciding(fraction)
        classifier = self.classifiers[name]
        try:
            classification = classifier.classify([text], request_id, version or None)[0]
        except ClassifierUnavailable:
            if version == release.serving:
                raise
            # A canary that cannot answer (not loaded, withdrawn) must not degrade routing.
            classification = classifier.classify([text], request_id, release.serving or None)[0]
        self.releases.observe(name, classification.model_version)
        return classification, release.trial(fraction)

    @staticmethod
    def _low_confidence_target(strategy: RoutingStrategy[Any], action: str, prior_share: float, text: str) -> str:
        if action == "weak":
            return strategy.targets[0]
        if action == "prior":
            # A hash, not a random draw: a retried or repeated prompt goes the same way.
            return strategy.strongest if stable_fraction(text) < prior_share else strategy.targets[0]
        return strategy.strongest

    # -- constraints -------------------------------------------------------------------------
    def _prompt_tokens(self, target: TargetConfig, request: GenerationRequest, counted: dict[int, int]) -> int:
        """The prompt's token count for ``target``; ``counted`` caches counts per counter."""
        counter = self._counters.for_target(target.name)
        tokens = counted.get(id(counter))
        if tokens is None:
            contents = [m.content for m in request.messages]
            tokens = counter.count_chat(contents) if request.is_chat else counter.count_text(contents[0])
            counted[id(counter)] = tokens
        return tokens

    def _fits(self, target: TargetConfig, request: GenerationRequest, counted: dict[int, int]) -> bool:
        budget = request.max_tokens or target.default_max_tokens
        return self._prompt_tokens(target, request, counted) + budget <= target.context_window

    def _allowed(self, target: TargetConfig, request: GenerationRequest, private: str | None,
                 counted: dict[int, int]) -> bool:
        if private is not None and not target.is_self_hosted:
            return False
        if not all(target.accepts(param) for param in request.needs):
            return False
        return self._fits(target, request, counted)

    def _constrain(self, choice: Decision, policy: PolicySettings | None, request: GenerationRequest) -> Decision:
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
        return dataclasses.replace(choice, candidates=(head, *fallbacks), reason=reason,
                                   prompt_tokens=self._prompt_tokens(self._targets[head], request, counted))

    def _refuse(self, ordered: list[str], request: GenerationRequest, private: str | None,
                counted: dict[int, int]) -> None:
        """No candidate is allowed: say which constraint ruled them all out."""
        targets = [self._targets[n] for n in ordered]
        if private is not None:
            targets = [t for t in targets if t.is_self_hosted]
            if not targets:
                raise CannotServe(f"The prompt contains private data ({private}) and the privacy rule keeps it on "
                                  "self-hosted targets, none of which can serve this request.",
                                  param="messages", code="privacy_violation")
        for param in request.needs:
            targets = [t for t in targets if t.accepts(param)]
            if not targets:
                raise CannotServe(f"No target this request may use supports '{param}'.", param=param,
                                  code="unsupported_parameter")
        tokens = self._prompt_tokens(targets[0], request, counted)
        budget = request.max_tokens or targets[0].default_max_tokens
        raise CannotServe(f"The prompt (~{tokens} tokens) plus max_tokens ({budget}) exceeds the context window of "
                          "every target this request may use.", param="messages", code="context_length_exceeded")
