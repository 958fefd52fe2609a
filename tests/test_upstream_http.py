"""The upstream HTTP client (router_service/targets/http_client.py) against small real HTTP servers:
what requests used to do for the adapters (environment proxies, streamed lines as they arrive,
connections that are safe to reuse) must still hold."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from router_service.config import TargetConfig
from router_service.generation import GenerationRequest, Message
from router_service.targets import TargetError
from router_service.targets.http_client import HttpClient, proxy_for
from router_service.targets.openai_compat import OpenAITarget

ANSWER = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "no_proxy")


def _request(stream: bool = False) -> GenerationRequest:
    return GenerationRequest(model="m", kind="chat", stream=stream,
                             messages=(Message("user", "hello", {"role": "user", "content": "hello"}),))


def _target(url: str, http: HttpClient | None = None) -> OpenAITarget:
    config = TargetConfig(name="up", kind="openai", url=url, model="m", context_window=1024, read_timeout_s=10)
    return OpenAITarget(config, url, http or HttpClient())


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def serve() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_the_environment_proxy_carries_calls_unless_no_proxy_names_the_host(
        serve: Callable[[type[BaseHTTPRequestHandler]], str], no_proxy_env: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    class ForwardProxy(_Quiet):
        def do_POST(self) -> None:  # noqa: N802
            seen.append(self.path)  # a proxy is sent the absolute URL
            self._body()
            self._json(ANSWER)

    proxy = serve(ForwardProxy)
    no_proxy_env.setenv("HTTP_PROXY", proxy)
    assert proxy_for("http://upstream.invalid/v1") == proxy
    completion = _target("http://upstream.invalid/v1").complete(_request())
    assert completion.text == "hi" and seen == ["http://upstream.invalid/v1/chat/completions"]

    # NO_PROXY names the host: the call goes direct, and this host does not resolve.
    no_proxy_env.setenv("NO_PROXY", "upstream.invalid")
    assert proxy_for("http://upstream.invalid/v1") is None
    with pytest.raises(TargetError) as info:
        _target("http://upstream.invalid/v1").complete(_request())
    assert info.value.status == 503 and info.value.code == "upstream_unavailable" and len(seen) == 1


def test_a_stream_without_chunking_arrives_as_it_is_sent(
        serve: Callable[[type[BaseHTTPRequestHandler]], str], no_proxy_env: pytest.MonkeyPatch) -> None:
    """An upstream that streams HTTP/1.0-style (no length, no chunks, closed at the end): each event
    reaches the router when it is sent, not when the connection closes."""
    first_read = threading.Event()
    released: list[bool] = []

    class CloseDelimited(_Quiet):
        def do_POST(self) -> None:  # noqa: N802
            self._body()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            delta = {"choices": [{"delta": {"content": "a"}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(delta)}\r\n\r\n".encode())
            self.wfile.flush()
            # The rest only once the router has read the first event (or after 5 s, so a router
            # that waits for the end fails the test instead of hanging it).
            released.append(first_read.wait(5))
            done = {"choices": [{"delta": {"content": "b"}, "finish_reason": "stop"}]}
            self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
            self.close_connection = True

    url = serve(CloseDelimited)
    chunks = _target(url).stream(_request(stream=True))
    first = next(chunks)
    assert not first_read.is_set() and first.text == "a"  # read while the server still held the rest
    first_read.set()
    rest = list(chunks)
    assert [c.text for c in rest] == ["b"] and rest[0].finish_reason == "stop"
    assert released == [True]  # the server went on because the router had read the first event


def test_an_abandoned_stream_does_not_leak_into_the_next_call(
        serve: Callable[[type[BaseHTTPRequestHandler]], str], no_proxy_env: pytest.MonkeyPatch) -> None:
    """A client that leaves mid-stream: its connection, with the rest of the stream unread, must not
    go back to the pool for the next request to read; a finished call's connection is reused."""
    release = threading.Event()
    peers: list[int] = []

    class KeepAlive(_Quiet):
        def do_POST(self) -> None:  # noqa: N802
            peers.append(self.client_address[1])
            if not self._body().get("stream"):
                self._json(ANSWER)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                event = f"data: {json.dumps({'choices': [{'delta': {'content': str(i)}}]})}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                release.wait(5)
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass

    url = serve(KeepAlive)
    target = _target(url, HttpClient(pool_size=1))
    assert target.complete(_request()).text == "hi"
    assert target.complete(_request()).text == "hi"
    assert peers[0] == peers[1]  # kept alive: one connection for both

    chunks = target.stream(_request(stream=True))
    assert next(chunks).text == "0"
    chunks.close()  # the client went away; the upstream will send the rest later
    # The next call, while the abandoned stream is quiet: a connection given back to the pool
    # would look idle, and this call would read the stream's rest as its answer.
    assert target.complete(_request()).text == "hi"
    assert peers[3] != peers[2]  # on a new connection
    release.set()


