"""An OpenAI-compatible upstream that answers instantly, so that timing through the router
minus timing it directly is the router's own overhead (the way gateway overhead is reported)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "instant",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
}).encode()


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "instant",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real provider
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    stream_seconds = 0.0  # set per server: how long a streamed answer takes
    stream_chunks = 10

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        parts = [_chunk("tok ") for _ in range(self.stream_chunks)] + [_chunk(None, "stop"), b"data: [DONE]\n\n"]
        for i, part in enumerate(parts):
            if i:
                time.sleep(self.stream_seconds / len(parts))
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if b'"stream": true' in body or b'"stream":true' in body:
            return self._stream()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 4096  # a thousand streams connect at once

    def handle_error(self, request: object, client_address: object) -> None:
        """A load generator closing its connections at the end of a run is not an error worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class InstantUpstream:
    """Non-streamed requests: answered at once. Streamed ones: ``stream_chunks`` chunks spread over
    ``stream_seconds`` (a slow upstream, for concurrency)."""

    def __init__(self, stream_seconds: float = 0.0, stream_chunks: int = 10) -> None:
        handler = type("Handler", (_Handler,), {"stream_seconds": stream_seconds, "stream_chunks": stream_chunks})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "InstantUpstream":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
