"""Shared fixtures: a real Triton server on the real model repository (with a router model
exported by the real `make export` pipeline on a small training subset), and real router
processes (gunicorn, as in production) talking to it over loopback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from local_stack.stack import start_router, stop_process, wait_ready
from local_stack.triton_launcher import TritonPorts, TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = ROOT / "model_repository"
LLM_MODELS = ("smollm2_135m", "gemma3_270m")


@pytest.fixture(scope="session")
def routing_data() -> Path:
    path = Path(os.environ.get("ROUTING_DATA", ROOT.parent / "shared" / "routing")).resolve()
    assert (path / "mmlu-train.jsonl").is_file(), f"routing data not found at {path} (set ROUTING_DATA)"
    return path


def export_tiny_classifier(repo: Path, routing_data: Path) -> None:
    """Run the real export pipeline, default head, on a small subset (the full one is `make export`)."""
    subprocess.run(
        [sys.executable, "-m", "export", "--data-dir", str(routing_data), "--model-repository", str(repo),
         "--limit-train", "384", "--limit-val", "128", "--max-length", "64", "--seed", "0"],
        check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory, routing_data: Path) -> Path:
    """A model repository laid out like the project's: the LLMs as they are, a freshly exported classifier.

    TEST_MODEL_REPOSITORY=<dir> reuses an already exported repository (quicker local iterations)."""
    if os.environ.get("TEST_MODEL_REPOSITORY"):
        return Path(os.environ["TEST_MODEL_REPOSITORY"]).resolve()
    repo = tmp_path_factory.mktemp("model_repository")
    for name in LLM_MODELS:
        shutil.copytree(MODEL_REPOSITORY / name, repo / name, symlinks=True)
    (repo / "router_classifier").mkdir()
    shutil.copy(MODEL_REPOSITORY / "router_classifier" / "config.pbtxt", repo / "router_classifier")
    export_tiny_classifier(repo, routing_data)
    return repo


@pytest.fixture(scope="session")
def triton(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    ports = TritonPorts.free()
    server = TritonServer(model_repo, ports=ports, log_file=tmp_path_factory.mktemp("triton") / "triton.log")
    server.start(timeout_s=600)
    yield server
    server.stop()


def router_config_dict(triton: TritonServer, **overrides: object) -> dict:
    """The embedded default config, pointed at a test Triton."""
    config = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    config["triton"] = {"http_url": triton.http_url, "grpc_url": triton.grpc_url, "timeout_s": 10.0}
    config.update(overrides)
    return config


@contextmanager
def run_router(config: dict, tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start the router under gunicorn with ``config``; yields its base URL."""
    config_path = tmp_path / f"router-{time.monotonic_ns()}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = start_router(config_path, "127.0.0.1", port, {"WEB_CONCURRENCY": "1", "ROUTER_THREADS": "8",
                                                         **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health/live", proc, timeout_s=60)
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def router_url(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_router(router_config_dict(triton), tmp_path_factory.mktemp("router")) as url:
        yield url
