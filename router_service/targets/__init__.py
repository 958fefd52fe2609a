"""Target adapters: one per kind of upstream LLM, all behind the same small interface."""
from __future__ import annotations

import urllib.request

import requests

from ..config import RouterConfig, TargetConfig
from .base import Chunk, Completion, GenerationRequest, Target, TargetError, Usage
from .openai_compat import OpenAITarget
from .triton_llm import TritonLLMTarget

__all__ = ["Chunk", "Completion", "GenerationRequest", "Target", "TargetError", "Usage", "build_targets"]


def _session(pool_size: int = 32) -> requests.Session:
    # Keep-alive connections, sized for gunicorn's thread pool: no per-request TCP set-up.
    session = requests.Session()
    if not urllib.request.getproxies():
        # Without proxy variables, skip requests' per-request environment scan (~0.3 ms each).
        session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def build_target(config: RouterConfig, target: TargetConfig, session: requests.Session) -> Target:
    url = config.target_url(target)
    if target.kind == "triton":
        return TritonLLMTarget(target, url, session)
    return OpenAITarget(target, url, session)


def build_targets(config: RouterConfig) -> dict[str, Target]:
    session = _session()
    return {t.name: build_target(config, t, session) for t in config.targets}
