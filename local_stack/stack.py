"""`make run`: start Triton on the model repository and the router behind gunicorn, print the
endpoint, and keep both running until Ctrl-C / SIGTERM; then stop both cleanly."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from .processes import stop_process, wait_until_ready
from .triton_launcher import TritonPorts, TritonServer
from .valkey import ValkeyServer


ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONF = ROOT / "router_service" / "gunicorn_conf.py"
POLL_S = 5  # how often Triton rescans the model repository


def start_router(config: Path, host: str, port: int, env: dict[str, str] | None = None,
                 log: Path | None = None, app: str = "router_service.wsgi:app") -> subprocess.Popen[bytes]:
    """Start the router under gunicorn (the production server) as a child process; its output goes
    to ``log`` when given (else to this process's). ``app``: another WSGI app under the same
    settings (the benchmark's server floor)."""
    proc_env = {**os.environ, **(env or {}), "ROUTER_CONFIG": str(config.resolve()), "ROUTER_HOST": host,
                "ROUTER_PORT": str(port)}
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), app]
    if log is None:
        return subprocess.Popen(cmd, env=proc_env, cwd=ROOT)
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=proc_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` dies."""
    wait_until_ready(proc, lambda: requests.get(url, timeout=2).status_code == 200, timeout_s, "the router",
                     "its output above", poll_s=0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--config", type=Path, default=Path(os.environ.get("ROUTER_CONFIG", "config/router.yaml")))
    parser.add_argument("--host", default=os.environ.get("ROUTER_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("ROUTER_PORT", "8080")))
    args = parser.parse_args(argv)

    ports = TritonPorts(http=int(os.environ.get("TRITON_HTTP_PORT", "8000")),
                        grpc=int(os.environ.get("TRITON_GRPC_PORT", "8001")),
                        metrics=int(os.environ.get("TRITON_METRICS_PORT", "8002")))
    stop = threading.Event()

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # during start-up: abandon the wait, the finally block cleans up

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)

    started = time.monotonic()
    # Polling: a version `make export` writes while the stack runs is loaded within seconds (and, with
    # a guarded classifier, serves only once promoted: python -m export.promote).
    triton = TritonServer(args.model_repository.resolve(), ports=ports, model_control_mode="poll",
                          extra_args=[f"--repository-poll-secs={POLL_S}"])
    # The shared store: an external one when ROUTER_STORE_URL says so, else an embedded Valkey that
    # keeps its data (keys, spend, the router-model release) under .eval/store across restarts.
    store_url = os.environ.get("ROUTER_STORE_URL", "")
    valkey = None if store_url else ValkeyServer(port=int(os.environ.get("VALKEY_PORT", "6379")),
                                                 data_dir=Path(os.environ.get("ROUTER_STORE_DIR", ".eval/store")))
    router: subprocess.Popen[bytes] | None = None
    try:
        if valkey is not None:
            print(f">> starting Valkey (embedded store) on 127.0.0.1:{valkey.port}", flush=True)
            store_url = valkey.start().url
        print(f">> starting Triton on {args.model_repository} (http {ports.http}, grpc {ports.grpc})", flush=True)
        triton.start()
        print(f">> starting the router (gunicorn) on {args.host}:{args.port}", flush=True)
        router = start_router(args.config, args.host, args.port,
                              {"TRITON_HTTP_URL": triton.http_url, "TRITON_GRPC_URL": triton.grpc_url,
                               "ROUTER_STORE_URL": store_url,
                               "ROUTER_DECISION_LOG": os.environ.get("ROUTER_DECISION_LOG", ".eval/decisions.sqlite")})
        wait_ready(f"http://{args.host}:{args.port}/health/ready", router, timeout_s=120)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        auth = ("on (ROUTER_MASTER_KEY is set: clients need a key from /admin/keys)" if os.environ.get(
            "ROUTER_MASTER_KEY") else "OFF: anyone who can reach the port may use it (set ROUTER_MASTER_KEY to turn "
            "keys on)")
        print(f"\n>> ready in {time.monotonic() - started:.1f}s: OpenAI base URL http://{args.host}:{args.port}/v1 "
              f"(model \"router\"); playground http://{args.host}:{args.port}/ui; API keys {auth}; Ctrl-C stops\n",
              flush=True)
        while not stop.is_set() and router.poll() is None and triton.is_running():
            stop.wait(1.0)
        if not stop.is_set():
            print(">> a component exited unexpectedly; shutting down", file=sys.stderr, flush=True)
            return 1
        return 0
    except KeyboardInterrupt:
        print(">> interrupted during start-up", flush=True)
        return 130
    finally:
        print(">> stopping", flush=True)
        if router is not None:
            stop_process(router)
        triton.stop()
        if valkey is not None:
            valkey.close()


if __name__ == "__main__":
    sys.exit(main())
