"""The project's Python type-checks (mypy, with pydantic's plugin; settings in pyproject.toml): the
router, the export and evaluation tools, the Triton model's code, the local stack and the bench. The
environment it runs in is the locked one (constraints.txt)."""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("router_service", "export", "model_repository/router_classifier/model.py",
           "model_repository/router_classifier/torch_graph.py", "local_stack", "bench")


def test_the_project_type_checks() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", *CHECKED], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_environment_is_the_locked_one() -> None:
    """`make install-all` installs with `-c constraints.txt`: every distribution in the suite's
    virtualenv is pinned there at the version installed. A dependency added to pyproject.toml
    without `make lock` arrives unpinned and fails this."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed.pop("triton-llm-router")  # the project itself, installed editable
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"installed but not in constraints.txt (run make lock): {unpinned}"
    drifted = {n: (v, pins[n]) for n, v in installed.items() if v != pins[n]}
    assert not drifted, f"installed version differs from constraints.txt (installed, locked): {drifted}"
