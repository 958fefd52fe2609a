"""The embedding head of the router classifier: a numpy reference (``EmbeddingHead``) and the same
computation appended to the encoder's ONNX graph (``attach_head``), which is what is served.

In the graph the head runs where the encoder runs (on the GPU under onnxruntime's CUDA provider):
the model returns one score per prompt and branch instead of [batch, tokens, 384] hidden states,
so nothing big crosses to the host and the kNN matmul and top-k stay on the device. The numpy
reference is what the export checks the graph against and computes the rank references with."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.served_model import CLF_OUTPUT, KNN_OUTPUT, OPTIONS_INPUT, POOLED_OUTPUT, SUPPORT_OUTPUT


SUPPORT_K = 10  # neighbours whose mean similarity measures how familiar a prompt is
# Subtracted from a hidden copy's cosine similarity (in [-1, 1]): it ranks below every other index
# prompt, so it never enters the top k + 1 (k is capped below the number of the others).
COPY_HIDE = 4.0


def ridge_map(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """(weight [dx, dy], bias [dy]) of the ridge regression ``y ~ x @ weight + bias`` (intercept
    unpenalised): how a shallower encoder's embeddings are mapped onto the full encoder's."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc = x - mx
    weight = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ (y - my))
    return weight.astype(np.float32), (my - mx @ weight).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class EmbeddingHead:
    """Scores from sentence embeddings, pure numpy (the reference of ``attach_head``'s graph).

    ``knn``: a nearest-neighbour vote over the training prompts' embeddings (cosine similarity):
    the ``k`` most similar prompts vote with their labels in [0, 1]; weights are flat for the
    nearest and ramp linearly down to 0 as a neighbour's similarity nears the (k+1)-th's (over the
    last ``ramp`` fraction of the top-(k+1) similarity range), so the score is continuous in the
    embedding (ONNX vs PyTorch rounding cannot flip a neighbour in or out).

    ``projection`` (weight, bias): a linear map applied to every pooled embedding first (queries and
    index alike): with ``--map-to-full`` a shallow encoder's embeddings mapped onto the full
    encoder's (``ridge_map``), so its neighbours are chosen in the full encoder's geometry.

    ``copies`` (one flag per index row): the rows that are question-only copies of MMLU prompts
    (the prompt without its A-D options). Only queries that list A-D options themselves see them
    (``options`` of ``vote``; served: ``lists_options``); for every other query they drop out of the
    vote. Free-form prompts of other tasks otherwise find their neighbourhoods crowded with copies,
    which look like them but carry MMLU's model pair's labels (docs/router-quality.md).

    ``center``: subtract the index embeddings' mean before normalising (queries and index alike).
    MiniLM's embeddings share a common direction that inflates every cosine similarity; with it
    removed the neighbours are chosen more by content (docs/router-quality.md: train-CV and
    mmlu-val APGR both rose at every k tried).

    Ensemble (``clf_w`` given): the pooled input is ``[base embedding | fine-tuned embedding]``; the
    classifier branch scores ``P(strong better) - P(weak better)`` from ``softmax(ft . clf_w.T +
    clf_b)``. The two branch scores are blended where they are served (``RankBlend`` in the Triton
    model), not here.
    """

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray, k: int, ramp: float = 0.25,
                 clf_w: np.ndarray | None = None, clf_b: np.ndarray | None = None, center: bool = False,
                 projection: tuple[np.ndarray, np.ndarray] | None = None, copies: np.ndarray | None = None):
        self.projection = None if projection is None else (np.asarray(projection[0], np.float32),
                                                            np.asarray(projection[1], np.float32))
        raw = self._project(embeddings)
        self.center = raw.mean(axis=0) if center and len(raw) else None
        self.embeddings = l2_normalize(raw if self.center is None else raw - self.center)
        self.labels = np.asarray(labels, dtype=np.float32).reshape(-1)
        if len(self.labels) != len(self.embeddings) or len(self.labels) == 0:
            raise ValueError("head: embeddings and labels must be non-empty and the same length")
        self.k = int(max(1, min(k, len(self.labels))))
        flags = None if copies is None else np.asarray(copies, bool).reshape(-1)
        if flags is not None and len(flags) != len(self.labels):
            raise ValueError("head: one copy flag per index row")
        if flags is not None and flags.any():  # k + 1 <= the rows every query sees: no hidden row is in reach
            shown = len(flags) - int(flags.sum())
            if shown < 2:
                raise ValueError("head: an index with hidden copies needs at least 2 other rows")
            self.k = min(self.k, shown - 1)
        # the similarity a query without options loses on each index row: 0, or COPY_HIDE on a copy
        self.copy_penalty = None if flags is None or not flags.any() else (flags * -COPY_HIDE).astype(np.float32)
        self.ramp = float(ramp)
        self.clf_w = None if clf_w is None else np.asarray(clf_w, dtype=np.float64)
        self.clf_b = None if clf_w is None else np.asarray(clf_b, dtype=np.float64).reshape(-1)
        if self.clf_w is not None and self.clf_w.shape != (3, self.embeddings.shape[1]):
            raise ValueError(f"head: clf_w must be [3, {self.embeddings.shape[1]}], not {self.clf_w.shape}")

    @property
    def dim(self) -> int:
        """Width of the pooled input: the base embedding, twice that for the ensemble."""
        return int(self.embeddings.shape[1]) * (1 if self.clf_w is None else 2)

    def _project(self, pooled_base: np.ndarray) -> np.ndarray:
        x = np.asarray(pooled_base, dtype=np.float32)
        return x if self.projection is None else x @ self.projection[0] + self.projection[1]

    def embed(self, pooled_base: np.ndarray) -> np.ndarray:
        """Index-space embedding of base-encoder pooled outputs: projected and centred (if so
        built), L2-normalised."""
        x = self._project(pooled_base)
        return l2_normalize(x if self.center is None else x - self.center)

    def knn(self, emb: np.ndarray, options: np.ndarray | None = None) -> np.ndarray:
        """The vote for embeddings already in index space (``embed``)."""
        return self.vote(emb, options)[0]

    def vote(self, emb: np.ndarray, options: np.ndarray | None = None,
             batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(the vote, its support) for embeddings in index space; support = the mean cosine
        similarity of the ``SUPPORT_K`` nearest index prompts: how familiar the prompt is.
        ``options`` (1 where a query lists A-D options, else 0): required when the index holds
        ``copies``, which the other queries do not see."""
        if self.copy_penalty is not None and options is None:
            raise ValueError("head: an index with question-only copies needs the queries' options flags")
        opts = None if options is None else np.asarray(options, np.float32).reshape(-1)
        if len(emb) > batch:  # bounded memory: [batch, index] similarities at a time
            parts = [self.vote(emb[i : i + batch], None if opts is None else opts[i : i + batch], batch)
                     for i in range(0, len(emb), batch)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        sims = emb @ self.embeddings.T  # cosine similarities [n, train]
        if self.copy_penalty is not None and opts is not None:  # as the graph: + (1 - options) x penalty
            sims = sims + (1.0 - opts)[:, None] * self.copy_penalty[None, :]
        k, n = self.k, sims.shape[1]
        top = np.argsort(-sims, axis=1) if k + 1 >= n else np.argpartition(-sims, k, axis=1)[:, : k + 1]
        s = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-s, axis=1, kind="stable")
        top, s = np.take_along_axis(top, order, axis=1), np.take_along_axis(s, order, axis=1)
        labels = self.labels[top[:, :k]]
        if s.shape[1] > k:
            floor = s[:, k : k + 1]  # the (k+1)-th similarity: weight 0 there
            width = np.maximum(self.ramp * (s[:, :1] - floor), 1e-9)
            w = np.clip((s[:, :k] - floor) / width, 0.0, 1.0)
        else:  # fewer training prompts than k + 1: plain mean
            w = np.ones_like(s[:, :k])
        total = w.sum(axis=1)
        mean = np.where(total > 0, (w * labels).sum(axis=1) / np.maximum(total, 1e-30), labels.mean(axis=1))
        return mean.astype(np.float64), s[:, : min(SUPPORT_K, s.shape[1])].mean(axis=1).astype(np.float64)

    def classifier(self, pooled_ft: np.ndarray) -> np.ndarray:
        """The classifier branch: P(strong better) - P(weak better), in [-1, 1]."""
        assert self.clf_w is not None and self.clf_b is not None
        z = np.asarray(pooled_ft, dtype=np.float64) @ self.clf_w.T + self.clf_b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return p[:, 2] - p[:, 0]

    def components(self, pooled: np.ndarray, options: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(kNN score, classifier score or None) per row of the pooled input (``options``: as ``vote``)."""
        pooled = np.asarray(pooled, dtype=np.float32)
        d = int(self.embeddings.shape[1])
        knn = self.knn(self.embed(pooled[:, :d]), options)
        return knn, (None if self.clf_w is None else self.classifier(pooled[:, d : 2 * d]))


# The index's codes use 7 bits (|code| <= 63), as onnxruntime's `reduce_range` does for weights: on
# x86 CPUs without VNNI (AVX2 only, e.g. AMD EPYC before Zen 4) DynamicQuantizeMatMul adds pairs of
# uint8 x int8 products in int16, and 255 x 127 x 2 overflows it. With full 8-bit codes a vote
# moved by up to 0.03 there (tests/test_router_head.py); 7 bits keep it within rounding on every CPU.
INDEX_CODE_MAX = 63


def quantize_rows(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per row: (codes [n, dim] int8 within +-INDEX_CODE_MAX, scales [n] float32); a row is
    codes * scale."""
    x = np.asarray(embeddings, dtype=np.float32)
    scale = np.maximum(np.abs(x).max(axis=1), 1e-12).astype(np.float32) / INDEX_CODE_MAX
    return np.clip(np.round(x / scale[:, None]), -INDEX_CODE_MAX, INDEX_CODE_MAX).astype(np.int8), scale


def attach_head(encoder: Path, out: Path, head: EmbeddingHead,
                hidden_outputs: tuple[str, ...] = ("last_hidden_state", "ft_last_hidden_state"),
                int8_index: bool = False) -> dict[str, int]:
    """Write ``out``: the encoder graph at ``encoder`` plus ``head`` as ONNX nodes. Outputs become
    ``pooled`` [batch, dim] (mean-pooled embeddings, both branches side by side: what the parity
    check compares), ``knn_score`` [batch], ``knn_support`` [batch] (how familiar the prompt is:
    the mean similarity of its nearest index prompts) and, for the ensemble, ``clf_score`` [batch]; the hidden
    states stay internal. The index is a float32 initializer, or with ``int8_index`` int8 rows with a
    scale each (``quantize_rows``), multiplied by onnxruntime's DynamicQuantizeMatMul: on CPU the
    similarity product reads the whole index per prompt, and int8 cuts it from about 2 ms to 0.2 ms
    (23,600 prompts; scores moved by under 0.001, Spearman 0.9999). Returns the index size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(encoder))
    g = model.graph
    names = [o.name for o in g.output]
    branches = [n for n in hidden_outputs if n in names][: 1 if head.clf_w is None else 2]
    if len(branches) != (1 if head.clf_w is None else 2):
        raise ValueError(f"encoder outputs {names} lack the hidden states the head needs ({hidden_outputs})")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # ReduceSum and Unsqueeze take their axes as inputs from opset 13
        raise ValueError(f"attach_head needs opset >= 13, the encoder has {opset}")

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray | np.generic) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), "head/" + name))
        return "head/" + name

    def op(op_type: str, inputs: list[str], out_name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op_type, inputs, ["head/" + out_name], name="head/" + out_name, **attrs))
        return "head/" + out_name

    axis1, axis_last = const("axis1", np.array([1], np.int64)), const("axis_last", np.array([-1], np.int64))
    mask = op("Unsqueeze", [op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT), axis_last], "mask")
    eps9, zero = const("eps9", np.float32(1e-9)), const("zero", np.float32(0.0))
    count = op("Max", [op("ReduceSum", [mask, axis1], "count_raw", keepdims=0), eps9], "count")
    pooled = []
    for i, hidden in enumerate(branches):
        summed = op("ReduceSum", [op("Mul", [hidden, mask], f"masked{i}"), axis1], f"sum{i}", keepdims=0)
        pooled.append(op("Div", [summed, count], f"pooled{i}"))

    # kNN vote over the (projected, centred,) L2-normalised base embedding
    base = pooled[0]
    if head.projection is not None:
        base = op("Add", [op("MatMul", [base, const("map_w", head.projection[0])], "mapped_raw"),
                          const("map_b", head.projection[1])], "mapped")
    if head.center is not None:
        base = op("Sub", [base, const("center", head.center)], "centered")
    norm = op("Sqrt", [op("ReduceSum", [op("Mul", [base, base], "sq"), axis_last], "sumsq", keepdims=1)], "norm")
    emb = op("Div", [base, op("Max", [norm, const("eps12", np.float32(1e-12))], "norm_clamped")], "emb")
    if int8_index:
        codes, scales = quantize_rows(head.embeddings)
        sims = "head/sims"
        nodes.append(helper.make_node("DynamicQuantizeMatMul", [emb, const("index_q", np.ascontiguousarray(codes.T)),
                                      const("index_scale", scales), const("index_zero", np.zeros(len(scales), np.int8))],
                                      [sims], name=sims, domain="com.microsoft"))
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    else:
        sims = op("MatMul", [emb, const("index_t", np.ascontiguousarray(head.embeddings.T, dtype=np.float32))], "sims")
    if head.copy_penalty is not None:  # queries without A-D options: the copies sink below every other row
        g.input.append(helper.make_tensor_value_info(OPTIONS_INPUT, TensorProto.FLOAT, ["batch_size"]))
        free_form = op("Unsqueeze", [op("Sub", [const("one_f", np.float32(1.0)), OPTIONS_INPUT], "free_form_flat"),
                                     axis_last], "free_form")
        sims = op("Add", [sims, op("Mul", [free_form, const("copy_penalty", head.copy_penalty)], "hidden")],
                  "sims_shown")
    n, k = len(head.labels), head.k
    ramped = k + 1 <= n
    top_k = const("top_k", np.array([k + 1 if ramped else k], np.int64))
    nodes.append(helper.make_node("TopK", [sims, top_k], ["head/top_s", "head/top_i"], name="head/topk", axis=1,
                                  largest=1, sorted=1))

    def columns(src: str, start: int, stop: int, name: str) -> str:
        return op("Slice", [src, const(f"{name}_start", np.array([start], np.int64)),
                            const(f"{name}_stop", np.array([stop], np.int64)), axis1], name)

    labels = op("Gather", [const("labels", head.labels), columns("head/top_i", 0, k, "nearest_i")], "nearest_labels")
    plain = op("Div", [op("ReduceSum", [labels, axis1], "label_sum", keepdims=0), const("k", np.float32(k))],
               "plain_mean")
    if ramped:
        s = columns("head/top_s", 0, k, "nearest_s")
        floor = columns("head/top_s", k, k + 1, "floor")
        width = op("Max", [op("Mul", [op("Sub", [columns("head/top_s", 0, 1, "first"), floor], "span"),
                                      const("ramp", np.float32(head.ramp))], "ramp_width"),
                           eps9], "width")
        w = op("Clip", [op("Div", [op("Sub", [s, floor], "above_floor"), width], "w_raw"),
                        zero, const("one", np.float32(1.0))], "w")
        total = op("ReduceSum", [w, axis1], "total", keepdims=0)
        voted = op("Div", [op("ReduceSum", [op("Mul", [w, labels], "wl"), axis1], "wl_sum", keepdims=0),
                           op("Max", [total, const("eps30", np.float32(1e-30))], "total_clamped")], "voted")
        knn = op("Where", [op("Greater", [total, zero], "has_weight"), voted, plain], "knn")
    else:  # fewer index prompts than k + 1: plain mean (as EmbeddingHead.knn)
        knn = plain
    nodes.append(helper.make_node("Identity", [knn], [KNN_OUTPUT], name="head/knn_out"))
    # Support: the mean similarity of the nearest SUPPORT_K index prompts (as EmbeddingHead.vote).
    m = min(SUPPORT_K, k + 1 if ramped else k)
    support_sum = op("ReduceSum", [columns("head/top_s", 0, m, "support_s"), axis1], "support_sum", keepdims=0)
    nodes.append(helper.make_node("Div", [support_sum, const("support_k", np.float32(m))], [SUPPORT_OUTPUT],
                                  name="head/support_out"))
    outputs = [helper.make_tensor_value_info(KNN_OUTPUT, TensorProto.FLOAT, ["batch_size"]),
               helper.make_tensor_value_info(SUPPORT_OUTPUT, TensorProto.FLOAT, ["batch_size"])]

    if head.clf_w is not None:
        assert head.clf_b is not None
        logits = op("Add", [op("MatMul", [pooled[1], const("clf_w_t", head.clf_w.T.astype(np.float32))], "clf_z"),
                            const("clf_b", head.clf_b.astype(np.float32))], "clf_logits")
        probs = op("Softmax", [logits], "clf_p", axis=-1)
        # P(strong better) - P(weak better) = p . [-1, 0, 1]
        diff = op("MatMul", [probs, const("clf_diff", np.array([[-1.0], [0.0], [1.0]], np.float32))], "clf_diff_col")
        nodes.append(helper.make_node("Reshape", [diff, const("flat", np.array([-1], np.int64))], [CLF_OUTPUT],
                                      name="head/clf_out"))
        outputs.append(helper.make_tensor_value_info(CLF_OUTPUT, TensorProto.FLOAT, ["batch_size"]))

    nodes.append(helper.make_node("Concat", pooled, [POOLED_OUTPUT], name="head/pooled_out", axis=1)
                 if len(pooled) > 1 else helper.make_node("Identity", pooled, [POOLED_OUTPUT], name="head/pooled_out"))
    outputs.append(helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, ["batch_size", head.dim]))

    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(outputs)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return {"index_rows": n, "k": k}
