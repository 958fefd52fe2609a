"""Child processes of the local stack."""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import requests


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout_s: float, name: str,
                     log: Path | str, poll_s: float = 0.1) -> None:
    """Poll ``ready()`` (connection errors count as not ready) until it holds; fail early, naming
    ``log``, when ``proc`` exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}; see {log}")
        try:
            if ready():
                return
        except (OSError, requests.RequestException):
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"{name} not ready after {timeout_s:.0f}s; see {log}")
