"""The scoring head (numpy reference and the ONNX graph it is served as) and the ONNX merge behind
the ensemble, on small hand-made cases."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.onnx_export import merge_encoders
from export import metrics
from export.metrics import spearman
from export import cv
from export.onnx_head import INDEX_CODE_MAX, EmbeddingHead, attach_head, quantize_rows, ridge_map
from export.served_model import RankBlend, lists_options, prompt_features, rank_in, rank_table


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
    assert head.dim == 3
    knn, clf = head.components(pooled)
    assert clf is None and knn.tolist() == [1.0, 0.0]


def test_centred_head_subtracts_the_index_mean_from_index_and_query() -> None:
    emb = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, 2.0]], dtype=np.float32)
    labels = np.array([1.0, 0.0], dtype=np.float32)
    query = np.array([[1.0, 0.3, 3.0]], dtype=np.float32)
    plain, centred = EmbeddingHead(emb, labels, k=1), EmbeddingHead(emb, labels, k=1, center=True)
    np.testing.assert_allclose(centred.center, [0.5, 0.5, 6.0])
    # raw cosine: 31 / 10.05 for row 0 against 6.3 / 2.24 for row 1, so row 0 (label 1) is nearest;
    # centred on (0.5, 0.5, 6) the query (0.5, -0.2, -3) points with row 1's (-0.5, 0.5, -4)
    assert plain.components(query)[0].tolist() == [1.0]
    assert centred.components(query)[0].tolist() == [0.0]
    np.testing.assert_allclose(centred.embeddings, [[0.123, -0.123, 0.985], [-0.123, 0.123, -0.985]], atol=1e-3)


def test_ensemble_blends_branch_ranks() -> None:
    emb, labels = _index()
    # classifier logits = the fine-tuned embedding itself: class 0 weak better, 1 tie, 2 strong better
    clf_w, clf_b = np.eye(3), np.zeros(3)
    knn_ref, clf_ref = np.array([0.0, 0.5, 1.0]), np.array([-0.5, 0.0, 0.5])
    head = EmbeddingHead(emb, labels, k=1, clf_w=clf_w, clf_b=clf_b)
    assert head.dim == 6
    tuned = np.array([[0.0, 0.0, 0.0], [np.log(3.0), 0.0, 0.0]])  # P = 1/3 each; P = (3/5, 1/5, 1/5)
    pooled = np.hstack([np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), tuned]).astype(np.float32)
    knn, clf = head.components(pooled)
    np.testing.assert_allclose(knn, [0.5, 0.0])
    np.testing.assert_allclose(clf, [0.0, -0.4], atol=1e-6)
    # ranks: kNN 0.5 -> 0.5, 0.0 -> 1/6; classifier 0.0 -> 0.5, and -0.4 lies a fifth of the way
    # from -0.5 (rank 1/6) to 0.0 (rank 1/2): 1/6 + (1/5)(1/3) = 7/30
    expected = [0.25 * 0.5 + 0.75 * 0.5, 0.25 / 6 + 0.75 * 7 / 30]
    np.testing.assert_allclose(RankBlend(0.25, knn_ref, clf_ref)(knn, clf), expected, atol=1e-6)


def test_ensemble_head_rejects_a_misshaped_classifier() -> None:
    emb, labels = _index()
    with pytest.raises(ValueError):
        EmbeddingHead(emb, labels, k=1, clf_w=np.zeros((2, 3)), clf_b=np.zeros(2))


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


def _token_encoder(path: Path, tables: dict[str, np.ndarray]) -> None:
    """input_ids -> Gather(table) per output: a stand-in encoder whose hidden states are token vectors."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"])
              for n in ("input_ids", "attention_mask")]
    nodes = [helper.make_node("Gather", [f"{name}/table", "input_ids"], [name], name=name) for name in tables]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", "sequence_length", t.shape[1]])
               for name, t in tables.items()]
    graph = helper.make_graph(nodes, "encoder", inputs, outputs,
                              [numpy_helper.from_array(t, f"{name}/table") for name, t in tables.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _mean_pool(table: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    h = table[ids] * mask[:, :, None]
    return h.sum(axis=1) / mask.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n_index, k, center, project", [(60, 7, False, False), (60, 7, True, False),
                                                         (5, 9, True, False), (60, 7, True, True)])
def test_attached_graph_head_matches_the_numpy_head(tmp_path: Path, n_index: int, k: int, center: bool,
                                                    project: bool) -> None:
    """The ramped vote, raw and centred; fewer index rows than k + 1; with a linear map first."""
    rng = np.random.default_rng(n_index)
    dim, vocab = 8, 30
    base, tuned = (rng.normal(size=(vocab, dim)).astype(np.float32) for _ in range(2))
    _token_encoder(tmp_path / "enc.onnx", {"last_hidden_state": base, "ft_last_hidden_state": tuned})
    index = rng.normal(size=(n_index, dim)).astype(np.float32)
    labels = rng.choice([0.0, 0.5, 1.0], size=n_index).astype(np.float32)
    clf_w, clf_b = rng.normal(size=(3, dim)), rng.normal(size=3)
    ids = rng.integers(1, vocab, size=(6, 5))
    mask = np.ones_like(ids)
    mask[1, 3:] = 0  # padded rows: pooling must ignore the padding
    mask[4, 1:] = 0
    pooled = np.hstack([_mean_pool(base, ids, mask), _mean_pool(tuned, ids, mask)])
    index += 2.0  # a shared offset, as real sentence embeddings have: centring changes the neighbours
    projection = (rng.normal(size=(dim, dim)).astype(np.float32), rng.normal(size=dim).astype(np.float32)) \
        if project else None
    head = EmbeddingHead(index, labels, k=k, ramp=0.25, clf_w=clf_w, clf_b=clf_b, center=center,
                         projection=projection)
    attach_head(tmp_path / "enc.onnx", tmp_path / "model.onnx", head)
    initializers = {i.name for i in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    assert ("head/center" in initializers) == center and ("head/map_w" in initializers) == project
    if project:  # index and queries are mapped alike, and the map changes which index rows are nearest
        np.testing.assert_allclose(head.embed(index), head.embeddings, atol=1e-5)
        assert not np.allclose(head.components(pooled)[0],
                               EmbeddingHead(index, labels, k=k, ramp=0.25, center=center).components(pooled[:, :dim])[0])

    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["knn_score", "knn_support", "clf_score", "pooled"]
    knn, support, clf, pooled_out = session.run(None, {"input_ids": ids, "attention_mask": mask})
    want_knn, want_clf = head.components(pooled)
    assert want_clf is not None and knn.shape == clf.shape == support.shape == (6,)
    np.testing.assert_allclose(pooled_out, pooled, atol=1e-5)
    np.testing.assert_allclose(knn, want_knn, atol=1e-5)
    # The support: the mean similarity of the nearest index rows, as the numpy head computes it.
    want_vote, want_support = head.vote(head.embed(pooled[:, :dim]))
    np.testing.assert_allclose(knn, want_vote, atol=1e-5)
    np.testing.assert_allclose(support, want_support, atol=1e-5)
    assert np.all((support >= -1) & (support <= 1)) and len(np.unique(np.round(support, 4))) > 1
    np.testing.assert_allclose(clf, want_clf, atol=1e-5)
    if k + 1 <= n_index:  # a vote that depends on the prompt (with k >= n_index it is the mean of all labels)
        assert len(np.unique(np.round(knn, 4))) > 1
    else:
        np.testing.assert_allclose(knn, labels.mean(), atol=1e-6)


def test_int8_index_votes_like_the_float_index(tmp_path: Path) -> None:
    """int8_index: the index as int8 rows with a scale each; the vote and support stay those of the
    numpy head over the dequantized rows, up to the query's own rounding, on any x86 CPU (with full
    8-bit codes, an AVX2 CPU without VNNI saturated the products and moved votes by 0.03)."""
    rng = np.random.default_rng(7)
    dim, vocab, n_index = 32, 300, 400
    table = rng.normal(size=(vocab, dim)).astype(np.float32)
    _token_encoder(tmp_path / "enc.onnx", {"last_hidden_state": table})
    head = EmbeddingHead(rng.normal(size=(n_index, dim)) + 1.0, rng.choice([0.0, 0.5, 1.0], size=n_index), k=20,
                         center=True)
    attach_head(tmp_path / "enc.onnx", tmp_path / "float.onnx", head)
    attach_head(tmp_path / "enc.onnx", tmp_path / "int8.onnx", head, int8_index=True)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert weights["head/index_q"].dtype == np.int8 and "head/index_t" not in weights
    assert "DynamicQuantizeMatMul" in {n.op_type for n in graph.node}
    codes, scales = quantize_rows(head.embeddings)
    np.testing.assert_array_equal(weights["head/index_q"], codes.T)
    assert np.abs(codes).max() == INDEX_CODE_MAX  # 7 bits: no int16 overflow in AVX2's u8 x s8 pairs
    assert np.abs(codes * scales[:, None] - head.embeddings).max() <= scales.max() / 2 + 1e-7

    ids = rng.integers(0, vocab, size=(64, 6))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    vote, support = ort.InferenceSession(str(tmp_path / "int8.onnx")).run(["knn_score", "knn_support"], feeds)
    float_vote, float_support = ort.InferenceSession(str(tmp_path / "float.onnx")).run(["knn_score", "knn_support"],
                                                                                         feeds)
    dequantized = copy.copy(head)
    dequantized.embeddings = codes.astype(np.float32) * scales[:, None]
    want_vote, want_support = dequantized.vote(head.embed(table[ids].mean(axis=1)))
    np.testing.assert_allclose(vote, want_vote, atol=0.01)
    np.testing.assert_allclose(support, want_support, atol=0.002)
    np.testing.assert_allclose(vote, float_vote, atol=0.02)  # and near the float index's
    assert spearman(vote, float_vote) > 0.99 and not np.array_equal(vote, float_vote)


def test_attached_knn_head_alone_and_a_missing_branch(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(10, 4)).astype(np.float32)
    _token_encoder(tmp_path / "enc.onnx", {"last_hidden_state": base})
    emb, labels = np.eye(4, dtype=np.float32), np.array([0.0, 0.25, 0.75, 1.0], dtype=np.float32)
    attach_head(tmp_path / "enc.onnx", tmp_path / "knn.onnx", EmbeddingHead(emb, labels, k=1))
    session = ort.InferenceSession(str(tmp_path / "knn.onnx"))
    assert [o.name for o in session.get_outputs()] == ["knn_score", "knn_support", "pooled"]
    ids = np.arange(10, dtype=np.int64)[:, None]  # one token each: the prompt is that token's vector
    knn, support, _ = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    # k=1: the support averages the top k+1 = 2 similarities (fewer than SUPPORT_K are there)
    sims = np.sort((base / np.linalg.norm(base, axis=1, keepdims=True)) @ emb.T, axis=1)[:, ::-1]
    np.testing.assert_allclose(support, sims[:, :2].mean(axis=1), atol=1e-6)
    # k=1 with 4 index rows: the (k+1)-th neighbour floors the ramp, so the nearest one's label wins
    np.testing.assert_allclose(knn, labels[np.argmax(base, axis=1)], atol=1e-6)
    with pytest.raises(ValueError, match="hidden states"):
        attach_head(tmp_path / "enc.onnx", tmp_path / "x.onnx",
                    EmbeddingHead(emb, labels, k=1, clf_w=np.eye(4)[:3], clf_b=np.zeros(3)))


def test_lists_options_marks_prompts_with_a_to_d_option_lines() -> None:
    mmlu = "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"
    assert lists_options([mmlu, "Pick one:\nA) red\nB) blue", "A. Smith wrote this.\nIs he right?",
                          "Write a haiku about the sea.", ""]).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_cv_rows_flag_options_of_the_prompts_they_hold() -> None:
    """The CV's query flag follows the prompts: through subsets and concatenations, and when the
    prompts are replaced (assigned, or rewritten with ``dataclasses.replace``)."""
    mmlu = "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"
    rng = np.random.default_rng(3)
    data = _routing_rows(rng, 4)
    data.prompts = [mmlu, "Name a prime.", mmlu, "Why is the sky blue?"]
    assert data.options.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert data.subset(np.array([2, 1])).options.tolist() == [1.0, 0.0]
    assert cv.concat([data, data.subset(np.array([3]))], "both").options.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    rewritten = dataclasses.replace(data, prompts=["Which is a prime?"] * 4)
    assert rewritten.options.tolist() == [0.0] * 4 and data.options.tolist() == [1.0, 0.0, 1.0, 0.0]
    data.prompts = [mmlu] * 4
    assert data.options.tolist() == [1.0] * 4


@pytest.mark.parametrize("int8_index", [False, True])
def test_question_only_copies_are_seen_only_by_prompts_that_list_options(tmp_path: Path, int8_index: bool) -> None:
    """An index row flagged as a copy votes for a query that lists A-D options and drops out for
    any other query: in the graph (fp32 and int8 index) as in the numpy head."""
    rng = np.random.default_rng(11)
    vocab, dim = 12, 6
    table = rng.normal(size=(vocab, dim)).astype(np.float32)
    _token_encoder(tmp_path / "enc.onnx", {"last_hidden_state": table})
    # every token's vector twice: as a prompt (label 0) and as its copy (label 1)
    index, labels = np.vstack([table, table]), np.r_[np.zeros(vocab), np.ones(vocab)].astype(np.float32)
    copies = np.r_[np.zeros(vocab, bool), np.ones(vocab, bool)]
    head = EmbeddingHead(index, labels, k=3, center=True, copies=copies)
    attach_head(tmp_path / "enc.onnx", tmp_path / "model.onnx", head, int8_index=int8_index)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    assert "lists_options" in {i.name for i in session.get_inputs()}
    ids = np.arange(vocab, dtype=np.int64)[:, None]  # one token each: the prompt is that token's vector
    options = (np.arange(vocab) % 2).astype(np.float32)
    vote, support = session.run(["knn_score", "knn_support"],
                                {"input_ids": ids, "attention_mask": np.ones_like(ids), "lists_options": options})
    reference = copy.copy(head)
    if int8_index:  # the graph's index rows, dequantized
        codes, scales = quantize_rows(head.embeddings)
        reference.embeddings = codes.astype(np.float32) * scales[:, None]
    want_vote, want_support = reference.vote(head.embed(table), options)
    np.testing.assert_allclose(vote, want_vote, atol=0.01 if int8_index else 1e-5)
    np.testing.assert_allclose(support, want_support, atol=0.005 if int8_index else 1e-5)  # + the query's rounding
    free, listed = options == 0, options == 1
    assert np.all(vote[free] == 0.0)  # only the prompts (label 0) vote
    assert np.all(vote[listed] > 0.2)  # each query's own copy (label 1) is among its nearest
    np.testing.assert_allclose(want_vote[free], EmbeddingHead(table, labels[:vocab], k=3, center=True,
                                                              ).vote(head.embed(table[free]))[0], atol=1e-6)
    with pytest.raises(ValueError, match="options"):
        head.vote(head.embed(table))
    # k + 1 stays within the rows every query sees
    assert EmbeddingHead(index, labels, k=vocab, copies=copies).k == vocab - 1
    with pytest.raises(ValueError, match="at least 2 other rows"):
        EmbeddingHead(index[vocab - 1 :], labels[vocab - 1 :], k=1, copies=copies[vocab - 1 :])


def test_ridge_map_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 6))
    a, c = rng.normal(size=(6, 4)), rng.normal(size=4)
    weight, bias = ridge_map(x, x @ a + c, l2=1e-6)
    np.testing.assert_allclose(weight, a, atol=1e-4)
    np.testing.assert_allclose(bias, c, atol=1e-4)
    shrunk, _ = ridge_map(x, x @ a + c, l2=1e4)  # the penalty pulls the weights towards 0
    assert np.abs(shrunk).sum() < 0.5 * np.abs(a).sum()


