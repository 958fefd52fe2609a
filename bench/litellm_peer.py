"""The peer measured side by side: LiteLLM's proxy (from its own bench-only virtualenv, `make
bench` installs it) in front of the same instant upstream, with a master key as a team would run
it, offline (its model-price map read from the package, no telemetry)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import requests
import yaml

from local_stack.processes import stop_process, wait_until_ready
from local_stack.triton_launcher import free_port

MASTER_KEY = "sk-bench-litellm-master"


class LiteLLMProxy:
    def __init__(self, litellm: Path, upstream_url: str, work_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {MASTER_KEY}"}
        self._cmd = [str(litellm), "--config", str(work_dir / "litellm.yaml"), "--host", "127.0.0.1",
                     "--port", str(self.port), "--num_workers", "1"]
        (work_dir / "litellm.yaml").write_text(yaml.safe_dump({
            "model_list": [{"model_name": "instant", "litellm_params": {
                "model": "openai/instant", "api_base": upstream_url, "api_key": "unused"}}],
            "general_settings": {"master_key": MASTER_KEY},
            "litellm_settings": {"telemetry": False},
        }))
        self._log = work_dir / "litellm.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "LiteLLMProxy":
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True"}
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(self._cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until_ready(self._proc, lambda: requests.get(self.url + "/health/liveliness", timeout=1).ok, 120,
                         "litellm", self._log, poll_s=0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout_s=10)
