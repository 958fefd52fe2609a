"""Start the real ``tritonserver`` binary that the ``nvidia-pytriton`` wheel bundles.

Only for running without NVIDIA's container (dev machines, tests, ``make run``): in
Kubernetes the official Triton image serves the same model repository, so nothing in the
repository may depend on this module.

The wheel's binary needs some help on a plain machine, all handled here:

* the python backend looks for ``triton_python_backend_stub`` next to
  ``libtriton_python.so``, and the wheel ships one stub per Python version elsewhere, so we
  assemble a private backend directory with the stub of the running interpreter;
* the stub must load *this* interpreter's libpython (not the OS one) and the wheel's
  vendored libraries, hence ``LD_LIBRARY_PATH``; it finds the venv (and its packages) via
  ``PATH``;
* every server gets its own python-backend shared-memory prefix in /dev/shm (with the
  launcher's pid), removed on stop, so parallel servers never collide; regions left by
  launchers that died without stopping are removed on the next start.

Usage: ``python -m local_stack.triton_launcher --model-repository model_repository``.
"""
from __future__ import annotations

import argparse
import atexit
import ctypes
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

_SHM_DIR = Path("/dev/shm")
_SHM_PREFIX = "triton_py_"  # + launcher pid + "_" + random + "_"
_PR_SET_PDEATHSIG = 1
EXIT_TIMEOUT_S = 10


class TritonStartError(RuntimeError):
    """Triton exited or did not become ready in time; the message ends with its log tail."""


@dataclass(frozen=True)
class TritonPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> TritonPorts:
        """Defaults, overridden by TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT."""
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            http=int(env.get("TRITON_HTTP_PORT", d.http)),
            grpc=int(env.get("TRITON_GRPC_PORT", d.grpc)),
            metrics=int(env.get("TRITON_METRICS_PORT", d.metrics)),
        )

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> TritonPorts:
        """Three distinct ports that are free right now (tests, benchmarks)."""
        http, grpc, metrics = free_ports(3, host)
        return cls(http=http, grpc=grpc, metrics=metrics)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that are free right now: all sockets stay bound until all are picked,
    so the kernel cannot hand out the same port twice."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (the kernel picks it); good enough for tests."""
    return free_ports(1, host)[0]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def triton_home() -> Path:
    """``pytriton/tritonserver`` of the installed wheel, found without importing pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError(
            "nvidia-pytriton is not installed: pip install 'nvidia-pytriton==0.7.0' "
            "(it bundles the tritonserver binary)"
        )
    home = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise TritonStartError(f"no tritonserver binary under {home}")
    return home


def _make_backend_dir(home: Path, dest: Path) -> Path:
    """Build ``dest/python/`` = the python backend + the stub for this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartError(f"the pytriton wheel has no python backend stub for Python {version}")
    python_dir = dest / "python"
    python_dir.mkdir(parents=True)
    for src in (home / "backends" / "python").iterdir():
        if src.is_file():  # skips a __pycache__ left by whoever imported the utils
            shutil.copy2(src, python_dir / src.name)
    # Copied, not linked: the backend chmods the stub and looks for it in its own dir.
    shutil.copy2(stub, python_dir / stub.name)
    (python_dir / stub.name).chmod(0o755)
    return dest


