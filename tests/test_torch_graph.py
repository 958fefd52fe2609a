"""The GPU path without onnxruntime-gpu (model_repository/router_classifier/torch_graph.py): the
exported ONNX graph run by torch. No GPU here, so these tests run it on the CPU, where everything
but the CUDA graph capture is the same code, and check the capture's precondition on torch's meta
device: a plan that reads an activation on the host would fail there as it fails in a capture."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from export.evaluate import load_served_module
from local_stack.triton_launcher import TritonPorts, TritonServer


def _version(model_repo: Path) -> Path:
    return max((p for p in (model_repo / "router_classifier").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def _prompts(routing_data: Path, n: int) -> list[str]:
    out = []
    for name in ("mmlu-val.jsonl", "llmrouter-val.jsonl"):
        with (routing_data / name).open() as f:
            out += [json.loads(line)["prompt"] for _, line in zip(range(n // 2), f)]
    return out + ["", "hi", "A. yes\nB. no\nWhich?"]


def _runtime(version: Path, engine: str, precision: str = "fp32") -> Any:
    module = load_served_module(version)
    return module.ClassifierRuntime(version, module.RuntimeSettings(device="cpu", precision=precision, engine=engine))


def test_torch_engine_scores_as_onnxruntime(model_repo: Path, routing_data: Path) -> None:
    version = _version(model_repo)
    torch_rt, ort_rt = _runtime(version, "torch", precision="auto"), _runtime(version, "onnxruntime")
    assert torch_rt.engine == "torch" and ort_rt.engine == "onnxruntime"
    assert torch_rt.precision == "fp32"  # auto: torch has no kernels for the int8 graph's operators
    assert torch_rt.session.get_providers()[0].startswith("TorchCUDAGraph(cpu")
    prompts = _prompts(routing_data, 40)
    expected_score, expected_conf = ort_rt.evaluate(prompts)
    # Batches of different sizes land in different buckets (rows and tokens padded): same scores.
    for size in (1, 3, 17, len(prompts)):
        parts = [torch_rt.evaluate(prompts[i:i + size]) for i in range(0, len(prompts), size)]
        score = np.concatenate([p[0] for p in parts])
        conf = np.concatenate([p[1] for p in parts])
        np.testing.assert_allclose(score, expected_score, atol=1e-5)
        np.testing.assert_allclose(conf, expected_conf, atol=1e-6)
    assert len(torch_rt.session.plans) >= 4
    # The encoder's pooled embedding too: the padded tokens are cropped off, not averaged in.
    np.testing.assert_allclose(torch_rt.logits(prompts[:5]), ort_rt.logits(prompts[:5]), atol=1e-5)


def test_plans_fold_shapes_and_never_read_activations_on_the_host(model_repo: Path, routing_data: Path) -> None:
    version = _version(model_repo)
    module = load_served_module(version)
    engine = module._torch_graph()
    session = engine.TorchGraphSession(version / "model.onnx", device="meta", max_length=64)
    runtime = _runtime(version, "onnxruntime")
    for texts in (_prompts(routing_data, 6), ["hi"]):
        plan = session._build(session._pad(runtime.encode(texts)))
        # On the meta device a tensor has no values: any .item()/.tolist() on an activation raises.
        outputs = session._execute(plan)
        rows = engine.bucket(len(texts), session.max_batch)
        assert outputs["knn_score"].shape == (rows,) and outputs["pooled"].shape == (rows, 384)
        assert session.host_copies(plan) == []  # constants meeting activations were moved once, at build
        ops = {step.op_type for step in plan.steps}
        assert not ops & {"Shape", "Concat", "ConstantOfShape"}  # shape arithmetic folded
        assert len(plan.steps) < 0.8 * len(session.nodes)


def test_unsupported_operators_are_named(model_repo: Path) -> None:
    engine = load_served_module(_version(model_repo))._torch_graph()
    with pytest.raises(NotImplementedError, match="DynamicQuantizeMatMul"):  # int8 runs on onnxruntime only
        engine.TorchGraphSession(_version(model_repo) / "model.int8.onnx", device="cpu")


def test_engine_choice(model_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_served_module(_version(model_repo))
    choose, settings = module.ClassifierRuntime.choose_engine, module.RuntimeSettings
    cpu_ort, gpu_ort = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(module, "_gpu_device_present", lambda: False)
    assert choose(settings("auto"), cpu_ort) == "onnxruntime"  # no GPU: torch is not even imported
    assert choose(settings("cuda", engine="torch"), cpu_ort) == "torch"
    monkeypatch.setattr(module, "_gpu_device_present", lambda: True)
    assert choose(settings("auto"), gpu_ort) == "onnxruntime"  # onnxruntime-gpu, where present, runs it
    assert choose(settings("cpu"), cpu_ort) == "onnxruntime"
    with pytest.raises(ValueError, match="engine"):
        choose(settings("auto", engine="tensorrt"), cpu_ort)
    config = {"parameters": {"engine": {"string_value": "onnxruntime"}}}
    assert module.settings_from_config(config, {}).engine == "onnxruntime"
    assert module.settings_from_config(config, {"ROUTER_CLASSIFIER_ENGINE": "torch"}).engine == "torch"


def test_triton_serves_the_torch_engine(model_repo: Path, routing_data: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside Triton's python-backend stub, as on a GPU machine without onnxruntime-gpu (here on the CPU)."""
    version = _version(model_repo)
    repo = tmp_path / "repository" / "router_classifier"
    repo.mkdir(parents=True)
    (repo / "config.pbtxt").write_text((model_repo / "router_classifier" / "config.pbtxt").read_text())
    (repo / version.name).symlink_to(version, target_is_directory=True)
    for key, value in {"ROUTER_CLASSIFIER_ENGINE": "torch", "ROUTER_CLASSIFIER_PRECISION": "fp32",
                       "ROUTER_CLASSIFIER_DEVICE": "cpu"}.items():
        monkeypatch.setenv(key, value)  # the stub inherits Triton's environment
    prompts = _prompts(routing_data, 10)
    expected, _ = _runtime(version, "onnxruntime").evaluate(prompts)
    server = TritonServer(repo.parent, TritonPorts.free(), log_file=tmp_path / "triton.log")
    with server:
        body = {"inputs": [{"name": "text", "shape": [len(prompts), 1], "datatype": "BYTES", "data": prompts}],
                "outputs": [{"name": "score"}]}
        reply = requests.post(f"{server.http_url}/v2/models/router_classifier/infer", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        score = np.asarray(reply.json()["outputs"][0]["data"], np.float32)
    np.testing.assert_allclose(score, expected, atol=1e-5)
    log = (tmp_path / "triton.log").read_text()
    assert "providers=['TorchCUDAGraph(cpu)']" in log and "precision=fp32" in log


def test_bench_gpu_serves_only_the_version_on_gpu_instances(model_repo: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`make bench-gpu` rewrites the shipped config.pbtxt: should those lines change, it must stop,
    not bench another setup (a GPU lease is too short to find out there)."""
    import bench.gpu
    from bench.gpu import model_repository

    version = _version(model_repo)
    repo = model_repository(version, tmp_path / "repository", instances=3, on_gpu=True)
    config = (repo / "router_classifier" / "config.pbtxt").read_text()
    assert "count: 3\n    kind: KIND_GPU" in config
    assert f"specific: {{ versions: [{version.name}] }}" in config and "latest:" not in config
    assert (repo / "router_classifier" / version.name / "model.onnx").is_file()
    # A config whose instance group reads differently: refused, naming the line.
    shipped = (bench.gpu.ROOT / "model_repository" / "router_classifier" / "config.pbtxt").read_text()
    other = tmp_path / "other" / "model_repository" / "router_classifier"
    other.mkdir(parents=True)
    (other / "config.pbtxt").write_text(shipped.replace("count: 1", "count: 2"))
    monkeypatch.setattr(bench.gpu, "ROOT", tmp_path / "other")
    with pytest.raises(SystemExit, match="count: 1"):
        model_repository(version, tmp_path / "repository-2", instances=3, on_gpu=True)