def test_a_streamed_error_is_read_up_to_a_bound(
        serve: Callable[[type[BaseHTTPRequestHandler]], str], no_proxy_env: pytest.MonkeyPatch) -> None:
    """An upstream that refuses a stream with a huge error body: the router reads a bounded part of
    it (the message is cut, not 300 KB long); a small one arrives whole."""
    huge = json.dumps({"error": {"message": "x" * 300_000}}).encode()
    small = json.dumps({"error": {"message": "overloaded, try later"}}).encode()

    class Refusing(_Quiet):
        def do_POST(self) -> None:  # noqa: N802
            self._body()
            data = huge if self.path.startswith("/huge") else small
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    url = serve(Refusing)
    for base, longest in ((url + "/huge/v1", 1_000), (url + "/small/v1", None)):
        with pytest.raises(TargetError) as info:
            list(_target(base).stream(_request(stream=True)))
        assert info.value.status == 502 and info.value.code == "upstream_error"
        if longest is None:
            assert "overloaded, try later" in info.value.message
        else:
            assert len(info.value.message) < longest


@pytest.mark.parametrize("cooperative, agent", [(False, "python-urllib3/"), (True, "python/gevent-http-client-")],
                         ids=["urllib3", "geventhttpclient"])
def test_both_transports_reuse_connections_and_map_answers_alike(
        serve: Callable[[type[BaseHTTPRequestHandler]], str], no_proxy_env: pytest.MonkeyPatch,
        cooperative: bool, agent: str) -> None:
    """An answer read in full goes through geventhttpclient under the gevent worker (cooperative) and
    through urllib3 otherwise: the same answers, errors (statuses, refused connections, timeouts)
    and connection reuse either way, including a kept-alive connection the upstream has closed
    meanwhile (uvicorn, behind vLLM, closes idle ones after 5 s): the next call opens a new one
    instead of failing on the dead one."""
    seen: list[tuple[int, str]] = []

    class Upstream(_Quiet):
        def do_POST(self) -> None:  # noqa: N802
            seen.append((self.client_address[1], self.headers["User-Agent"]))
            body = self._body()
            if self.path.startswith("/limited/"):
                data = json.dumps({"error": {"message": "slow down"}}).encode()
                self.send_response(429)
                self.send_header("Retry-After", "30")
            elif self.path.startswith("/broken/"):
                data = json.dumps({"error": {"message": "the GPU fell over"}}).encode()
                self.send_response(500)
            else:
                self._json({**ANSWER, "choices": [{"message": {"content": body["messages"][0]["content"]},
                                                   "finish_reason": "stop"}]})
                self.close_connection = self.path.startswith("/closing")  # closed after the answer, unannounced
                return
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    url = serve(Upstream)
    http = HttpClient(pool_size=1, cooperative=cooperative)
    target = _target(url + "/v1", http)
    assert [target.complete(_request()).text for _ in range(2)] == ["hello", "hello"]
    assert seen[0][0] == seen[1][0] and all(ua.startswith(agent) for _, ua in seen)  # one kept-alive connection

    closing = _target(url + "/closing/v1", http)
    for _ in range(2):
        assert closing.complete(_request()).text == "hello"
        time.sleep(0.5)  # the upstream closes the connection meanwhile, as after an idle timeout
    assert seen[2][0] != seen[3][0]  # the dead connection was not reused

    with pytest.raises(TargetError) as limited:
        _target(url + "/limited/v1", http).complete(_request())
    assert (limited.value.status, limited.value.code, limited.value.retry_after_s) == (429, "rate_limited", 30.0)
    with pytest.raises(TargetError) as broken:
        _target(url + "/broken/v1", http).complete(_request())
    assert (broken.value.status, broken.value.code) == (502, "upstream_error")
    assert "the GPU fell over" in broken.value.message

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TargetError) as refused:
        _target(f"http://127.0.0.1:{port}/v1", http).complete(_request())
    assert (refused.value.status, refused.value.code) == (503, "upstream_unavailable")
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = TargetConfig(name="up", kind="openai", url="http://x/v1", model="m", context_window=1024,
                              read_timeout_s=0.3)
        with pytest.raises(TargetError) as slow:
            OpenAITarget(config, f"http://127.0.0.1:{silent.getsockname()[1]}/v1", http).complete(_request())
    assert (slow.value.status, slow.value.code) == (504, "upstream_timeout")
