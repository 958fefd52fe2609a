"""Fixed-concurrency load with wrk (a C load generator, so that the client is not the bottleneck
on 2 cores): requests/s and latency percentiles at rising concurrency, for the instant upstream
directly, manual routing and automatic routing. The request bodies rotate over many prompts."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

_SCRIPT = """
local bodies = {%s}
local headers = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text.replace("]==]", "") + "]==]"


def chat_bodies(model: str, prompts: list[str]) -> list[str]:
    """One small chat body per prompt (one completion token: the upstream's time stays out of it)."""
    return [json.dumps({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": p}]})
            for p in prompts]


def write_script(path: Path, model: str, prompts: list[str], headers: dict[str, str] | None = None) -> Path:
    fields = {"Content-Type": "application/json", **(headers or {})}
    path.write_text(_SCRIPT % (", ".join(_lua_string(b) for b in chat_bodies(model, prompts)),
                               # "[ [==[" with spaces: "[[" would open a long string
                               ", ".join(f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in fields.items())))
    return path


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(wrk: Path, url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 latency (ms), errors (non-2xx, socket errors)."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(wrk.parent)}
    out = subprocess.run([str(wrk), "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, env=env, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {p: _ms(v, u) for p, v, u in re.findall(r"(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out)}
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"rps": round(rate, 1), "p50_ms": round(pct.get("50", float("nan")), 2),
            "p99_ms": round(pct.get("99", float("nan")), 2), "errors": errors}
