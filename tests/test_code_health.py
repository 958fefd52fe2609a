"""The router package type-checks (mypy, with pydantic's plugin; settings in pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_router_service_type_checks() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "router_service"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
