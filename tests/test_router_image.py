"""The router image, built for real from docker/router.Dockerfile with podman (`make router-image`)
and run the way the chart runs it (uid 10001, read-only root, /tmp in memory, the config mounted
at /etc/llm-router/router.yaml) against the test Triton: it answers a chat request.

No image registry is reachable here, so the base is made from Debian's own packages (`make
image-base`: mmdebstrap's minimal bookworm with Debian's python3 3.11 and pip, `podman import`ed)
instead of python:3.11-slim; the Dockerfile takes it as its PYTHON_IMAGE build argument. Podman
runs containers here only with runc and low ulimits (1,024 open files), and on the host network.
The Triton image needs NVIDIA's base image, which cannot be fetched here: it is reviewed only."""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests
import yaml

from local_stack.triton_launcher import TritonServer, free_port

from .conftest import ROOT, router_config_dict
from .test_helm import clean_make_env

IMAGE = "localhost/llm-router/router:test"
RUN = ["podman", "run", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
SECRET_PROMPT = "The launch code is 4471-PELICAN; summarise it in one word."


@pytest.fixture(scope="module")
def image() -> str:
    base = os.environ.get("ROUTER_BASE_IMAGE", "")
    if not base:
        pytest.fail("env ROUTER_BASE_IMAGE is not set: run the tests via `make test` (it imports the image's base)")
    built = subprocess.run(["make", "--no-print-directory", "router-image", f"ROUTER_BASE_IMAGE={base}",
                            f"ROUTER_IMAGE={IMAGE}"], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                           env=clean_make_env())
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE


@pytest.fixture(scope="module")
def container(image: str, triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("image") / "router.yaml"
    config.write_text(yaml.safe_dump(router_config_dict(triton)))
    config.chmod(0o644)
    port = free_port()
    name = f"llm-router-test-{port}"
    started = subprocess.run([*RUN, "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                              "-v", f"{config}:/etc/llm-router/router.yaml:ro", "-e", f"ROUTER_PORT={port}",
                              "-e", "ROUTER_HOST=127.0.0.1", "-e", "WEB_CONCURRENCY=1", "-e", "ROUTER_THREADS=8",
                              image], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True).stderr
            assert time.monotonic() < deadline, f"the router container is not ready:\n{logs[-3000:]}"
            time.sleep(0.5)
        yield name
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, timeout=60)


def test_the_image_runs_as_the_chart_expects(image: str) -> None:
    config = json.loads(subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True,
                                       check=True).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"][0] == "gunicorn" and "ROUTER_CONFIG=/etc/llm-router/router.yaml" in config["Env"]
    # The release tool the docs run in router pods (kubectl exec ... python -m export.promote).
    tool = subprocess.run([*RUN, "--rm", "--network", "none", "--entrypoint", "python3", image, "-m",
                           "export.promote", "--help"], capture_output=True, text=True, timeout=120)
    assert tool.returncode == 0 and "rollback" in tool.stdout, tool.stderr


def test_the_container_answers_a_chat_request(container: str, triton: TritonServer) -> None:
    port = next(e.split("=", 1)[1] for e in json.loads(subprocess.run(
        ["podman", "inspect", container], capture_output=True, text=True, check=True).stdout)[0]["Config"]["Env"]
        if e.startswith("ROUTER_PORT="))
    url = f"http://127.0.0.1:{port}"
    resp = requests.post(url + "/v1/chat/completions", timeout=120, json={
        "model": "router", "messages": [{"role": "user", "content": SECRET_PROMPT}], "max_tokens": 8,
        "temperature": 0})  # greedy: a sampled reply may be empty, and that is no fault of the image
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"].strip()
    assert 0 < body["usage"]["completion_tokens"] <= 8
    assert resp.headers["x-router-target"] in ("smollm2-135m", "gemma3-270m")
    assert resp.headers["x-router-reason"] == "classifier" and resp.headers["x-router-model-version"]
    # It runs as uid 10001 on a read-only root, and logs no prompt by default.
    assert subprocess.run(["podman", "exec", container, "id", "-u"], capture_output=True, text=True,
                          check=True).stdout.strip() == "10001"
    denied = subprocess.run(["podman", "exec", container, "touch", "/etc/llm-router/x"], capture_output=True, text=True)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    logs = subprocess.run(["podman", "logs", container], capture_output=True, text=True, check=True)
    assert resp.headers["x-request-id"] in logs.stdout + logs.stderr
    assert "PELICAN" not in logs.stdout + logs.stderr