def _server_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    libs = home.parent.parent / "nvidia_pytriton.libs"  # auditwheel's vendored libraries
    # This interpreter's libpython must win over the OS one, or the stub crashes.
    lib_path = [str(sysconfig.get_config_var("LIBDIR") or ""), str(libs)]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*lib_path, env.get("LD_LIBRARY_PATH", "")] if p)
    # The stub's embedded Python finds its prefix (the venv, its packages) via PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # No __pycache__ inside version directories: a new file there looks like a model change to polling.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _die_with_parent() -> None:
    """Runs in the child: SIGTERM it when the process that started it dies (no orphans)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _progress(message: str) -> None:
    print(f"[triton] {message}", file=sys.stderr, flush=True)


class TritonServer:
    """One tritonserver process with the python backend, on a model repository.

    Use as a context manager, or call ``start()`` / ``stop()``. If the starting thread or
    process dies, Triton gets SIGTERM (PR_SET_PDEATHSIG): start it from a long-lived thread.
    """

    def __init__(
        self,
        model_repository: Path,
        ports: TritonPorts = TritonPorts(),
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        model_control_mode: str = "none",
        extra_args: Sequence[str] = (),
        progress: Callable[[str], None] = _progress,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.ports = ports
        self.host = host
        self.log_file = log_file
        self.model_control_mode = model_control_mode
        self.extra_args = tuple(extra_args)
        self._progress = progress
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        # Unique per server: parallel servers and stale regions never collide.
        self.shm_prefix = f"{_SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_"
        self._lock = threading.RLock()

    # -- addresses -------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------
    def command(self, backend_dir: Path) -> list[str]:
        home = triton_home()
        return [
            str(home / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            f"--model-control-mode={self.model_control_mode}",
            # A model that fails to load is an error, not a half-working server.
            "--exit-on-error=true",
            "--strict-readiness=true",
            # Triton waits this long on SIGTERM for in-flight requests *and* idle keep-alive
            # connections (any requests.Session): 30s by default, too long for dev and tests.
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 300.0) -> None:
        """Start Triton; return once ``/v2/health/ready`` answers 200."""
        with self._lock:
            if self.is_running():
                return
            if not self.model_repository.is_dir():
                raise TritonStartError(f"model repository {self.model_repository} is not a directory")
            busy = [p for p in (self.ports.http, self.ports.grpc, self.ports.metrics) if _port_in_use(self.host, p)]
            if busy:
                # Checked up front: another server on our port would answer /ready for us.
                raise TritonStartError(f"port(s) {busy} on {self.host} already in use")
            home = triton_home()
            _remove_stale_shm()
            self._workdir = Path(tempfile.mkdtemp(prefix="triton-launcher-"))
            try:
                self._spawn(home)
                self._wait_ready(timeout_s)
            except BaseException:
                self.stop()
                raise

    def _spawn(self, home: Path) -> None:
        assert self._workdir is not None
        backend_dir = _make_backend_dir(home, self._workdir / "backends")
        self._log_path = Path(self.log_file) if self.log_file else self._workdir / "triton.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command(backend_dir)
        self._progress(f"starting {' '.join(cmd)}")
        self._progress(f"log: {self._log_path}")
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(home),
                cwd=self._workdir,
                start_new_session=True,  # own process group: the stubs go with it on kill
                preexec_fn=_die_with_parent,  # noqa: PLW1509 -- only a prctl, no locks taken
            )
        atexit.register(self.stop)

    def _wait_ready(self, timeout_s: float) -> None:
        started = time.monotonic()
        next_note = started + 5.0
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise TritonStartError(f"tritonserver exited with code {code} before it was ready\n{self.log_tail()}")
            if self._ready():
                self._progress(f"ready after {time.monotonic() - started:.1f}s at {self.http_url}")
                return
            now = time.monotonic()
            if now - started > timeout_s:
                raise TritonStartError(f"tritonserver not ready after {timeout_s:.0f}s\n{self.log_tail()}")
            if now >= next_note:
                self._progress(f"waiting for readiness ({now - started:.0f}s / {timeout_s:.0f}s)")
                next_note = now + 10.0
            time.sleep(0.25)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2.0) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        """Triton's error lines (the cause; often above its status tables) and the log's tail."""
        if self._log_path is None or not self._log_path.exists():
            return "(no Triton log)"
        text = self._log_path.read_text(errors="replace").splitlines()
        errors = [line for line in text if re.match(r"E\d{4} ", line)][-10:]
        parts = [f"--- errors in {self._log_path} ---", *errors] if errors else []
        parts += [f"--- last {min(lines, len(text))} lines of {self._log_path} ---", *text[-lines:]]
        return "\n".join(parts)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group; remove our shm and temp files."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                atexit.unregister(self.stop)
                if proc.poll() is None:
                    self._progress("stopping")
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout_s)
                    except subprocess.TimeoutExpired:
                        self._progress(f"no exit after {timeout_s:.0f}s: SIGKILL")
                        _killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                # The stubs (same group) exit on their own when Triton goes; make sure.
                _reap_group(proc.pid)
            for stale in _SHM_DIR.glob(f"{self.shm_prefix}*"):
                stale.unlink(missing_ok=True)
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
                if self.log_file is None:
                    self._log_path = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _remove_stale_shm() -> None:
    """Remove shm regions whose launcher process is gone (it was killed before stop())."""
    for path in _SHM_DIR.glob(f"{_SHM_PREFIX}*"):
        pid = path.name[len(_SHM_PREFIX) :].split("_", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _reap_group(pgid: int, grace_s: float = 5.0) -> None:
    """Wait briefly for group members left behind (python stubs), then SIGKILL them."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    _killpg(pgid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    env_ports = TritonPorts.from_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=env_ports.http)
    parser.add_argument("--grpc-port", type=int, default=env_ports.grpc)
    parser.add_argument("--metrics-port", type=int, default=env_ports.metrics)
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--model-control-mode", default="none", choices=["none", "poll", "explicit"])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    parser.add_argument("extra_args", nargs="*", help="passed to tritonserver (after --)")
    args = parser.parse_args(argv)

    server = TritonServer(
        args.model_repository,
        TritonPorts(args.http_port, args.grpc_port, args.metrics_port),
        host=args.host,
        log_file=args.log_file,
        model_control_mode=args.model_control_mode,
        extra_args=args.extra_args,
    )
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # While starting, SIGTERM interrupts like Ctrl-C (start() then stops Triton).
    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.start(args.timeout)
    except TritonStartError as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"Triton ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}", flush=True)
    try:
        while not stop.wait(1.0):
            if not server.is_running():
                print(f"tritonserver died\n{server.log_tail()}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
