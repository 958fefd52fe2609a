"""`python -m export` end to end on a tiny subset, versioning, evaluation and the served code path.

The exports fine-tune on a few hundred prompts for one epoch (about a minute each on 2 CPU
cores), into a temporary copy of the model repository: the project's repository is untouched.
Version 1 is the ensemble (kNN + fine-tuned classifier branch, int8), version 2 the
classifier-only export, version 3 the kNN head alone, version 4 the default blend head (kNN +
prompt features, trained on two sources, calibrated out of fold).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest

from export import metrics, repository
from export.data import load_models, load_routing_set
from export.pipeline import MODEL_NAME
from export.served_model import CODE_FILES
from router_service.classifier import UNFAMILIAR_BELOW

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--limit-train", "256", "--limit-val", "128", "--epochs", "1", "--max-length", "64", "--head", "ensemble"]
VERSION_FILES = {"model.onnx", "model.py", "torch_graph.py", "metadata.json", "tokenizer.json",
                 "tokenizer_config.json", "vocab.txt", "calibration.npy"}



def _routing_dir() -> Path:
    path = Path(os.environ.get("ROUTING_DATA", ROOT.parent / "shared" / "routing"))
    if not path.is_absolute():
        path = (ROOT / path).resolve()
    assert (path / "mmlu-train.jsonl").is_file(), f"routing data not found at {path} (set ROUTING_DATA)"
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
    return proc


def last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def fresh_repository(tmp: Path) -> Path:
    """A copy of the project's model repository without any exported versions."""
    repo = tmp / "model_repository"
    (repo / MODEL_NAME).mkdir(parents=True)
    shutil.copy2(ROOT / "model_repository" / MODEL_NAME / "config.pbtxt", repo / MODEL_NAME / "config.pbtxt")
    return repo


