"""Hardening against bad input, on the real stack (gunicorn router with keys on a real Valkey,
real Triton LLMs): Schemathesis generates requests from the router's own /openapi.json (valid and
invalid bodies, wrong methods, missing auth, every operation including the admin API), and
hand-made abuse that a schema cannot express (truncated and slow bodies, header injection, huge
arrays). Never a 5xx; every error an OpenAI-style body (tests/fuzz_hooks.py)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from local_stack.triton_launcher import TritonServer
from local_stack.valkey import ValkeyServer

from .conftest import ROOT, router_config_dict, run_router

MASTER = "mk-fuzz-0123456789abcdef"
MIN_CASES = 2000


@pytest.fixture(scope="module")
def keyed_router(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ValkeyServer() as store:
        config = router_config_dict(triton, store={"url": store.url}, auth={"master_key": MASTER})
        with run_router(config, tmp_path_factory.mktemp("fuzz")) as url:
            yield url


def test_schemathesis_finds_no_server_error(keyed_router: str, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "run", f"{keyed_router}/openapi.json", "-H", f"Authorization: Bearer {MASTER}",
           "--max-examples", "50", "--generation-deterministic", "--suppress-health-check", "all",
           "--checks", "not_a_server_error,openai_style_error", "--request-timeout", "60",
           "--workers", "2", "--no-color", "--report", "ndjson", "--report-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(ROOT)})
    out = done.stdout + done.stderr
    counted = re.search(r"(\d+) generated, (\d+) passed", out)
    assert done.returncode == 0 and counted is not None, out[-6000:]
    generated, passed = map(int, counted.groups())
    assert generated == passed >= MIN_CASES, out[-3000:]
    # The answers the report recorded: some reached a model, none was a 5xx.
    statuses = [int(s) for s in re.findall(r'"status_code":\s*(\d+)', next(tmp_path.glob("*.ndjson")).read_text())]
    assert statuses and max(statuses) < 500 and 200 in statuses and 400 in statuses


def _raw(url: str, data: bytes, read_timeout: float = 30) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_truncated_and_slow_bodies(keyed_router: str) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Authorization: Bearer " + MASTER.encode() + b"\r\nContent-Length: 500\r\n\r\n")
    # The client promised 500 bytes and sent 30, then closed its side: a 400, never a 5xx or a hang.
    answer = _raw(keyed_router, head + b'{"model": "router", "messages"')
    status = int(answer.split(b" ", 2)[1]) if answer else None
    assert status is None or 400 <= status < 500, answer[:300]
    # A body that trickles in still gets its answer, and the server keeps serving meanwhile.
    host, port = keyed_router.removeprefix("http://").split(":")
    body = json.dumps({"model": "router", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection((host, int(port)), timeout=60) as slow:
        slow.sendall(head.replace(b"500", str(len(body)).encode()))
        for i in range(0, len(body), 10):
            slow.sendall(body[i:i + 10])
            time.sleep(0.05)
            assert requests.get(keyed_router + "/health/live", timeout=5).status_code == 200
        reply = slow.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]


def _request_id_answered(url: str, given: bytes) -> tuple[bytes, bytes | None]:
    answer = _raw(url, b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + given
                  + b"\r\nConnection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0]
    rid = re.search(rb"(?i)x-request-id: ([^\r\n]*)", head)
    return head, None if rid is None else rid.group(1)


def test_header_injection_and_huge_arrays(keyed_router: str) -> None:
    # A bare CR inside the header: refused by the HTTP server itself, nothing reflected.
    head, rid = _request_id_answered(keyed_router, b"abc\rSet-Cookie: evil=1")
    assert head.startswith(b"HTTP/1.1 400") and b"set-cookie" not in head.lower() and rid is None
    # Anything but a plain token is replaced by an id of the router's own, never echoed.
    for given in (b"abc def<script>", b"x" * 300, "é".encode()):
        head, rid = _request_id_answered(keyed_router, given)
        assert head.startswith(b"HTTP/1.1 200") and rid is not None and re.fullmatch(rb"[0-9a-f]{32}", rid)
    head, rid = _request_id_answered(keyed_router, b"trace-1.2:3")
    assert rid == b"trace-1.2:3"
    # A huge messages array within the body limit, and one over it: refused cleanly.
    auth = {"Authorization": f"Bearer {MASTER}"}
    for count in (20_000, 60_000):
        many = {"model": "router", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}] * count}
        resp = requests.post(keyed_router + "/v1/chat/completions", json=many, headers=auth, timeout=120)
        assert resp.status_code in (400, 413) and resp.json()["error"]["message"], resp.text[:300]
    assert requests.get(keyed_router + "/health/live", timeout=5).status_code == 200
