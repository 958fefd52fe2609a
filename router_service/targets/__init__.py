"""Target adapters: one per kind of upstream LLM, all behind the same small interface."""
from __future__ import annotations

from ..config import RouterConfig, TargetConfig
from .base import Chunk, Completion, GenerationRequest, Target, TargetError, Usage
from .http_client import HttpClient
from .openai_compat import OpenAITarget
from .triton_llm import TritonLLMTarget

__all__ = ["Chunk", "Completion", "GenerationRequest", "Target", "TargetError", "Usage", "build_targets"]


def build_target(config: RouterConfig, target: TargetConfig, http: HttpClient) -> Target:
    url = config.target_url(target)
    if target.kind == "triton":
        return TritonLLMTarget(target, url, http)
    return OpenAITarget(target, url, http)


def build_targets(config: RouterConfig) -> dict[str, Target]:
    # One pool of keep-alive connections per upstream host, shared by all request threads: no
    # per-request TCP (or TLS) set-up.
    http = HttpClient()
    return {t.name: build_target(config, t, http) for t in config.targets}
