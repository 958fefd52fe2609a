"""Fixed-rate load with vegeta (open loop: requests leave at the set rate whatever the answers'
latency, so queueing shows in the percentiles instead of slowing the client down, which is what a
fixed-concurrency run hides). The request bodies rotate over many prompts."""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from .load import chat_bodies


def write_targets(path: Path, url: str, model: str, prompts: list[str], headers: dict[str, str] | None = None) -> Path:
    """vegeta's JSON targets: one POST per prompt, used in turn."""
    header = {"Content-Type": ["application/json"], **{k: [v] for k, v in (headers or {}).items()}}
    with path.open("w") as f:
        for body in chat_bodies(model, prompts):
            f.write(json.dumps({"method": "POST", "url": url, "header": header,
                                "body": base64.b64encode(body.encode()).decode()}) + "\n")
    return path


def run_vegeta(vegeta: Path, targets: Path, rate: int, seconds: int) -> dict[str, float]:
    """One run at ``rate`` requests/s: achieved throughput, p50 and p99 latency (ms), errors."""
    attack = subprocess.run([str(vegeta), "attack", "-format=json", f"-targets={targets}", f"-rate={rate}/1s",
                             f"-duration={seconds}s", "-timeout=30s", "-keepalive=true"],
                            capture_output=True, check=True)
    report = json.loads(subprocess.run([str(vegeta), "report", "-type=json"], input=attack.stdout,
                                       capture_output=True, check=True).stdout)
    lat = report["latencies"]
    errors = sum(n for code, n in report.get("status_codes", {}).items() if not code.startswith("2"))
    return {"rps": round(report["throughput"], 1), "p50_ms": round(lat["50th"] / 1e6, 2),
            "p99_ms": round(lat["99th"] / 1e6, 2), "errors": errors}
