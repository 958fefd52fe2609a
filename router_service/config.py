"""Router configuration: a YAML file validated at start-up.

Strings may reference environment variables as ``${NAME}`` or ``${NAME:-default}``; they
are expanded before validation, so secrets never need to live in the file. API keys are
never stored in the config at all: a target names the environment variable holding its key.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator

from .config_base import PolicySettings, StrictModel
from .generation import ADVISORY_FIELDS, TOOL_FIELDS
from .strategies import PolicyConfig

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""


def expand_env(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Recursively replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``value``."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name} is referenced in the config but not set")

    if isinstance(value, str):
        return _ENV_REF.sub(substitute, value)
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    return value


class ServerConfig(StrictModel):
    max_body_bytes: int = Field(1_048_576, gt=0, description="Larger request bodies get 413.")
    # One JSON line per request on stderr (request_log.py): ids, decision, durations, tokens, cost.
    request_log: bool = True
    # Also the prompt and the answer in those lines: off unless the operator opts in (loudly logged).
    log_prompts: bool = False
    # The playground page at /ui (static; it calls the public API with the user's key).
    playground: bool = True


class DecisionLogConfig(StrictModel):
    """Every routed request recorded in SQLite off the hot path, with the clients' feedback: the
    router's own traffic as routing data (decision_log.py). Empty path: off."""

    path: str = ""
    # Rows waiting for the writer; beyond this they are dropped (counted), never waited for.
    queue_size: int = Field(10_000, ge=1)
    retention_days: float = Field(30.0, gt=0)
    # Policies whose prompt and answer text are kept too ("manual": requests that name a target,
    # e.g. the playground's comparisons); never for a prompt the privacy rule matched.
    prompts: list[str] = Field(default_factory=list)


