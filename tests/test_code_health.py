"""The project's Python type-checks (mypy, with pydantic's plugin; settings in pyproject.toml): the
router, the export and evaluation tools, the Triton model's code, the local stack and the bench."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("router_service", "export", "model_repository/router_classifier/model.py", "local_stack", "bench")


def test_the_project_type_checks() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", *CHECKED], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
