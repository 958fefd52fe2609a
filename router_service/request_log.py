"""One JSON line per request on stderr: who asked (request id), what was decided and why, how
long each part took, the tokens and the cost. Never the prompt, the answer or a key, unless the
operator opts in (``server.log_prompts``), which the app announces loudly at start-up."""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO


class RequestLog:
    def __init__(self, enabled: bool, log_prompts: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.log_prompts = log_prompts
        # Lines go straight to the stream (one write each, under a lock for gthread's threads):
        # a logging.Logger would build a record and look up its caller's frame per request, a
        # tenth of the manual path's own work, for a line that is JSON already.
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # a closed or broken stream loses the line, never the request
                pass

    def emit(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "log": "request",
                **{k: v for k, v in record.items() if v is not None}}
        if not self.log_prompts:
            line.pop("prompt", None)
            line.pop("answer", None)
        self._write(json.dumps(line, separators=(",", ":"), ensure_ascii=False, default=str))

    def warn_if_prompts(self) -> None:
        if self.enabled and self.log_prompts:
            self._write("WARNING: server.log_prompts is on: every request log line holds the prompt and the answer. "
                        "Turn it off unless you mean to store user data in your logs.")