def _routing_rows(rng: np.random.Generator, n: int, dim: int = 6) -> cv.RoutingData:
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    return cv.RoutingData("rows", [f"p{i}" for i in range(n)], ["s"] * n, rng.random(n), rng.random(n), emb,
                          np.zeros_like(emb), np.zeros(n, bool), np.zeros((n, 1), np.float32),
                          target_emb=rng.normal(size=(n, dim)).astype(np.float32), qonly_target_emb=np.zeros_like(emb))


def test_map_is_fitted_on_the_training_rows_alone() -> None:
    """--map-to-full in the cross-validation: the map comes from the index (training) rows; the
    scored rows' own full-encoder embeddings never enter it."""
    rng = np.random.default_rng(5)
    train, test = _routing_rows(rng, 80), _routing_rows(rng, 20)
    spec, plain = cv.KnnSpec(k=5, map_l2=1.0), cv.KnnSpec(k=5)
    vote = cv.knn_fit_score(train, test, spec)[0]
    test.target_emb = rng.normal(size=test.target_emb.shape).astype(np.float32)
    np.testing.assert_array_equal(cv.knn_fit_score(train, test, spec)[0], vote)
    other = dataclasses.replace(train, target_emb=rng.normal(size=train.target_emb.shape).astype(np.float32))
    assert not np.array_equal(cv.knn_fit_score(other, test, spec)[0], vote)
    assert not np.array_equal(cv.knn_fit_score(train, test, plain)[0], vote)
    np.testing.assert_allclose(cv.knn_head(train, spec).projection[0], ridge_map(train.emb, train.target_emb, 1.0)[0])
    # the folds see it too: subsets and concatenations carry the target embeddings along
    assert cv.concat([train, test], "both").target_emb.shape == (100, 6)
    np.testing.assert_array_equal(train.subset(np.arange(3)).target_emb, train.target_emb[:3])