def tree_digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    data = _routing_dir()
    repo = fresh_repository(tmp_path_factory.mktemp("export"))
    proc = run_module("export", "--data-dir", str(data), "--model-repository", str(repo), *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return SimpleNamespace(data=data, repo=repo, model_dir=repo / MODEL_NAME, stdout=proc.stdout,
                           summary=last_json(proc.stdout))


def test_export_writes_a_complete_version(exported: SimpleNamespace) -> None:
    version = exported.model_dir / "1"
    assert VERSION_FILES | {"model.int8.onnx", "head.int8.npz", "calibration.int8.npy"} <= {p.name for p in version.iterdir()}
    for source in CODE_FILES:  # model.py and the GPU path it loads, versioned with the graph
        assert (version / source.name).read_bytes() == source.read_bytes()
    assert not [p for p in exported.model_dir.iterdir() if p.name.startswith(".")], "staging dir left behind"

    assert (version / "head.npz").is_file()  # the rank references of both branches
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["max_length"] == 64
    hyper = meta["hyperparameters"]
    assert hyper["epochs"] == 1 and hyper["head"] == "ensemble" and hyper["freeze_layers"] == 3
    assert meta["task"] == "feature-extraction" and meta["head"]["type"] == "embedding"
    assert meta["head"]["knn_weight"] == 0.5 and meta["head"]["classifier"]["objective"] == "ce3"
    n_index = meta["head"]["n_index"]  # 256 prompts + their question-only copies
    assert 256 < n_index <= 512 and meta["head"]["augment"] == "question-only-gated" and meta["head"]["center"] == "mean"
    for name in ("head.npz", "head.int8.npz"):  # per precision: each branch's scores of the 128 val prompts, sorted
        with np.load(version / name) as head:
            assert set(head.files) == {"knn_ref", "clf_ref"}
            for ref in ("knn_ref", "clf_ref"):
                assert head[ref].shape == (128,) and np.all(np.diff(head[ref]) >= 0)
            assert np.all((head["clf_ref"] >= -1) & (head["clf_ref"] <= 1))
    # The head is part of each graph: index (fp32, embedded by that precision's encoder), labels, classifier.
    indexes = {}
    for name in ("model.onnx", "model.int8.onnx"):
        model = onnx.load(str(version / name))
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("head/")}
        if name == "model.int8.onnx":  # the int8 graph's index: int8 rows, a scale each
            assert weights["head/index_q"].shape == (384, n_index) and weights["head/index_q"].dtype == np.int8
            assert weights["head/index_scale"].shape == (n_index,) and "head/index_t" not in weights
            weights["head/index_t"] = weights["head/index_q"] * weights["head/index_scale"]
        assert weights["head/index_t"].shape == (384, n_index) and weights["head/index_t"].dtype == np.float32
        assert weights["head/labels"].shape == (n_index,) and np.all((weights["head/labels"] >= 0)
                                                                      & (weights["head/labels"] <= 1))
        assert weights["head/clf_w_t"].shape == (384, 3) and weights["head/clf_b"].shape == (3,)
        # centred on the index mean (the default --knn-center mean): the stored rows no longer share a direction
        assert weights["head/center"].shape == (384,) and np.linalg.norm(weights["head/center"]) > 0.1
        assert np.linalg.norm(weights["head/index_t"].mean(axis=1)) < 0.1
        assert [o.name for o in model.graph.output] == ["knn_score", "knn_support", "clf_score", "pooled"]
        indexes[name] = weights["head/index_t"]
    cos = (indexes["model.onnx"] * indexes["model.int8.onnx"]).sum(0)
    assert 0.8 < cos.min() and np.any(cos < 0.9999)  # close, but re-embedded by the int8 model
    # One graph, two encoder branches; the 3 frozen layers (and embeddings) are computed once.
    graph = onnx.load(str(version / "model.int8.onnx")).graph
    layers = {n.name.split("/")[2] for n in graph.node if n.name.startswith("/encoder/layer.")}
    assert layers == {f"layer.{i}" for i in range(6)}
    tuned_layers = {n.name.split("/")[3] for n in graph.node if n.name.startswith("ft//encoder/layer.")}
    assert tuned_layers == {"layer.3", "layer.4", "layer.5"}
    for name in ("calibration.npy", "calibration.int8.npy"):  # per precision: the val prompts' scores, sorted
        calibration = np.load(version / name)
        assert calibration.shape == (128,) and np.all(np.diff(calibration) >= 0)
    assert meta["models"] == {"weak": "mixtral-8x7b-instruct-v0.1", "strong": "gpt-4-1106-preview"}
    train_file = exported.data / "mmlu-train.jsonl"
    assert meta["data"]["train"]["sha256"] == hashlib.sha256(train_file.read_bytes()).hexdigest()
    assert meta["data"]["train"]["records_used"] == 256 and meta["data"]["val"]["records_used"] == 128
    assert meta["validation"]["parity"]["max_abs_diff_prob"] <= 1e-4
    # Both precisions: int8 served on CPU by default, checked against the fp32 model's scores, which
    # GPUs serve (onnxruntime's CUDA provider has no kernels for the quantized operators).
    assert meta["precision"] == "int8" and meta["precisions"] == ["fp32", "int8"]
    assert meta["validation"]["int8_vs_fp32"]["spearman"] >= 0.8
    assert set(meta["validation"]["score_threshold_for_strong_share_by_precision"]) == {"fp32", "int8"}
    ops = {node.op_type for node in onnx.load(str(version / "model.int8.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"} <= ops  # encoder and index
    assert "MatMulInteger" not in {node.op_type for node in onnx.load(str(version / "model.onnx")).graph.node}

    summary = exported.summary
    assert summary["version"] == 1 and summary["n"] == 128
    for key in ("apgr", "auc", "cpt50", "cpt80", "strong_share_at_95"):
        assert key in summary
    assert summary["random"]["apgr"] == pytest.approx(0.5)
    assert "max abs diff probability" in exported.stdout and "epoch 1" in exported.stdout


def test_has_version_cli(exported: SimpleNamespace, tmp_path: Path) -> None:
    assert run_module("export.repository", "--has-version", str(exported.model_dir)).returncode == 0
    assert run_module("export.repository", "--has-version", str(tmp_path / "missing")).returncode == 1
    (tmp_path / "m" / "1").mkdir(parents=True)  # a version dir without model.onnx does not count
    (tmp_path / "m" / "notes").mkdir()
    assert run_module("export.repository", "--has-version", str(tmp_path / "m")).returncode == 1


def test_repository_helpers(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    assert repository.next_version(model_dir) == 1 and repository.latest_version(model_dir) is None
    for v in (1, 3):
        (model_dir / str(v)).mkdir(parents=True)
        (model_dir / str(v) / "model.onnx").write_bytes(b"x")
    (model_dir / "7").mkdir()  # incomplete: never served, but its number is never reused
    (model_dir / "latest").mkdir()
    assert repository.list_versions(model_dir) == [1, 3]
    assert repository.latest_version(model_dir) == 3
    assert repository.next_version(model_dir) == 8
    staged = repository.staging_dir(model_dir)
    (staged / "model.onnx").write_bytes(b"new")
    assert repository.publish(staged, model_dir) == model_dir / "8"
    assert (model_dir / "3" / "model.onnx").read_bytes() == b"x"
    assert repository.version_dir(model_dir) == model_dir / "8"


def test_second_export_adds_a_version_and_keeps_the_first(exported: SimpleNamespace) -> None:
    before = tree_digest(exported.model_dir / "1")
    # The previous default (fine-tuned sequence classifier alone) still exports and serves.
    proc = run_module("export", "--data-dir", str(exported.data), "--model-repository", str(exported.repo),
                      *TINY, "--seed", "1", "--head", "classifier", "--precision", "fp32")
    assert proc.returncode == 0
    assert last_json(proc.stdout)["version"] == 2
    assert VERSION_FILES <= {p.name for p in (exported.model_dir / "2").iterdir()}
    assert not (exported.model_dir / "2" / "head.npz").exists()
    meta = json.loads((exported.model_dir / "2" / "metadata.json").read_text())
    assert meta["task"] == "text-classification" and meta["validation"]["parity"]["max_abs_diff_prob"] <= 1e-4
    assert meta["precision"] == "fp32" and meta["precisions"] == ["fp32"] and meta["validation"]["int8_vs_fp32"] is None
    assert not (exported.model_dir / "2" / "model.int8.onnx").exists()
    assert "MatMulInteger" not in {n.op_type for n in onnx.load(str(exported.model_dir / "2" / "model.onnx")).graph.node}
    assert tree_digest(exported.model_dir / "1") == before
    assert repository.latest_version(exported.model_dir) == 2


def test_knn_head_alone_exports_one_encoder(exported: SimpleNamespace) -> None:
    """--head knn: the base encoder as is (no fine-tuning), one output, no classifier branch; here
    cut to its first 4 layers (--encoder-layers), which the served graph and the metadata show."""
    proc = run_module("export", "--data-dir", str(exported.data), "--model-repository", str(exported.repo),
                      "--limit-train", "256", "--limit-val", "128", "--max-length", "64", "--head", "knn",
                      "--precision", "fp32", "--encoder-layers", "4")
    assert proc.returncode == 0
    assert last_json(proc.stdout)["version"] == 3 and "no fine-tuning" in proc.stdout
    version = exported.model_dir / "3"
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["base_model"]["layers"] == 4 and json.loads((version / "config.json").read_text())["num_hidden_layers"] == 4
    graph_layers = {n.name.split("/")[2] for n in onnx.load(str(version / "model.onnx")).graph.node
                    if n.name.startswith("/encoder/layer.")}
    assert graph_layers == {"layer.0", "layer.1", "layer.2", "layer.3"}
    assert meta["hyperparameters"]["epochs"] == 0 and meta["head"]["knn_weight"] == 1.0
    assert "classifier" not in meta["head"] and meta["validation"]["parity"]["max_abs_diff_prob"] <= 1e-4
    assert [o.name for o in onnx.load(str(version / "model.onnx")).graph.output] == ["knn_score", "knn_support", "pooled"]
    assert not (version / "head.npz").exists()  # no blend: the graph's kNN vote is the score


def test_static_encoder_serves_the_mean_of_distilled_token_vectors(exported: SimpleNamespace, tmp_path: Path) -> None:
    """--encoder static: the graph's encoder is one lookup of distilled token vectors, the served
    embedding their mean over the prompt's tokens; the vectors sit closer to the full encoder's
    embeddings than the single-token vectors they start from, on prompts they were not fitted on."""
    from export import static_encoder
    from export.pipeline import default_base_model
    from export.served_model import ClassifierRuntime, RuntimeSettings
    from export.train import load_encoder, predict_embeddings

    repo = fresh_repository(tmp_path)
    proc = run_module("export", "--data-dir", str(exported.data), "--model-repository", str(repo),
                      "--limit-train", "256", "--limit-val", "128", "--max-length", "64", "--encoder", "static")
    assert proc.returncode == 0
    version = repo / MODEL_NAME / "1"
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["head"]["encoder"]["kind"] == "static" and meta["head"]["map"] is None
    assert meta["base_model"]["layers"] == 0 and meta["validation"]["parity"]["max_abs_diff_prob"] <= 1e-4
    graph = onnx.load(str(version / "model.onnx")).graph
    assert not [n for n in graph.node if n.name.startswith("/encoder/")]  # no transformer layer left
    vectors = next(onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name == "token_vectors")
    tokenizer, full = load_encoder(default_base_model())
    val = [json.loads(line)["prompt"] for line in (exported.data / "mmlu-val.jsonl").read_text().splitlines()[:64]]
    ids = static_encoder.token_ids(tokenizer, val, 64)
    runtime = ClassifierRuntime(version, RuntimeSettings(device="cpu", precision="fp32"))
    np.testing.assert_allclose(runtime.run(val, ["pooled"])[0], static_encoder.embed(vectors, ids), atol=1e-5)
    target = predict_embeddings(full, tokenizer, val, 64)
    start = static_encoder.single_token_vectors(full, tokenizer)

    def cosine(emb: np.ndarray) -> float:
        return float(np.mean(np.sum(emb * target, 1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(target, axis=1)))

    assert cosine(static_encoder.embed(vectors, ids)) > cosine(static_encoder.embed(start, ids)) + 0.02
    # Both precisions serve it; the int8 copy quantizes the table and ranks prompts like fp32.
    assert meta["validation"]["int8_vs_fp32"]["spearman"] > 0.95
    scores, confidence = ClassifierRuntime(version, RuntimeSettings(device="cpu", precision="int8")).evaluate(val[:8])
    assert scores.shape == (8,) and np.all((confidence >= 0) & (confidence <= 1))
    for bad in (["--encoder", "static", "--encoder-layers", "3"], ["--encoder", "static", "--head", "ensemble"]):
        proc = run_module("export", "--data-dir", str(exported.data), "--model-repository", str(repo), *bad)
        assert proc.returncode == 2 and "--encoder static needs" in proc.stderr


def test_keep_layers_serves_a_lower_layer() -> None:
    """--encoder-layers N: the cut encoder's output is the full encoder's N-th layer, exactly."""
    import torch

    from export.pipeline import default_base_model, parse_args
    from export.train import keep_layers, load_encoder

    tokenizer, full = load_encoder(default_base_model())
    _, cut = load_encoder(default_base_model())
    keep_layers(cut, 4)
    assert cut.config.num_hidden_layers == 4 and len(cut.encoder.layer) == 4
    batch = tokenizer(["What is the derivative of x^2?", "Name a prime number."], padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = full(**batch, output_hidden_states=True).hidden_states[4]
        torch.testing.assert_close(cut(**batch).last_hidden_state, want)
        assert not torch.allclose(full(**batch).last_hidden_state, want)
    keep_layers(cut, 0)  # 0: all there are
    assert len(cut.encoder.layer) == 4
    with pytest.raises(ValueError, match="4 layers"):
        keep_layers(cut, 5)
    # Defaults: 5 layers mapped onto all 6 for the embedding heads on the shipped encoder; the
    # fine-tuned heads and another base model keep every layer, unmapped.
    layers = {tuple(args): (o.encoder_layers, o.map_to_full) for args in (
        [], ["--head", "knn"], ["--encoder-layers", "3"], ["--encoder-layers", "0"], ["--no-map-to-full"],
        ["--head", "ensemble"], ["--base-model", "elsewhere"]) for o in [parse_args(args)]}
    assert layers == {(): (5, True), ("--head", "knn"): (5, True), ("--encoder-layers", "3"): (3, True),
                      ("--encoder-layers", "0"): (0, False), ("--no-map-to-full",): (5, False),
                      ("--head", "ensemble"): (0, False), ("--base-model", "elsewhere"): (0, False)}
    for bad in (["--encoder-layers", "-1"], ["--encoder-layers", "0", "--map-to-full"],
                ["--head", "classifier", "--encoder-layers", "3", "--map-to-full"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_blend_head_is_the_default(exported: SimpleNamespace, tmp_path: Path) -> None:
    """The default head: the kNN vote blended with prompt features, trained on the MMLU file and
    LLMRouter's tasks (each with its own pair), calibrated on out-of-fold training scores, with a
    confidence; the recipe's cross-validated figures are recorded. The encoder is cut to 5 layers
    and its embeddings are mapped onto the full encoder's before the vote."""
    from export.onnx_head import EmbeddingHead
    from export.served_model import (FEATURE_NAMES, ClassifierRuntime, LogisticBlend, RuntimeSettings, lists_options,
                                     prompt_features)

    proc = run_module("export", "--data-dir", str(exported.data), "--model-repository", str(exported.repo),
                      "--limit-train", "256", "--limit-val", "128", "--max-length", "64")
    assert proc.returncode == 0
    assert last_json(proc.stdout)["version"] == 4 and "llmrouter-train.jsonl" in proc.stdout
    version = exported.model_dir / "4"
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["hyperparameters"]["head"] == "blend" and meta["hyperparameters"]["epochs"] == 0
    assert meta["base_model"]["layers"] == 5 and meta["head"]["map"]["from_layers"] == 5
    assert [Path(e["path"]).name for e in meta["data"]["extra_train"]] == ["llmrouter-train.jsonl"]
    n_train = meta["head"]["n_train"]
    assert n_train == 512  # 256 of each file
    assert meta["head"]["blend"]["inputs"] == ["logit(knn_score)", *FEATURE_NAMES]
    assert meta["calibration"]["n"] == n_train and "out-of-fold" in meta["calibration"]["set"]
    for protocol in ("random", "grouped"):
        for part in ("mmlu", "other"):
            assert 0.0 < meta["cv"][protocol][part]["apgr"] < 1.5
    # Held-out sources are also scored fold by fold (one model's scores pooled: export/cv.py).
    for part in ("mmlu", "other"):
        grouped = meta["cv"]["grouped"][part]
        assert grouped["per_fold"] and grouped["fold_pooled_apgr"] == pytest.approx(np.mean(grouped["per_fold"]), abs=1e-4)
    assert "fold_pooled_apgr" not in meta["cv"]["random"]["mmlu"]
    proc = run_module("export.evaluate", "--data", str(_small_val(exported, tmp_path)), "--scores",
                      str(tmp_path / "scores.jsonl"), "--model-repository", str(exported.repo), "--version", "4",
                      "--models-json", str(exported.data / "models.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = last_json(proc.stdout)["served_version_cv_apgr"]
    assert printed["grouped/other/within_folds"] == meta["cv"]["grouped"]["other"]["fold_pooled_apgr"]
    assert printed["grouped/other"] == meta["cv"]["grouped"]["other"]["apgr"] and "random/mmlu/within_folds" not in printed
    for name in ("head.npz", "head.int8.npz"):
        with np.load(version / name) as head:
            assert set(head.files) == {"blend_mean", "blend_scale", "blend_coef", "blend_intercept", "support_ref"}
            assert head["blend_coef"].shape == (1 + len(FEATURE_NAMES),)
            assert head["support_ref"].shape == (n_train,) and np.all(np.diff(head["support_ref"]) >= 0)

    runtime = ClassifierRuntime(version, RuntimeSettings(device="cpu", precision="fp32"))
    train = [json.loads(line)["prompt"] for line in (exported.data / "mmlu-train.jsonl").read_text().splitlines()[:4]]
    prompts = train + ["zxqv wlorp gnarf " * 8, "Write a Python function that reverses a linked list."]
    scores, confidence = runtime.evaluate(prompts)
    # The graph's vote and support equal the numpy head's over the graph's own index.
    model = onnx.load(str(version / "model.onnx"))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("head/")}
    # The question-only copies (the index rows after the prompts) vote only for prompts that list
    # A-D options (the 4 training prompts here), not for the 2 free-form ones.
    copies = weights["head/copy_penalty"] < 0
    assert meta["head"]["augment"] == "question-only-gated" and 0 < copies.sum() and not copies[:n_train].any()
    head = EmbeddingHead(weights["head/index_t"].T, weights["head/labels"], meta["head"]["k"], meta["head"]["ramp"],
                         copies=copies)
    pooled = runtime.run(prompts, ["pooled"])[0]
    mapped = pooled @ weights["head/map_w"] + weights["head/map_b"]
    options = lists_options(prompts)
    assert options.tolist() == [1, 1, 1, 1, 0, 0]
    vote, support = head.vote(head.embed(mapped - weights["head/center"]), options)
    graph_vote, graph_support = runtime.run(prompts, ["knn_score", "knn_support"])
    np.testing.assert_allclose(graph_vote, vote, atol=1e-5)
    np.testing.assert_allclose(graph_support, support, atol=1e-5)
    # The served score is the logistic blend of that vote and the prompt features.
    with np.load(version / "head.npz") as npz:
        coef, mean, scale, b = npz["blend_coef"], npz["blend_mean"], npz["blend_scale"], float(npz["blend_intercept"])
    x = LogisticBlend.inputs(graph_vote, prompt_features(prompts))
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-(((x - mean) / scale) @ coef + b))), atol=1e-5)
    # Training prompts (in the index) are familiar; gibberish is not.
    assert np.all((confidence >= 0) & (confidence <= 1))
    assert confidence[4] < 0.5 < confidence[:4].min(), confidence
    assert confidence[4] < confidence[5], confidence  # a code request: LLMRouter's mbpp tasks are in the index
    # The map brings the cut encoder's embeddings of prompts it was not fitted on (validation
    # prompts) towards the full encoder's: closer than the unmapped ones, by centred cosine.
    from export.train import load_encoder, predict_embeddings
    from export.pipeline import default_base_model

    val = [json.loads(line)["prompt"] for line in (exported.data / "mmlu-val.jsonl").read_text().splitlines()[:64]]
    tokenizer, full = load_encoder(default_base_model())
    target = predict_embeddings(full, tokenizer, val, 64)
    cut = runtime.run(val, ["pooled"])[0]

    def centred_cosine(x: np.ndarray) -> float:
        a, b = x - x.mean(0), target - target.mean(0)
        return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    assert centred_cosine(cut @ weights["head/map_w"]) > centred_cosine(cut) + 0.1


def _small_val(exported: SimpleNamespace, tmp_path: Path, n: int = 96) -> Path:
    lines = (exported.data / "mmlu-val.jsonl").read_text(encoding="utf-8").splitlines()
    step = max(1, len(lines) // n)  # spread over subjects
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(lines[::step][:n]) + "\n", encoding="utf-8")
    return path


def test_evaluate_scores_every_prompt_and_plots(exported: SimpleNamespace, tmp_path: Path) -> None:
    data = _small_val(exported, tmp_path)
    scores = tmp_path / "out" / "scores.jsonl"
    proc = run_module("export.evaluate", "--data", str(data), "--scores", str(scores), "--model-repository",
                      str(exported.repo), "--version", "1", "--models-json", str(exported.data / "models.json"))
    assert proc.returncode == 0
    result = last_json(proc.stdout)
    ids = [json.loads(line)["id"] for line in data.read_text().splitlines()]
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [r["id"] for r in rows] == ids
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert result["n"] == len(ids) and result["version"] == 1
    # An ensemble version reports no confidence, so neither do its scores.
    assert "unfamiliar_share" not in result and not any("confidence" in r for r in rows)
    assert {"apgr", "cpt50", "cpt80", "strong_share_at_95", "auc"} <= set(result)
    assert result["random"]["apgr"] == pytest.approx(0.5)
    png = scores.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The chat-rewrite generalization check scores the rewritten prompts (other scores, same labels).
    chat = tmp_path / "out" / "chat.jsonl"
    proc = run_module("export.evaluate", "--data", str(data), "--scores", str(chat), "--model-repository",
                      str(exported.repo), "--version", "1", "--models-json", str(exported.data / "models.json"),
                      "--rewrite", "chat")
    assert proc.returncode == 0
    chat_result = last_json(proc.stdout)
    assert chat_result["rewrite"] == "chat" and result["rewrite"] == "none" and chat_result["n"] == len(ids)
    chat_scores = [json.loads(line)["score"] for line in chat.read_text().splitlines()]
    assert chat_scores != [r["score"] for r in rows]
    # the length baseline measures the rewritten prompts, which are longer or shorter than the originals
    assert chat_result["prompt_length"] != result["prompt_length"]


def test_score_prompts_keeps_each_prompt_its_own_score_and_confidence() -> None:
    """Prompts are scored in batches sorted by length; every score and confidence goes back to its
    prompt. A version exported before the confidence (its model.py has `score` alone) has none."""
    from export.evaluate import score_prompts

    class Served:
        def evaluate(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            return np.array([len(t) for t in texts], np.float32), np.array([len(t) / 10 for t in texts], np.float32)

    class Older:
        def score(self, texts: list[str]) -> np.ndarray:
            return np.array([len(t) for t in texts], np.float32)

    prompts = ["x" * n for n in (5, 1, 9, 3, 7)]
    scores, confidence = score_prompts(Served(), prompts, batch=2)
    assert scores.tolist() == [5, 1, 9, 3, 7] and confidence is not None
    np.testing.assert_allclose(confidence, [0.5, 0.1, 0.9, 0.3, 0.7], rtol=1e-6)
    scores, confidence = score_prompts(Older(), prompts, batch=2)
    assert scores.tolist() == [5, 1, 9, 3, 7] and confidence is None


def test_evaluate_reports_the_unfamiliar_share(model_repo: Path, tmp_path: Path) -> None:
    """The default head reports a confidence per prompt; `make eval` gives each and the share below
    UNFAMILIAR_BELOW, the one the router's dashboard and alert watch in production."""
    data = _small_val(SimpleNamespace(data=_routing_dir()), tmp_path, n=48)
    scores = tmp_path / "scores.jsonl"
    proc = run_module("export.evaluate", "--data", str(data), "--scores", str(scores), "--model-repository",
                      str(model_repo), "--models-json", str(_routing_dir() / "models.json"))
    assert proc.returncode == 0, proc.stderr
    result = last_json(proc.stdout)
    confidences = [json.loads(line)["confidence"] for line in scores.read_text().splitlines()]
    assert len(confidences) == result["n"] == 48 and all(0.0 <= c <= 1.0 for c in confidences)
    share = sum(c < UNFAMILIAR_BELOW for c in confidences) / len(confidences)
    assert result["unfamiliar_share"] == pytest.approx(share, abs=1e-4)
    assert f"{share:.1%} of the prompts are unfamiliar" in proc.stdout


def _prompts(exported: SimpleNamespace, n: int = 32) -> list[str]:
    lines = (exported.data / "mmlu-val.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines[:: max(1, len(lines) // n)][:n]]
    return prompts + ["", "short?", "x " * 400]  # empty, tiny and longer than max_length


def test_batch_scores_equal_one_by_one(exported: SimpleNamespace) -> None:
    from export.evaluate import load_runtime

    runtime = load_runtime(exported.model_dir / "1")
    prompts = _prompts(exported)
    feeds = runtime.encode(prompts)
    widths = [len(runtime.encode([p])["input_ids"][0]) for p in prompts]
    assert feeds["input_ids"].shape == (len(prompts), max(widths))  # padded to the longest only
    assert max(widths) == runtime.max_length  # truncation to metadata's max_length
    batch = runtime.score(prompts)
    single = np.concatenate([runtime.score([p]) for p in prompts])
    assert batch.dtype == np.float32 and batch.shape == (len(prompts),)
    assert np.all((batch >= 0) & (batch <= 1))
    # Each branch's score is batch-independent to float32 rounding (sums over differently padded
    # rows round differently, ~1e-7); the rank blend multiplies such differences by the slope of
    # the reference ranks, steep with this test's 128 reference prompts.
    singles = [runtime.components([p]) for p in prompts]
    for i, part in enumerate(runtime.components(prompts)):
        assert part is not None
        assert np.max(np.abs(part - np.concatenate([s[i] for s in singles]))) <= 1e-5
    assert np.max(np.abs(batch - single)) <= 1e-4


class _FakeTensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def as_numpy(self) -> np.ndarray:
        return self._array


class _FakeResponse:
    def __init__(self, output_tensors: list[_FakeTensor], error: Any = None):
        self.output_tensors, self.error = output_tensors, error


def _fake_pb_utils() -> SimpleNamespace:
    def get_input_tensor_by_name(request: dict[str, _FakeTensor], name: str) -> _FakeTensor | None:
        return request.get(name)

    return SimpleNamespace(Tensor=_FakeTensor, InferenceResponse=_FakeResponse, TritonError=str,
                           get_input_tensor_by_name=get_input_tensor_by_name)


def test_triton_execute_batches_requests_in_one_run(exported: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The template's TritonPythonModel with a stand-in for triton_python_backend_utils."""
    from export.evaluate import load_served_module

    version = exported.model_dir / "1"
    module = load_served_module(version)
    monkeypatch.setattr(module, "pb_utils", _fake_pb_utils())
    monkeypatch.setattr(module, "__file__", str(version / "model.py"))
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"parameters": {"device": {"string_value": "cpu"}}})})
    calls: list[int] = []
    evaluate = model.runtime.evaluate
    monkeypatch.setattr(model.runtime, "evaluate", lambda texts: calls.append(len(texts)) or evaluate(texts))

    prompts = _prompts(exported, 8)
    requests = [
        {"text": _FakeTensor("text", np.array([[prompts[0].encode()]], dtype=object))},
        {"text": _FakeTensor("text", np.array([[p.encode()] for p in prompts[1:4]], dtype=object))},
        {},  # malformed: gets its own error, the others still succeed
        {"text": _FakeTensor("text", np.array([[prompts[4]]], dtype=object))},  # str, not bytes
    ]
    responses = model.execute(requests)
    assert calls == [5]
    assert len(responses) == 4 and responses[2].error and not responses[0].error
    outputs = [r.output_tensors[0].as_numpy() for i, r in enumerate(responses) if i != 2]
    for out in outputs:  # what Triton 2.51's stub handles safely: owned, contiguous, native float32
        assert out.dtype == np.dtype("=f4") and out.flags.c_contiguous and out.flags.owndata and out.ndim == 2
    got = np.concatenate(outputs)
    assert got.shape == (5, 1)
    np.testing.assert_allclose(got[:, 0], model.runtime.score(prompts[:5]), atol=1e-5)


class _FakeRequest(dict):
    """A request that names its outputs, like pb_utils.InferenceRequest.requested_output_names()."""

    def __init__(self, text: np.ndarray, outputs: list[str]):
        super().__init__(text=_FakeTensor("text", text))
        self._outputs = outputs

    def requested_output_names(self) -> list[str]:
        return list(self._outputs)


def _triton_model(version: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from export.evaluate import load_served_module

    module = load_served_module(version)
    monkeypatch.setattr(module, "pb_utils", _fake_pb_utils())
    monkeypatch.setattr(module, "__file__", str(version / "model.py"))
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"parameters": {"device": {"string_value": "cpu"}}})})
    return model


@pytest.mark.parametrize("version", ["1", "2", "3", "4"])  # ensemble, classifier-only, kNN head alone, blend
def test_triton_serves_strong_share_and_calibration(exported: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                                    version: str) -> None:
    # Versions 2, 3 and 4 come from earlier tests in this file.
    assert (exported.model_dir / version).is_dir(), f"run this module whole: version {version} is made by an earlier test"
    vdir = exported.model_dir / version
    model = _triton_model(vdir, monkeypatch)
    calls: list[int] = []
    score = model.runtime.score
    evaluate = model.runtime.evaluate
    monkeypatch.setattr(model.runtime, "evaluate", lambda texts: calls.append(len(texts)) or evaluate(texts))
    prompts = _prompts(exported, 8)
    calib = np.load(model.runtime.calibration_path).astype(np.float32)  # the CPU-served precision's
    assert model.runtime.precision == ("int8" if version in ("1", "4") else "fp32")
    meta = json.loads((vdir / "metadata.json").read_text())

    requests = [
        _FakeRequest(np.array([[p.encode()] for p in prompts[:3]], dtype=object), ["score", "strong_share"]),
        _FakeRequest(np.array([[b""]], dtype=object), ["calibration"]),  # the router's periodic ask
        _FakeRequest(np.array([[prompts[3].encode()]], dtype=object), ["strong_share"]),
        _FakeRequest(np.array([[prompts[4].encode()]], dtype=object), ["score", "confidence"]),
    ]
    responses = model.execute(requests)
    assert calls == [5]  # one model run; the calibration-only request needs none
    assert not any(r.error for r in responses)
    names = [[t._name for t in r.output_tensors] for r in responses]
    assert names == [["score", "strong_share"], ["calibration"], ["strong_share"], ["score", "confidence"]]
    confidence = responses[3].output_tensors[1].as_numpy()[0, 0]
    if version == "4":  # the blend head knows how familiar a prompt is
        assert 0.0 <= confidence <= 1.0
        assert confidence == pytest.approx(float(evaluate([prompts[4]])[1][0]), abs=1e-6)
    else:
        assert np.isnan(confidence)  # older heads: unknown
    for r in responses:
        for t in r.output_tensors:
            out = t.as_numpy()
            assert out.dtype == np.dtype("=f4") and out.flags.c_contiguous and out.flags.owndata and out.ndim == 2

    scores = score(prompts[:5])
    got_scores = responses[0].output_tensors[0].as_numpy()[:, 0]
    np.testing.assert_allclose(got_scores, scores[:3], atol=1e-6)  # score unchanged by the extra output
    shares = np.r_[responses[0].output_tensors[1].as_numpy()[:, 0], responses[2].output_tensors[0].as_numpy()[:, 0]]
    expected = np.array([np.mean(calib >= s) for s in scores[:4]], dtype=np.float32)
    np.testing.assert_allclose(shares, expected, atol=1e-6)
    assert np.all((shares >= 0) & (shares <= 1))

    thresholds = responses[1].output_tensors[0].as_numpy()
    assert thresholds.shape == (1, 9)
    assert np.all(np.diff(thresholds[0]) <= 0)  # a larger strong share needs a lower threshold
    for k, thr in enumerate(thresholds[0], start=1):
        assert np.mean(calib >= thr) == pytest.approx(k / 10, abs=1.5 / len(calib))
        assert meta["validation"]["score_threshold_for_strong_share"][f"{k * 10}%"] == pytest.approx(float(thr), abs=1e-6)
    # The quality/cost curve: the validation prompts' quality (a fraction of the strong model's)
    # when each calibration share of them, highest scores first, goes strong.
    runs = len(calls)
    quality = model.execute([_FakeRequest(np.array([[b""]], dtype=object), ["calibration_shares", "calibration_quality"])])
    assert len(calls) == runs  # no model run for it
    shares_out, quality_out = (t.as_numpy()[0] for t in quality[0].output_tensors)
    rows = [json.loads(line) for line in (exported.data / "mmlu-val.jsonl").read_text().splitlines()[:128]]
    weak, strong = (np.array([r["scores"][m] for r in rows]) for m in ("mixtral-8x7b-instruct-v0.1", "gpt-4-1106-preview"))
    expected = metrics.quality_curve(score([r["prompt"] for r in rows]), weak, strong, shares_out) / strong.mean()
    np.testing.assert_allclose(quality_out, expected, atol=1e-4)
    np.testing.assert_allclose(quality_out, meta["validation"]["quality_at_calibration_shares"], atol=1e-6)
    del model.runtime.metadata["validation"]["quality_at_calibration_shares"]  # as in versions exported before it
    assert np.isnan(model.runtime.quality()).all()
    if version == "4":  # out-of-fold scores of the training prompts (both files), not the validation prompts
        assert meta["calibration"]["n"] == len(calib) == meta["head"]["n_train"]
        return
    # The calibration is the served scores of the validation prompts: the val scores reproduce it.
    val = [json.loads(line)["prompt"] for line in (exported.data / "mmlu-val.jsonl").read_text().splitlines()[:128]]
    np.testing.assert_allclose(np.sort(score(val)), calib, atol=1e-5)


def test_calibration_math() -> None:
    from export.served_model import Calibration

    cal = Calibration(np.arange(100, dtype=np.float32)[::-1] / 100)  # 0.00 … 0.99, any order
    np.testing.assert_allclose(cal.strong_share(np.array([0.0, 0.5, 0.99, 1.5, -1.0])), [1.0, 0.5, 0.01, 0.0, 1.0])
    thresholds = cal.thresholds()
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], atol=1e-6)
    # Routing strong iff strong_share <= s sends exactly s of the calibration set strong.
    for k, thr in enumerate(thresholds, start=1):
        assert np.mean(cal.strong_share(cal.sorted) <= k / 10) == pytest.approx(k / 10)
        assert np.mean(cal.sorted >= thr) == pytest.approx(k / 10)


