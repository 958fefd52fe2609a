"""One JSON line per request on stderr: who asked (request id), what was decided and why, how
long each part took, the tokens and the cost. Never the prompt, the answer or a key, unless the
operator opts in (``server.log_prompts``), which the app announces loudly at start-up."""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO


class RequestLog:
    def __init__(self, enabled: bool, log_prompts: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.log_prompts = log_prompts
        # A logger of its own, not registered globally: one per app, no shared state.
        self._logger = logging.Logger("router.requests", logging.INFO)
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)

    def emit(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "log": "request",
                **{k: v for k, v in record.items() if v is not None}}
        if not self.log_prompts:
            line.pop("prompt", None)
            line.pop("answer", None)
        self._logger.info(json.dumps(line, separators=(",", ":"), ensure_ascii=False, default=str))

    def warn_if_prompts(self) -> None:
        if self.enabled and self.log_prompts:
            self._logger.warning("WARNING: server.log_prompts is on: every request log line holds the prompt and the "
                                 "answer. Turn it off unless you mean to store user data in your logs.")
