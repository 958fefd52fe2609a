"""Keep-alive HTTP connections to the upstreams, on urllib3 directly.

requests (a wrapper around urllib3) spent about 0.35 ms of each upstream call preparing the request
and merging settings (manual routing to an instant upstream, in one process: 1.22 ms p50 with it,
0.96 without). What it did for us is done here once per upstream instead of once per request:
- proxies from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY), read when the
  router starts;
- the CA bundle: REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE if set, else certifi's, as requests did;
- no retries: a POST that may have reached the upstream is not sent twice (dispatch decides
  about fallbacks).

Under gunicorn's gevent worker an answer read in full from a plain-HTTP upstream reached directly
(a self-hosted LLM: Triton, vLLM) goes through geventhttpclient instead, whose HTTP parser is C:
0.6 ms of a bare Flask proxy's overhead against 1.06 ms with urllib3 (gevent worker, instant
upstream, one request at a time). TLS, proxies and streams stay on urllib3.
"""
from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import certifi
import urllib3
from urllib3.util.retry import Retry

from ..cooperative import patched

# requests' default (max_retries=0): connection errors are not retried, nor reads.
NO_RETRIES = Retry(total=0, read=False, redirect=False, raise_on_redirect=False, raise_on_status=False)


def ca_bundle() -> str:
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``, or None (none set, or NO_PROXY covers it)."""
    proxies = urllib.request.getproxies()
    if not proxies:
        return None
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


class HTTPAnswer(Protocol):
    """What the adapters read of an answer: an urllib3 response, or an ``Answer``."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def data(self) -> bytes: ...

    def read(self, amt: int | None = None) -> bytes: ...

    def json(self) -> Any: ...


@dataclass(frozen=True)
class Answer:
    """An answer read in full by geventhttpclient."""

    status: int
    headers: Mapping[str, str]  # geventhttpclient's Headers: case-insensitive
    data: bytes

    def read(self, amt: int | None = None) -> bytes:
        return b""  # all of it is in ``data``, as for an urllib3 response read in full

    def json(self) -> Any:
        return json.loads(self.data)


class Upstream:
    """One upstream base URL as an adapter calls it, with its timeouts; built once per target."""

    def __init__(self, manager: urllib3.PoolManager, base_url: str, timeout: urllib3.Timeout,
                 cooperative: Any = None) -> None:
        self._manager = manager
        self._base_url = base_url
        self._timeout = timeout
        self._cooperative = cooperative  # a geventhttpclient.HTTPClient, or None
        self._path = urlsplit(base_url).path

    def post(self, path: str, payload: dict[str, Any], headers: dict[str, str]) -> HTTPAnswer:
        """POST ``payload`` as JSON to the base URL + ``path``; the answer is read in full."""
        if self._cooperative is None:
            return post_json(self._manager, self._base_url + path, payload, headers, self._timeout)
        resp = self._cooperative.post(self._path + path, body=json.dumps(payload).encode(),
                                      headers={"Content-Type": "application/json", **headers})
        try:
            return Answer(resp.status_code, resp.info(), resp.read())
        finally:
            resp.release()

    def post_stream(self, path: str, payload: dict[str, Any], headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """The same, for an answer read as it arrives: close it with ``close_response``."""
        return post_json(self._manager, self._base_url + path, payload, headers, self._timeout, stream=True)


class HttpClient:
    """One connection pool per upstream host, shared by every request thread. ``pool_size``: the
    connections kept open per host, opened as needed; calls beyond it open extra ones, closed after
    use (with a warning from urllib3). The default matches gunicorn's 1,024 threads, so that a
    thousand streams leave their connections for the next requests. ``cooperative``: use
    geventhttpclient where it can (module docstring); by default when gevent has patched sockets.
    Its pool holds as many connections per host, and a call beyond them waits for one (each
    call's own time is bounded by the read timeout)."""

    def __init__(self, pool_size: int = 1024, cooperative: bool | None = None) -> None:
        self._pool_size = pool_size
        self._direct = urllib3.PoolManager(num_pools=32, maxsize=pool_size, retries=NO_RETRIES,
                                           ca_certs=ca_bundle())
        self._proxied: dict[str, urllib3.ProxyManager] = {}
        self._cooperative = patched() if cooperative is None else cooperative
        self._gevent_clients: dict[tuple[str, int, float, float], Any] = {}

    def upstream(self, base_url: str, connect_timeout_s: float, read_timeout_s: float) -> Upstream:
        manager = self.manager_for(base_url)
        timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)
        parts = urlsplit(base_url)
        if not (self._cooperative and manager is self._direct and parts.scheme == "http" and parts.hostname
                and not parts.query):
            return Upstream(manager, base_url, timeout)
        from geventhttpclient import HTTPClient as GeventHTTPClient

        host, port = parts.hostname, parts.port or 80
        key = (host, port, connect_timeout_s, read_timeout_s)
        if key not in self._gevent_clients:
            self._gevent_clients[key] = GeventHTTPClient(
                host, port, concurrency=self._pool_size,
                connection_timeout=connect_timeout_s, network_timeout=read_timeout_s)
        return Upstream(manager, base_url, timeout, self._gevent_clients[key])

    def manager_for(self, url: str) -> urllib3.PoolManager:
        """The pool manager that reaches ``url``: direct, or through the proxy the environment names.
        Asked once per target, when its adapter is built (``upstream``)."""
        proxy = proxy_for(url)
        if proxy is None:
            return self._direct
        if proxy not in self._proxied:
            self._proxied[proxy] = urllib3.ProxyManager(proxy, num_pools=32, maxsize=self._pool_size,
                                                        retries=NO_RETRIES, ca_certs=ca_bundle())
        return self._proxied[proxy]


def post_json(manager: urllib3.PoolManager, url: str, payload: dict[str, Any], headers: dict[str, str],
              timeout: urllib3.Timeout, stream: bool = False) -> urllib3.BaseHTTPResponse:
    """POST ``payload`` as JSON. Without ``stream`` the body is read and the connection returned to
    the pool; with it the caller reads the body and must ``close_response`` it."""
    return manager.request("POST", url, body=json.dumps(payload).encode(),
                           headers={"Content-Type": "application/json", **headers}, timeout=timeout,
                           preload_content=not stream, decode_content=True)


def close_response(resp: urllib3.BaseHTTPResponse) -> None:
    """Done with a streamed response: a finished body leaves its connection reusable; one left
    half-read (the client went away) is closed, so that no one reads the rest of it."""
    if not resp.closed:
        resp.close()
    resp.release_conn()


def iter_lines(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The body's lines as they arrive (chunked or not), without their line endings."""
    pending = b""
    for data in _chunks(resp):
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line.removesuffix(b"\r")
    if pending:
        yield pending.removesuffix(b"\r")


def _chunks(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    if resp.chunked:
        yield from resp.stream(None)  # one piece per HTTP chunk, as soon as it arrives
        return
    while data := resp.read1(65536):  # a stream without chunking: what has arrived, not 64 KiB
        yield data