class StoreConfig(StrictModel):
    """The shared Redis-protocol store (Valkey, Redis) for keys, limits and spend. ``make run``
    starts an embedded Valkey and sets ROUTER_STORE_URL; empty: no store (auth cannot be on)."""

    url: str = ""
    prefix: str = Field("llm-router:", min_length=1)
    timeout_s: float = Field(0.5, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("store.url must be a redis://, rediss:// or unix:// URL")
        return url


class AuthConfig(StrictModel):
    """Client API keys. A master key (from the environment: ${ROUTER_MASTER_KEY}) turns them on:
    every request then needs a key the admin API created, or the master key itself."""

    master_key: SecretStr = SecretStr("")
    # The store unreachable: "closed" refuses requests (503), "open" serves them unchecked.
    on_store_error: Literal["closed", "open"] = "closed"

    @field_validator("master_key")
    @classmethod
    def _long_enough(cls, key: SecretStr) -> SecretStr:
        if 0 < len(key.get_secret_value()) < 16:
            raise ValueError("auth.master_key must be at least 16 characters")
        return key


class TritonConfig(StrictModel):
    http_url: str = "http://127.0.0.1:8000"
    grpc_url: str = "127.0.0.1:8001"
    timeout_s: float = Field(2.0, gt=0)


class DecisionCacheConfig(StrictModel):
    """Reuse a classification for the same classifier input (decision_cache.py)."""

    size: int = Field(10_000, ge=0, description="Entries kept (least recently used go first); 0 turns it off.")
    # A new model version serves new scores at most this long after it is loaded.
    ttl_s: float = Field(300.0, gt=0)


class ClassifierConfig(StrictModel):
    name: str = Field(min_length=1)
    triton_model: str = "router_classifier"
    # Empty: the latest version Triton serves.
    model_version: str = ""
    # With a store: the version serving when the router first classifies is pinned (release.py),
    # so a new export serves only once `python -m export.promote` promotes it (after a shadow or
    # canary trial and the guard's report). Without a store this does nothing (a warning says so).
    guarded: bool = False
    cache: DecisionCacheConfig = DecisionCacheConfig()


class TargetConfig(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    kind: Literal["triton", "openai"]
    # triton: Triton's HTTP URL (defaults to triton.http_url); openai: the API base URL (…/v1).
    url: str | None = None
    model: str = Field(min_length=1, description="Triton model name or the provider's model id.")
    context_window: int = Field(gt=0)
    usd_per_1m_input_tokens: float = Field(0.0, ge=0)
    usd_per_1m_output_tokens: float = Field(0.0, ge=0)
    api_key_env: str | None = Field(None, description="Name of the env var holding the API key.")
    connect_timeout_s: float = Field(2.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    # Completion budget assumed when a request gives no max_tokens (context-window checks, local LLMs).
    default_max_tokens: int = Field(256, gt=0)
    # Where the prompt may go: the privacy rule keeps matching prompts on self-hosted targets.
    self_hosted: bool | None = Field(None, description="Default: true for kind triton, false for openai.")
    supports_tools: bool | None = Field(None, description="tools / response_format; default: kind openai.")
    # A tokenizer.json for exact prompt-token counts; without one the router uses a documented estimate.
    tokenizer: str | None = None
    # Tried in order when this target fails (connection error, 5xx, 429) or its circuit is open.
    fallbacks: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _openai_needs_url(self) -> "TargetConfig":
        if self.kind == "openai" and not self.url:
            raise ValueError(f"target {self.name!r}: kind 'openai' needs a url")
        if self.name in self.fallbacks:
            raise ValueError(f"target {self.name!r} lists itself as a fallback")
        return self

    @property
    def is_self_hosted(self) -> bool:
        return self.kind == "triton" if self.self_hosted is None else self.self_hosted

    @property
    def can_use_tools(self) -> bool:
        return self.kind == "openai" if self.supports_tools is None else self.supports_tools

    def accepts(self, param: str) -> bool:
        """Can this target honour the pass-through request field ``param``? Local (Triton) LLMs
        take only the core sampling fields; OpenAI-compatible APIs take OpenAI's fields."""
        if param in ADVISORY_FIELDS:
            return True
        if param in TOOL_FIELDS:
            return self.can_use_tools
        return self.kind == "openai"


class RuleConfig(StrictModel):
    """Pins matching prompts to a target before the classifier runs."""

    name: str = Field(min_length=1)
    target: str
    pattern: str | None = None
    keywords: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_matcher(self) -> "RuleConfig":
        if not self.pattern and not self.keywords:
            raise ValueError(f"rule {self.name!r} needs a pattern or keywords")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"rule {self.name!r}: invalid pattern: {exc}") from exc
        return self


PrivacyKind = Literal["email", "credit_card", "iban", "phone"]


def _default_privacy_kinds() -> list[PrivacyKind]:
    return ["email", "credit_card"]


class PrivacyConfig(StrictModel):
    """Prompts matching these stay on self-hosted targets, fallbacks included."""

    enabled: bool = True
    builtin: list[PrivacyKind] = Field(default_factory=_default_privacy_kinds)
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid privacy pattern {pattern!r}: {exc}") from exc
        return patterns


class CircuitBreakerConfig(StrictModel):
    failure_threshold: int = Field(3, ge=1, description="Failures within window_s that open the circuit.")
    window_s: float = Field(30.0, gt=0)
    cooldown_s: float = Field(30.0, gt=0, description="How long an open circuit rejects calls.")


class ReliabilityConfig(StrictModel):
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    # A 429 whose Retry-After is at most this is retried on the same target after waiting.
    max_retry_after_s: float = Field(2.0, ge=0)


class RouterConfig(StrictModel):
    server: ServerConfig = ServerConfig()
    triton: TritonConfig = TritonConfig()
    classifiers: list[ClassifierConfig] = Field(min_length=1)
    targets: list[TargetConfig] = Field(min_length=1)
    policies: list[PolicyConfig] = Field(min_length=1)
    default_policy: str
    rules: list[RuleConfig] = Field(default_factory=list)
    privacy: PrivacyConfig = PrivacyConfig()
    reliability: ReliabilityConfig = ReliabilityConfig()
    store: StoreConfig = StoreConfig()
    auth: AuthConfig = AuthConfig()
    decision_log: DecisionLogConfig = DecisionLogConfig()

    @field_validator("classifiers", "targets", "policies", "rules")
    @classmethod
    def _unique_names(cls, items: list[Any]) -> list[Any]:
        names = [item.name for item in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate names: {', '.join(duplicates)}")
        return items

    @model_validator(mode="after")
    def _references_resolve(self) -> "RouterConfig":
        targets = {t.name for t in self.targets}
        classifiers = {c.name for c in self.classifiers}
        policies = {p.name for p in self.policies}
        for policy in self.policies:
            if policy.classifier not in classifiers:
                raise ValueError(f"policy {policy.name!r}: unknown classifier {policy.classifier!r}")
            for role, name in policy.target_roles() + [("fail-open", policy.fail_open_target)]:
                if name is not None and name not in targets:
                    raise ValueError(f"policy {policy.name!r}: unknown {role} target {name!r}")
            policy.check_prices({t.name: t.usd_per_1m_input_tokens + t.usd_per_1m_output_tokens
                                 for t in self.targets})
            if policy.shadow is not None and policy.shadow.judge is not None and policy.shadow.judge not in targets:
                raise ValueError(f"policy {policy.name!r}: unknown shadow judge target {policy.shadow.judge!r}")
        for name in self.decision_log.prompts:
            if name not in policies | {"manual"}:
                raise ValueError(f"decision_log.prompts: unknown policy {name!r}")
        for target in self.targets:
            for name in target.fallbacks:
                if name not in targets:
                    raise ValueError(f"target {target.name!r}: unknown fallback {name!r}")
        for rule in self.rules:
            if rule.target not in targets:
                raise ValueError(f"rule {rule.name!r}: unknown target {rule.target!r}")
        if self.default_policy not in policies:
            raise ValueError(f"default_policy {self.default_policy!r} is not a policy")
        clash = targets & {f"router:{p}" for p in policies} | (targets & {"router"})
        if clash:
            raise ValueError(f"target names clash with policy model names: {sorted(clash)}")
        if self.auth.master_key.get_secret_value() and not self.store.url:
            raise ValueError("auth.master_key needs store.url: keys, limits and budgets live in the store")
        return self

    def target(self, name: str) -> TargetConfig:
        return next(t for t in self.targets if t.name == name)

    def policy(self, name: str) -> PolicySettings:
        return next(p for p in self.policies if p.name == name)

    def classifier(self, name: str) -> ClassifierConfig:
        return next(c for c in self.classifiers if c.name == name)

    def target_url(self, target: TargetConfig) -> str:
        return (target.url or self.triton.http_url).rstrip("/")


def parse_config(raw: Any, environ: dict[str, str] | None = None) -> RouterConfig:
    """Validate an already-parsed YAML document (after ``${ENV}`` expansion)."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping")
    try:
        return RouterConfig.model_validate(expand_env(raw, environ))
    except ConfigError:
        raise
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise ConfigError(f"invalid router config: {exc}") from exc


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> RouterConfig:
    """Read, expand and validate the YAML config at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    return parse_config(raw, environ)
