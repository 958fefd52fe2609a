"""Router configuration: a YAML file validated at start-up.

Strings may reference environment variables as ``${NAME}`` or ``${NAME:-default}``; they
are expanded before validation, so secrets never need to live in the file. API keys are
never stored in the config at all: a target names the environment variable holding its key.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""


def expand_env(value: Any, environ: dict[str, str] | None = None) -> Any:
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    max_body_bytes: int = Field(1_048_576, gt=0, description="Larger request bodies get 413.")


class TritonConfig(_Strict):
    http_url: str = "http://127.0.0.1:8000"
    grpc_url: str = "127.0.0.1:8001"
    timeout_s: float = Field(2.0, gt=0)


class ClassifierConfig(_Strict):
    name: str = Field(min_length=1)
    triton_model: str = "router_classifier"
    # Empty: the latest version Triton serves.
    model_version: str = ""


class TargetConfig(_Strict):
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

    @model_validator(mode="after")
    def _openai_needs_url(self) -> "TargetConfig":
        if self.kind == "openai" and not self.url:
            raise ValueError(f"target {self.name!r}: kind 'openai' needs a url")
        return self


class PolicyConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    classifier: str
    weak: str
    strong: str
    # The probability that the strong target is needed, at or above which it is chosen.
    threshold: float = Field(0.5, ge=0.0, le=1.0)


class RouterConfig(_Strict):
    server: ServerConfig = ServerConfig()
    triton: TritonConfig = TritonConfig()
    classifiers: list[ClassifierConfig] = Field(min_length=1)
    targets: list[TargetConfig] = Field(min_length=1)
    policies: list[PolicyConfig] = Field(min_length=1)
    default_policy: str

    @field_validator("classifiers", "targets", "policies")
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
            for role in ("weak", "strong"):
                if getattr(policy, role) not in targets:
                    raise ValueError(
                        f"policy {policy.name!r}: unknown {role} target {getattr(policy, role)!r}"
                    )
        if self.default_policy not in policies:
            raise ValueError(f"default_policy {self.default_policy!r} is not a policy")
        clash = targets & {f"router:{p}" for p in policies} | (targets & {"router"})
        if clash:
            raise ValueError(f"target names clash with policy model names: {sorted(clash)}")
        return self

    def target(self, name: str) -> TargetConfig:
        return next(t for t in self.targets if t.name == name)

    def policy(self, name: str) -> PolicyConfig:
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
