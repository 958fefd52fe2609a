"""The served scoring head (numpy) and the ONNX merge behind the ensemble, on small hand-made cases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.onnx_export import merge_encoders
from export.triton_classifier_model import EmbeddingHead, rank_in, rank_table


def test_rank_in_interpolates_between_reference_ranks() -> None:
    ref = np.array([1.0, 2.0, 3.0, 4.0])  # ranks (i + 0.5) / 4: 0.125, 0.375, 0.625, 0.875
    got = rank_in(rank_table(ref), np.array([1.0, 2.5, 4.0, 0.0, 9.0]))
    np.testing.assert_allclose(got, [0.125, 0.5, 0.875, 0.125, 0.875])  # flat beyond the ends


def test_rank_in_gives_tied_reference_values_their_average_rank() -> None:
    ref = np.array([1.0, 1.0, 2.0])  # the two 1.0s hold ranks 0.5/3 and 1.5/3: average 1/3
    np.testing.assert_allclose(rank_in(rank_table(ref), np.array([1.0, 2.0])), [1 / 3, 2.5 / 3])
    with pytest.raises(ValueError):
        rank_table(np.array([]))


def _index() -> tuple[np.ndarray, np.ndarray]:
    # three unit vectors along the axes, labels 0, 0.5, 1
    return np.eye(3, dtype=np.float32), np.array([0.0, 0.5, 1.0], dtype=np.float32)


def test_knn_head_votes_with_the_nearest_labels() -> None:
    emb, labels = _index()
    head = EmbeddingHead(emb, labels, k=1)
    pooled = np.array([[0.1, 0.0, 2.0], [3.0, 0.2, 0.0]], dtype=np.float32)  # nearest: axis 2, axis 0
    np.testing.assert_allclose(head.score_embeddings(pooled), [1.0, 0.0])
    assert head.dim == 3
    knn, clf = head.components(pooled)
    assert clf is None and knn.tolist() == [1.0, 0.0]


def test_ensemble_blends_branch_ranks() -> None:
    emb, labels = _index()
    # classifier logits = the fine-tuned embedding itself: class 0 weak better, 1 tie, 2 strong better
    clf_w, clf_b = np.eye(3), np.zeros(3)
    knn_ref, clf_ref = np.array([0.0, 0.5, 1.0]), np.array([-0.5, 0.0, 0.5])
    head = EmbeddingHead(emb, labels, k=1, knn_weight=0.25, clf_w=clf_w, clf_b=clf_b, knn_ref=knn_ref, clf_ref=clf_ref)
    assert head.dim == 6
    tuned = np.array([[0.0, 0.0, 0.0], [np.log(3.0), 0.0, 0.0]])  # P = 1/3 each; P = (3/5, 1/5, 1/5)
    pooled = np.hstack([np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), tuned]).astype(np.float32)
    knn, clf = head.components(pooled)
    np.testing.assert_allclose(knn, [0.5, 0.0])
    np.testing.assert_allclose(clf, [0.0, -0.4], atol=1e-6)
    # ranks: kNN 0.5 -> 0.5, 0.0 -> 1/6; classifier 0.0 -> 0.5, and -0.4 lies a fifth of the way
    # from -0.5 (rank 1/6) to 0.0 (rank 1/2): 1/6 + (1/5)(1/3) = 7/30
    expected = [0.25 * 0.5 + 0.75 * 0.5, 0.25 / 6 + 0.75 * 7 / 30]
    np.testing.assert_allclose(head.score_embeddings(pooled), expected, atol=1e-6)


def test_ensemble_head_rejects_a_misshaped_classifier_and_needs_references() -> None:
    emb, labels = _index()
    with pytest.raises(ValueError):
        EmbeddingHead(emb, labels, k=1, clf_w=np.zeros((2, 3)), clf_b=np.zeros(2))
    head = EmbeddingHead(emb, labels, k=1, knn_weight=0.5, clf_w=np.eye(3), clf_b=np.zeros(3))
    with pytest.raises(RuntimeError):
        head.score_embeddings(np.ones((1, 6), dtype=np.float32))


def _mlp(path: Path, w1: np.ndarray, w2: np.ndarray) -> None:
    """x -> MatMul(w1) -> Relu -> MatMul(w2) -> y: a two-layer stand-in for an encoder."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="l1"), helper.make_node("Relu", ["h"], ["r"], name="act"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="l2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_merge_encoders_shares_the_frozen_trunk(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 3)).astype(np.float32)  # "frozen": the same in both
    w2, w2_tuned = (rng.normal(size=(3, 2)).astype(np.float32) for _ in range(2))
    _mlp(tmp_path / "base.onnx", w1, w2)
    _mlp(tmp_path / "tuned.onnx", w1.copy(), w2_tuned)
    counts = merge_encoders(tmp_path / "base.onnx", tmp_path / "tuned.onnx", tmp_path / "merged.onnx", "y_tuned")
    # 6 nodes in; the tuned copy's l1 and Relu are merged away; + 1 Identity naming the new output
    assert counts == {"nodes_before": 6, "nodes_after": 5, "shared_initializers": 1}
    merged = onnx.load(str(tmp_path / "merged.onnx"))
    assert [o.name for o in merged.graph.output] == ["y", "y_tuned"]
    assert len(merged.graph.initializer) == 3  # w1 once, both w2s
    x = rng.normal(size=(5, 4)).astype(np.float32)
    y, y_tuned = ort.InferenceSession(str(tmp_path / "merged.onnx")).run(None, {"x": x})
    r = np.maximum(x @ w1, 0)
    np.testing.assert_allclose(y, r @ w2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_tuned, r @ w2_tuned, rtol=1e-5, atol=1e-6)


def test_merge_encoders_keeps_unfrozen_layers_apart(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w1, w1_tuned, w2 = (rng.normal(size=s).astype(np.float32) for s in ((4, 3), (4, 3), (3, 2)))
    _mlp(tmp_path / "base.onnx", w1, w2)
    _mlp(tmp_path / "tuned.onnx", w1_tuned, w2.copy())  # same last weights, but on different inputs
    counts = merge_encoders(tmp_path / "base.onnx", tmp_path / "tuned.onnx", tmp_path / "merged.onnx", "y_tuned")
    assert counts["nodes_after"] == 7 and counts["shared_initializers"] == 1
    x = rng.normal(size=(2, 4)).astype(np.float32)
    y, y_tuned = ort.InferenceSession(str(tmp_path / "merged.onnx")).run(None, {"x": x})
    np.testing.assert_allclose(y_tuned, np.maximum(x @ w1_tuned, 0) @ w2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, np.maximum(x @ w1, 0) @ w2, rtol=1e-5, atol=1e-6)