def test_grouped_cv_pools_each_fold_alone() -> None:
    """Held-out folds are scored by different models, each on its own scale: the grouped figure
    pools each fold's rows alone, so shifting one fold's scores (another model's intercept) moves
    the figure pooled across folds and not the one within them."""
    rng = np.random.default_rng(3)
    n = 300
    data = _routing_rows(rng, n)
    data.weak, data.strong = rng.random(n) * 0.6, 0.4 + rng.random(n) * 0.6  # the strong model gains in every fold
    folds = np.repeat([0, 1, 2], n // 3)
    good = data.strong - data.weak + rng.normal(0.0, 0.3, n)  # an informative score
    shifted = good + np.where(folds == 1, 5.0, 0.0)
    per_fold = [metrics.apgr(good[folds == f], data.weak[folds == f], data.strong[folds == f]) for f in range(3)]
    row = cv.report(shifted, data, folds=folds)
    assert row["per_fold"] == pytest.approx(per_fold, abs=1e-4)
    assert row["fold_pooled_apgr"] == pytest.approx(np.mean(per_fold), abs=1e-4)
    assert cv.report(good, data, folds=folds)["fold_pooled_apgr"] == row["fold_pooled_apgr"]
    assert abs(row["apgr"] - cv.report(good, data)["apgr"]) > 0.01  # across folds the shift counts
    assert "fold_pooled_apgr" not in cv.report(good, data)  # random folds: one pooled figure


def test_confidence_flags_what_the_index_has_not_seen() -> None:
    """`make cv --confidence`: prompts from a subject or task held out of the index (or from no
    training group at all) fall below the familiar prompts' supports; familiar ones do not."""
    rng = np.random.default_rng(11)
    centres = {name: rng.normal(size=8) * 10 for name in ("mmlu/a", "mmlu/b", "mmlu/c", "llmrouter/x",
                                                          "llmrouter/y", "llmrouter/z", "zeroeval/new")}

    def rows(groups: list[str], n: int) -> cv.RoutingData:
        sources = [groups[i % len(groups)] for i in range(n)]
        data = _routing_rows(rng, n, dim=8)
        data.emb = np.array([centres[s] + rng.normal(size=8) for s in sources], np.float32)
        data.sources, data.weak, data.strong = sources, rng.random(n) * 0.6, 0.3 + rng.random(n) * 0.7
        return data

    mmlu, other = rows(["mmlu/a", "mmlu/b", "mmlu/c"], 150), rows(["llmrouter/x", "llmrouter/y", "llmrouter/z"], 150)
    sets = {"mmlu-val": rows(["mmlu/a"], 30), "llmrouter-val": rows(["llmrouter/y"], 30),
            "zeroeval-ood": rows(["zeroeval/new"], 30)}
    report = {r["set"]: r for r in cv.confidence_report(sets, cv.concat([mmlu, other], "both"), 150, cv.KnnSpec(k=5))}
    assert report["MMLU, random folds"]["below"] < 0.1 and report["mmlu-val"]["below"] < 0.3
    assert report["MMLU, held-out subjects"]["below"] > 0.5 and report["other files, held-out tasks"]["below"] > 0.5
    assert report["zeroeval-ood"]["below"] == 1.0 and report["zeroeval-ood"]["strong_better_above"] is None
    # every prompt flagged: sending the flagged ones strong first leaves no order at all
    assert report["zeroeval-ood"]["apgr_low_strong_first"] == pytest.approx(0.5)


def test_cv_embeds_the_first_max_length_tokens_and_caches_each_length_apart(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`make cv CV_ARGS=--max-length N` (the real base encoder): a prompt longer than N tokens is
    embedded from its first N, a shorter one as before, and each length has its own cache file."""
    from export.pipeline import default_base_model
    from export.train import load_encoder

    monkeypatch.setattr(cv, "CACHE", tmp_path)
    loaded: list[Any] = []

    def encoder() -> Any:
        loaded.append(1)
        return load_encoder(default_base_model())

    prompts = ["Short question?", "A long prompt about the routing of requests " * 8]
    full = cv._embed(prompts, encoder, max_length=128)
    cut = cv._embed(prompts, encoder, max_length=8)
    head = cv._embed([prompts[1].split(" of ")[0]], encoder, max_length=128)  # "A long prompt about the routing"
    assert len(list(tmp_path.glob("emb-*.npy"))) == 3 and len(loaded) == 3
    np.testing.assert_allclose(cut[0], full[0], atol=1e-5)
    assert float(cut[1] @ full[1]) / float(np.linalg.norm(cut[1]) * np.linalg.norm(full[1])) < 0.99
    np.testing.assert_allclose(cut[1], head[0], atol=1e-4)  # 8 tokens: [CLS], 6 words, [SEP]
    np.testing.assert_array_equal(cv._embed(prompts, encoder, max_length=8), cut)
    assert len(loaded) == 3  # read from its cache file


def test_static_distillation_fits_prompt_means_and_keeps_unseen_tokens() -> None:
    """The static encoder's fit: token vectors whose mean over each prompt's tokens reproduces the
    prompt's target embedding; tokens in no prompt keep their start vectors, and the ridge penalty
    holds the vectors towards the start."""
    from export import static_encoder

    rng = np.random.default_rng(7)
    vocab, dim = 40, 5
    true = rng.normal(size=(vocab, dim)).astype(np.float32)
    start = true + rng.normal(0.0, 1.0, size=true.shape).astype(np.float32)
    prompts = [list(rng.choice(30, size=rng.integers(2, 8))) for _ in range(600)]  # tokens 30-39 never occur
    targets = static_encoder.embed(true, prompts)
    fitted = static_encoder.distill(start, prompts, targets, l2=1e-6, tolerance=1e-7, map_start=False)
    np.testing.assert_allclose(static_encoder.embed(fitted, prompts), targets, atol=1e-3)
    np.testing.assert_allclose(fitted[:30], true[:30], atol=1e-2)  # enough prompts to pin every seen token
    np.testing.assert_array_equal(fitted[30:], start[30:])
    held = static_encoder.distill(start, prompts, targets, l2=100.0, map_start=False)
    assert np.abs(held - start).mean() < 0.2 * np.abs(fitted - start).mean()


def test_static_start_map_carries_the_fit_to_tokens_no_prompt_holds() -> None:
    """Where a token's vector in context is mostly an affine function of its vector alone, the map
    fitted on the seen tokens' prompts moves the unseen tokens' start vectors to the same place:
    held-out prompts of unseen tokens are embedded far closer to their targets than unmapped."""
    from export import static_encoder

    rng = np.random.default_rng(11)
    vocab, dim = 60, 6
    start = rng.normal(size=(vocab, dim)).astype(np.float32)
    shift = rng.normal(size=(dim, dim)).astype(np.float32)
    true = start @ shift + 3.0 + rng.normal(0.0, 0.1, size=start.shape).astype(np.float32)
    seen = [list(rng.choice(40, size=rng.integers(2, 8))) for _ in range(800)]
    unseen = [list(40 + rng.choice(20, size=rng.integers(2, 8))) for _ in range(100)]  # tokens no fit saw
    targets = static_encoder.embed(true, seen)
    expected = static_encoder.embed(true, unseen)

    def error(map_start: bool) -> float:
        vectors = static_encoder.distill(start, seen, targets, l2=0.01, map_start=map_start)
        np.testing.assert_allclose(static_encoder.embed(vectors, seen), targets, atol=0.05)
        return float(np.abs(static_encoder.embed(vectors, unseen) - expected).mean())

    np.testing.assert_allclose(static_encoder.start_map(start, seen, targets)[40:], true[40:], atol=0.5)
    assert error(True) < 0.1 * error(False)


def test_static_cv_distils_on_the_training_rows_alone() -> None:
    """`make cv CV_ARGS="--encoder static"`: every fit distils its vectors from its own training
    rows; the scored rows' full-encoder embeddings never enter it, their tokens do (as served)."""
    from export import static_encoder

    class Tokenizer:  # word -> id, [CLS]=0 and [SEP]=1 around it, as a BERT tokenizer's output
        def __call__(self, texts: list[str], truncation: bool, max_length: int) -> dict[str, list[list[int]]]:
            return {"input_ids": [[0] + [2 + int(w) for w in t.split()][: max_length - 2] + [1] for t in texts]}

    rng = np.random.default_rng(9)

    def rows(n: int) -> cv.RoutingData:
        data = _routing_rows(rng, n, dim=4)
        data.prompts = [" ".join(str(w) for w in rng.choice(20, size=4)) for _ in range(n)]
        return data

    train, test = rows(120), rows(30)
    start = rng.normal(size=(22, 4)).astype(np.float32)
    seen: list[np.ndarray] = []

    def inner(tr: cv.RoutingData, te: cv.RoutingData) -> np.ndarray:
        seen.append(te.emb)
        return cv.knn_fit_score(tr, te, cv.KnnSpec(k=5))[0]

    fit = cv.static_fit(inner, Tokenizer(), start, 64, l2=0.01)
    vote = fit(train, test)
    vectors = static_encoder.distill(start, static_encoder.token_ids(Tokenizer(), train.prompts, 64),
                                     train.target_emb, 0.01)
    np.testing.assert_allclose(seen[0], static_encoder.embed(vectors, static_encoder.token_ids(
        Tokenizer(), test.prompts, 64)), atol=1e-6)
    test.target_emb = rng.normal(size=test.target_emb.shape).astype(np.float32)
    np.testing.assert_array_equal(fit(train, test), vote)
    train.target_emb = rng.normal(size=train.target_emb.shape).astype(np.float32)
    assert not np.array_equal(fit(train, test), vote)


def test_static_cv_blend_reads_training_rows_embedded_out_of_fold() -> None:
    """As `make export` fits it, the static CV's blend votes on training rows embedded by vectors
    fitted without them: a row's own target shapes its served (index) embedding, never the one its
    blend vote reads; the other folds' vectors do see it. For the held-out sources the whole
    source is unseen: no row of it moves another's embedding."""
    class Tokenizer:
        def __call__(self, texts: list[str], truncation: bool, max_length: int) -> dict[str, list[list[int]]]:
            return {"input_ids": [[0] + [2 + int(w) for w in t.split()] + [1] for t in texts]}

    rng = np.random.default_rng(11)
    train, test = _routing_rows(rng, 100, dim=4), _routing_rows(rng, 10, dim=4)
    for data in (train, test):
        data.prompts = [" ".join(str(w) for w in rng.choice(20, size=4)) for _ in data.prompts]
    train.sources = [f"s{i % 7}" for i in range(100)]
    start = rng.normal(size=(22, 4)).astype(np.float32)
    random, sources = cv.random_folds(100, seed=1), cv.group_folds(train.sources, seed=1)
    views: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def inner(tr: cv.RoutingData, te: cv.RoutingData) -> np.ndarray:
        assert tr.fold_view is not None
        views.append((tr.emb, tr.held_out(random).emb, tr.held_out(sources).emb))
        return np.zeros(len(te.prompts))

    fit = cv.static_fit(inner, Tokenizer(), start, 64, l2=0.01)
    fit(train, test)
    train.target_emb = train.target_emb.copy()
    train.target_emb[0] += 5.0
    fit(train, test)
    (served, view, by_source), (served2, view2, by_source2) = views
    assert not np.allclose(served[0], view[0])  # in sample against out of fold
    assert not np.allclose(served2[0], served[0])
    np.testing.assert_array_equal(view2[0], view[0])
    same_fold = random == random[0]
    np.testing.assert_array_equal(view2[same_fold], view[same_fold])
    assert not np.allclose(view2[~same_fold], view[~same_fold])
    same_source_fold = sources == sources[0]  # row 0's whole source, and any other its fold holds out
    assert same_source_fold.sum() > same_fold.sum() // 2 and len(np.unique(sources)) > 1
    np.testing.assert_array_equal(by_source2[same_source_fold], by_source[same_source_fold])
    assert not np.allclose(by_source2[~same_source_fold], by_source[~same_source_fold])
    quick: list[object] = []
    cv.static_fit(lambda tr, te: quick.append(tr.fold_view) or np.zeros(len(te.prompts)), Tokenizer(), start, 64,
                  l2=0.01, oof_blend=False)(train, test)
    assert quick == [None]  # --no-static-oof-blend: the blend votes in sample


def test_every_cv_candidate_scores_a_row_from_the_training_rows_alone() -> None:
    """`make cv` scores the three validation files in one fit: that holds only if no candidate's
    score for a row depends on the other rows it is scored with."""
    rng = np.random.default_rng(12)

    def rows(n: int) -> cv.RoutingData:
        data = _routing_rows(rng, n, dim=4)
        data.prompts = [" ".join(rng.choice(["why", "is", "the", "sky", "blue", "A. red"], size=rng.integers(2, 9)))
                        for _ in range(n)]
        data.features = prompt_features(data.prompts)
        return data

    train, a, b = rows(150), rows(20), rows(30)
    for name, fit in cv.candidates(cv.KnnSpec(k=10)).items():
        together = fit(train, cv.concat([a, b], "both"))
        np.testing.assert_allclose(together, np.r_[fit(train, a), fit(train, b)], err_msg=name)


def test_rewritten_rows_are_scored_as_reworded_and_trained_on_as_they_are() -> None:
    """`make cv --rewrites`: each fold's held-out rows are scored as the rewrite words them; the
    rows a fold trains on stay as they are."""
    rng = np.random.default_rng(5)
    data = _routing_rows(rng, 60)
    reworded = dataclasses.replace(data, emb=rng.normal(size=data.emb.shape).astype(np.float32))
    trained_on: list[np.ndarray] = []

    def fit(train: cv.RoutingData, test: cv.RoutingData) -> np.ndarray:
        trained_on.append(train.emb)
        return test.emb[:, 0].astype(np.float64)

    folds = cv.random_folds(60)
    np.testing.assert_allclose(cv.oof(data, folds, fit, reworded), reworded.emb[:, 0])
    for f, emb in enumerate(trained_on):
        np.testing.assert_array_equal(emb, data.emb[folds != f])
    # `also`: rows every fold trains on besides its own (the LLMRouter rows of the served index)
    extra, trained_on[:] = _routing_rows(rng, 7), []
    np.testing.assert_allclose(cv.oof(data, folds, fit, reworded, also=extra), reworded.emb[:, 0])
    for f, emb in enumerate(trained_on):
        np.testing.assert_array_equal(emb, np.concatenate([data.emb[folds != f], extra.emb]))


def test_rewrite_views_are_the_rewrites_make_eval_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make cv --rewrites` names its columns as `make eval --rewrite` names the rewrites; each view
    keeps the rows' labels and holds the reworded prompts."""
    from export.data import REWRITES, rewrite

    monkeypatch.setattr(cv, "_embed", lambda prompts, *_a, **_k: np.zeros((len(prompts), 6), np.float32))
    data = _routing_rows(np.random.default_rng(2), 4)
    data.prompts = [f"Which is {i}?\nA. one\nB. two\nC. three\nD. four\nAnswer:" for i in range(4)]
    data.ids = ids = [f"mmlu/x-{i}" for i in range(4)]
    views = cv.rewrite_views(data, encoder=None)
    assert list(views) == list(REWRITES) and views["none"] is data
    for name in REWRITES:
        assert views[name].prompts == rewrite(data.prompts, ids, name)
        np.testing.assert_array_equal(views[name].strong - views[name].weak, data.strong - data.weak)
    # The ids follow their rows through folds and joins, so that a fold's rows keep their wording.
    assert cv.concat([data.subset(np.array([2, 0])), data], "both").ids == [ids[2], ids[0], *ids]
    assert cv.concat([data, _routing_rows(np.random.default_rng(3), 2)], "both").ids == []
    with pytest.raises(ValueError, match="id"):
        cv.rewrite_views(_routing_rows(np.random.default_rng(4), 3), encoder=None)


def test_held_out_sources_are_voted_on_as_their_own_view() -> None:
    """The static encoder's vectors must not have seen a held-out source's text: the blend's
    unfamiliar votes and the export's grouped cross-validation read the rows as `fold_view` embeds
    them for those folds; random folds read the rows as they are."""
    rng = np.random.default_rng(3)
    data = _routing_rows(rng, 120)
    data.sources = [f"mmlu/s{i % 6}" if i < 80 else f"task{i % 4}" for i in range(120)]
    noise = rng.normal(size=data.emb.shape).astype(np.float32)
    asked: list[np.ndarray] = []

    def view(folds: np.ndarray) -> cv.RoutingData:
        asked.append(folds)
        by_source = any(np.array_equal(folds, cv.group_folds(data.sources, seed=s)) for s in (0, 1))
        return dataclasses.replace(data, emb=noise if by_source else data.emb, fold_view=None)

    spec = cv.KnnSpec(k=5)
    seen = cv.served_cv(data, spec, log=lambda _: None)
    viewed = cv.served_cv(dataclasses.replace(data, fold_view=view), spec, log=lambda _: None)
    noisy = cv.served_cv(dataclasses.replace(data, emb=noise), spec, log=lambda _: None)
    assert viewed["random"] == seen["random"]
    assert viewed["grouped"] == noisy["grouped"] != seen["grouped"]
    assert any(np.array_equal(f, cv.group_folds(data.sources)) for f in asked)
    plain = cv.train_blend(data, spec)
    asked.clear()
    blended = cv.train_blend(dataclasses.replace(data, fold_view=view), spec)
    np.testing.assert_array_equal(blended.familiar_vote, plain.familiar_vote)
    assert not np.allclose(blended.blend.coef, plain.blend.coef)
    assert any(np.array_equal(f, cv.group_folds(data.sources, seed=1)) for f in asked)


def test_export_views_each_question_only_copy_in_its_prompts_fold() -> None:
    """The export's index holds the training rows, then question-only copies of some: a held-out
    fold's view embeds a copy in its own row's fold, and puts it beside that row."""
    rng = np.random.default_rng(4)
    data = _routing_rows(rng, 12, dim=3)
    index_rows = np.r_[np.arange(12), [2, 5, 9]]  # rows 2, 5 and 9 have a question-only copy
    data.qonly_mask[[2, 5, 9]] = True
    asked: list[np.ndarray] = []

    def out_of_fold(index_folds: np.ndarray) -> np.ndarray:  # each index prompt: (its fold, its position)
        asked.append(index_folds)
        return np.stack([index_folds, np.arange(len(index_folds)), np.zeros(len(index_folds))], 1).astype(np.float32)

    folds = cv.random_folds(12, seed=3)
    view = cv.static_fold_view(data, index_rows, out_of_fold)(folds)
    np.testing.assert_array_equal(asked[0], folds[index_rows])
    np.testing.assert_array_equal(view.emb[:, 0], folds)
    np.testing.assert_array_equal(view.emb[:, 1], np.arange(12))
    np.testing.assert_array_equal(view.qonly_emb[[2, 5, 9], 1], [12, 13, 14])
    np.testing.assert_array_equal(view.qonly_emb[[2, 5, 9], 0], folds[[2, 5, 9]])
    assert view.fold_view is None and view.prompts == data.prompts