def test_runtime_device_choice() -> None:
    from export.served_model import ClassifierRuntime, RuntimeSettings, settings_from_config

    cpu_only = ["CPUExecutionProvider"]
    assert ClassifierRuntime._providers(RuntimeSettings("auto"), cpu_only) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError):
        ClassifierRuntime._providers(RuntimeSettings("cuda"), cpu_only)
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ClassifierRuntime._providers(RuntimeSettings("auto"), gpu)[0][0] == "CUDAExecutionProvider"
    assert ClassifierRuntime._providers(RuntimeSettings("cpu"), gpu) == ["CPUExecutionProvider"]
    config = {"parameters": {"device": {"string_value": "cpu"}, "intra_op_threads": {"string_value": "3"}}}
    assert settings_from_config(config, {}) == RuntimeSettings("cpu", 3)
    assert settings_from_config(config, {"ROUTER_CLASSIFIER_THREADS": "1"}).intra_op_threads == 1
    assert settings_from_config(config, {"ROUTER_CLASSIFIER_PRECISION": "fp32"}).precision == "fp32"
    assert settings_from_config(config, {"ROUTER_CLASSIFIER_PROMPT_WORKERS": "2"}).prompt_workers == 2
    assert settings_from_config(config, {}).lone_prompt_threads == 0
    assert settings_from_config(config, {"ROUTER_CLASSIFIER_LONE_PROMPT_THREADS": "3"}).lone_prompt_threads == 3


def test_classifier_threads_follow_a_cgroup_cpu_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In a pod the affinity mask shows the node's cores; the CPU limit (cgroup v2 cpu.max) is what
    the intra-op threads and the prompt workers must share."""
    from export import served_model

    model = served_model._model
    cpu_max, real_path = tmp_path / "cpu.max", model.Path
    monkeypatch.setattr(model, "Path", lambda p: cpu_max if p == "/sys/fs/cgroup/cpu.max" else real_path(p))
    affinity = len(os.sched_getaffinity(0))
    assert model._cores() == affinity  # no cgroup file
    cpu_max.write_text("max 100000\n")
    assert model._cores() == affinity
    cpu_max.write_text("50000 100000\n")  # half a core: one
    assert model._cores() == 1 and model._auto_threads() == 1
    cpu_max.write_text("150000 100000\n")  # 1.5 cores: two, if the mask has them
    assert model._cores() == min(affinity, 2)


def test_ensemble_version_without_rank_references_is_refused(exported: SimpleNamespace, tmp_path: Path) -> None:
    """The graph returns both branch scores; without head[.int8].npz there is nothing to blend them with."""
    from export.served_model import ClassifierRuntime, RuntimeSettings

    version = tmp_path / "1"
    shutil.copytree(exported.model_dir / "1", version)
    (version / "head.int8.npz").unlink()
    with pytest.raises(RuntimeError, match="rank references"):
        ClassifierRuntime(version, RuntimeSettings(device="cpu", precision="int8"))
    assert ClassifierRuntime(version, RuntimeSettings(device="cpu", precision="fp32")).blend is not None


def test_runtime_precision_choice(exported: SimpleNamespace) -> None:
    from export.served_model import ClassifierRuntime, RuntimeSettings

    both = {"precision": "int8", "precisions": ["fp32", "int8"]}
    choose = ClassifierRuntime.choose_precision
    assert choose("auto", both, on_gpu=False) == "int8" and choose("auto", both, on_gpu=True) == "fp32"
    assert choose("FP32", both, on_gpu=False) == "fp32" and choose("int8", both, on_gpu=True) == "int8"
    assert choose("auto", {"precision": "fp32", "precisions": ["fp32"]}, on_gpu=False) == "fp32"
    with pytest.raises(ValueError):
        choose("int8", {"precisions": ["fp32"]}, on_gpu=False)
    with pytest.raises(ValueError):
        choose("fp16", both, on_gpu=False)
    # the real version: int8 prompt by prompt on CPU; fp32 on request, batched, same ranking
    version = exported.model_dir / "1"
    int8 = ClassifierRuntime(version, RuntimeSettings(device="cpu"))
    fp32 = ClassifierRuntime(version, RuntimeSettings(device="cpu", precision="fp32"))
    assert (int8.precision, int8.per_prompt, fp32.precision, fp32.per_prompt) == ("int8", True, "fp32", False)
    assert [o.name for o in int8.session.get_outputs()] == [o.name for o in fp32.session.get_outputs()]
    prompts = _prompts(exported, 16)
    from export.metrics import spearman

    assert spearman(int8.score(prompts), fp32.score(prompts)) > 0.5
    # The prompts of a batch run side by side, each alone in its run: the same scores in the same
    # order as one worker, and as each prompt sent alone.
    one_by_one = ClassifierRuntime(version, RuntimeSettings(device="cpu", prompt_workers=1))  # lone session off
    side_by_side = ClassifierRuntime(version, RuntimeSettings(device="cpu", intra_op_threads=1, prompt_workers=4,
                                                              lone_prompt_threads=2))
    assert one_by_one._prompt_pool is None and side_by_side._prompt_pool is not None
    assert one_by_one._lone_session is None and side_by_side.lone_prompt_threads == 2
    lone_runs = _CountingSession(side_by_side._lone_session)
    side_by_side._lone_session = lone_runs
    batch, alone = side_by_side.evaluate(prompts), one_by_one.evaluate(prompts)
    np.testing.assert_array_equal(batch[0], alone[0])
    np.testing.assert_array_equal(batch[1], alone[1])
    assert lone_runs.runs == 0  # a batch's prompts stay on the one-thread session, side by side
    # A prompt sent alone runs on the many-thread session, with the same score.
    np.testing.assert_array_equal(batch[0], np.concatenate([side_by_side.score([p]) for p in prompts]))
    assert lone_runs.runs == len(prompts)
    side_by_side.close()


class _CountingSession:
    """An onnxruntime session that counts its runs."""

    def __init__(self, session: Any):
        self.session, self.runs = session, 0

    def run(self, *args: Any) -> Any:
        self.runs += 1
        return self.session.run(*args)

    def get_session_options(self) -> Any:
        return self.session.get_session_options()


def _made_up_routing_data(path: Path) -> Path:
    """Two differently named models; the strong one wins on prompts about integrals."""
    rng = random.Random(0)
    topics = ["the integral of x^2", "a contour integral", "the capital of France", "a haiku about rain",
              "the integral of sin(x)", "the colour of the sky", "an improper integral", "a greeting in Spanish"]
    path.mkdir(parents=True)
    models = {"weak": "tiny-local", "strong": "big-remote",
              "models": {"tiny-local": {"usd_per_1m_input_tokens": 0.01, "usd_per_1m_output_tokens": 0.01},
                         "big-remote": {"usd_per_1m_input_tokens": 5.0, "usd_per_1m_output_tokens": 15.0}}}
    (path / "models.json").write_text(json.dumps(models))
    for name, n in (("train.jsonl", 160), ("val.jsonl", 48)):
        with (path / name).open("w") as fh:
            for i in range(n):
                topic = rng.choice(topics)
                hard = "integral" in topic
                weak = float(rng.random() < (0.2 if hard else 0.9))
                strong = float(rng.random() < 0.9)
                fh.write(json.dumps({"id": f"{name}-{i}", "source": "made-up", "prompt": f"Question {i}: explain {topic}.",
                                     "scores": {"tiny-local": weak, "big-remote": strong}}) + "\n")
    return path


def test_bring_your_own_data(tmp_path: Path) -> None:
    data = _made_up_routing_data(tmp_path / "data")
    repo = fresh_repository(tmp_path)
    proc = run_module("export", "--train", str(data / "train.jsonl"), "--val", str(data / "val.jsonl"),
                      "--models-json", str(data / "models.json"), "--model-repository", str(repo),
                      "--max-length", "32")  # the default head (blend), on the user's file alone
    assert proc.returncode == 0
    summary = last_json(proc.stdout)
    meta = json.loads((repo / MODEL_NAME / "1" / "metadata.json").read_text())
    assert meta["models"] == {"weak": "tiny-local", "strong": "big-remote"}
    assert "big-remote" in meta["label_definition"]
    assert meta["data"]["extra_train"] == []  # a user's own file is not mixed with the shipped data
    assert summary["n"] == 48
    assert summary["apgr"] > 0.6  # the made-up signal (integrals need the strong model) is learned

    scores = tmp_path / "scores.jsonl"
    proc = run_module("export.evaluate", "--data", str(data / "val.jsonl"), "--scores", str(scores),
                      "--model-repository", str(repo))
    assert proc.returncode == 0
    assert len(scores.read_text().splitlines()) == 48 and scores.with_suffix(".png").is_file()
    assert last_json(proc.stdout)["n"] == 48


def test_export_rejects_unknown_model_names(tmp_path: Path) -> None:
    data = _made_up_routing_data(tmp_path / "data")
    (data / "models.json").write_text(json.dumps({"weak": "tiny-local", "strong": "nonexistent"}))
    repo = fresh_repository(tmp_path)
    proc = run_module("export", "--train", str(data / "train.jsonl"), "--val", str(data / "val.jsonl"),
                      "--models-json", str(data / "models.json"), "--model-repository", str(repo))
    assert proc.returncode == 1 and "nonexistent" in proc.stderr
    assert repository.list_versions(repo / MODEL_NAME, complete_only=False) == []


def test_chat_rewrite_is_free_form_and_deterministic() -> None:
    from export.data import CHAT_TEMPLATES, chat_rewrite, split_choices

    prompt = "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"
    assert split_choices(prompt) == ("Which is a prime?", ["4", "6", "7", "9"])
    assert split_choices("Write a haiku.") == ("Write a haiku.", [])
    rewrites = {chat_rewrite(prompt, f"id-{i}") for i in range(60)}
    assert len(rewrites) == len(CHAT_TEMPLATES)  # every template gets used
    for text in rewrites:
        assert "Which is a prime?" in text and "Answer:" not in text and "\nA." not in text
    assert any("4, 6, 7 or 9" in text for text in rewrites)  # options inlined where a template names them
    assert chat_rewrite(prompt, "id-7") == chat_rewrite(prompt, "id-7")
    # no options to inline: a template that needs them falls back to one that does not
    assert all("{options}" not in chat_rewrite("Write a haiku.", f"id-{i}") for i in range(60))


def test_strip_choices() -> None:
    from export.data import strip_choices

    prompt = "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"
    assert strip_choices(prompt) == "Which is a prime?"
    for free_form in ("Write a haiku about rain.", "Plan A. then B.\nAnswer: later", ""):
        assert strip_choices(free_form) == free_form


@pytest.mark.parametrize("ramp", ["0", "1.5"])
def test_cv_cli_refuses_a_ramp_outside_0_1(tmp_path: Path, ramp: str) -> None:
    """`make cv CV_ARGS="--ramp R"` takes what `make export`'s --knn-ramp takes, and says so before it
    loads any data."""
    proc = subprocess.run([sys.executable, "-m", "export.cv", "--ramp", ramp, "--out", str(tmp_path / "cv.json")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--ramp R needs 0 < R <= 1" in proc.stderr
    assert not (tmp_path / "cv.json").exists()


def test_cv_cli_reports_every_column_and_scores_each_validation_file(tmp_path: Path) -> None:
    """`make cv` end to end on a small sample of the routing files: every candidate gets every CV
    and validation column, and each validation file is scored as itself, row for row (the length
    candidate's figure equals the APGR of the file's own prompt lengths)."""
    src, data = _routing_dir(), tmp_path / "data"
    data.mkdir()
    take = {"mmlu-train.jsonl": slice(0, None, 80), "llmrouter-train.jsonl": slice(0, 100),
            "mmlu-val.jsonl": slice(0, 40), "llmrouter-val.jsonl": slice(0, 40), "zeroeval-ood.jsonl": slice(0, None, 40)}
    for name, rows in take.items():
        (data / name).write_text("".join((src / name).read_text().splitlines(keepends=True)[rows]))
    for name in ("models.json", "llmrouter-models.json", "zeroeval-models.json"):
        shutil.copy2(src / name, data / name)
    proc = subprocess.run([sys.executable, "-m", "export.cv", "--data-dir", str(data), "--only", "length", "knn+length",
                           "--k", "20", "--max-length", "32", "--out", str(tmp_path / "cv.json")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ">> knn+length: held-out source folds" in proc.stdout
    results = json.loads((tmp_path / "cv.json").read_text())
    assert set(results) == {"length", "knn+length"}
    columns = {"cv_random_mmlu", "cv_subject_mmlu", "cv_source_mmlu", "cv_source_llmrouter", "val_mmlu-val",
               "val_llmrouter-val", "val_zeroeval-ood"}
    for row in results.values():
        assert columns <= set(row) and all(0.0 <= row[c]["apgr"] <= 1.0 for c in columns)
    models = {"mmlu-val": "models.json", "llmrouter-val": "llmrouter-models.json", "zeroeval-ood": "zeroeval-models.json"}
    for name, models_json in models.items():
        rows = load_routing_set(data / f"{name}.jsonl", load_models(data / models_json))
        expected = metrics.routing_metrics([len(p) for p in rows.prompts], rows.weak, rows.strong).apgr
        assert results["length"][f"val_{name}"]["n"] == len(rows.prompts)
        assert results["length"][f"val_{name}"]["apgr"] == pytest.approx(expected, abs=1e-4)
