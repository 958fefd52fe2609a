"""A static encoder distilled from the base encoder: one vector per vocabulary token, the prompt's
embedding the mean of its tokens' vectors (the same mean pooling over the same tokenizer's tokens
as the transformer). No attention, no matrix products: a lookup, about 100x less compute per
prompt than MiniLM's six layers: on a 2-core CPU under a millisecond a prompt, the kNN index included.

The vectors start as the base encoder's output for each token alone (``[CLS] token [SEP]``,
mean-pooled), moved by one affine map fitted on the training prompts (``start_map``: what a token
alone lacks of its share in a prompt, learnt once for all tokens, those no prompt holds included),
and are then fitted, by ridge regression towards that start, so that the mean over a
training prompt's tokens reproduces the base encoder's mean-pooled embedding of the whole prompt:
the context the transformer adds is averaged into each token's vector. Only text is used (the
routing labels never), so the fit is unsupervised; the CV fits it inside every fold all the same.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Ridge penalty towards the single-token vectors, chosen on the training files' CV columns in a
# first look (docs/router-quality.md, "A static encoder"): 1.0 barely moves the vectors, 0.0003
# fits MMLU's wording and loses held-out LLMRouter tasks.
STATIC_L2 = 0.01
# Ridge penalty (per prompt) of the affine map from the start vectors' prompt means to the targets
# (`start_map`): a small value, not tuned (384 x 384 weights from tens of thousands of prompts).
MAP_L2 = 1e-3
OUTPUT = "last_hidden_state"  # what the head's mean pooling reads, as from the transformer


def _bag(token_ids: Sequence[Sequence[int]], vocab: int) -> Any:
    """Sparse [prompts, vocab]: each row the prompt's token frequencies over its length (a mean)."""
    import scipy.sparse as sp

    rows = np.repeat(np.arange(len(token_ids)), [len(ids) for ids in token_ids])
    cols = np.fromiter((t for ids in token_ids for t in ids), np.int64, len(rows))
    vals = np.repeat(np.array([1.0 / max(1, len(ids)) for ids in token_ids], np.float32), [len(ids) for ids in token_ids])
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(token_ids), vocab))


def token_ids(tokenizer: Any, prompts: Sequence[str], max_length: int) -> list[list[int]]:
    """The tokens the transformer would see (special tokens included, truncated at ``max_length``)."""
    return list(tokenizer(list(prompts), truncation=True, max_length=max_length)["input_ids"])


def single_token_vectors(encoder: Any, tokenizer: Any, batch: int = 1024,
                         log: Callable[[str], None] = print) -> np.ndarray:
    """[vocab, width]: the encoder's mean-pooled output for each token alone, ``[CLS] t [SEP]``."""
    import torch

    n, width = tokenizer.vocab_size, encoder.config.hidden_size
    out = np.zeros((n, width), np.float32)
    t0 = time.monotonic()
    with torch.inference_mode():
        for start in range(0, n, batch):
            ids = torch.arange(start, min(n, start + batch))
            x = torch.stack([torch.full_like(ids, tokenizer.cls_token_id), ids,
                             torch.full_like(ids, tokenizer.sep_token_id)], 1)
            out[start : start + len(ids)] = encoder(input_ids=x, attention_mask=torch.ones_like(x)
                                                    ).last_hidden_state.mean(1).float().numpy()
            if start // batch % 10 == 9:
                log(f">> static encoder: {start + len(ids)}/{n} single-token vectors ({time.monotonic() - t0:.0f}s)")
    return out


def start_map(start: np.ndarray, token_ids: Sequence[Sequence[int]], targets: np.ndarray,
              l2: float = MAP_L2) -> np.ndarray:
    """The start vectors through one affine map (ridge) fitted so that their prompt means approach
    the targets. A single-token output is far from the same token's share of a whole prompt's
    embedding (cosine 0.20-0.34 to held-out tasks' prompts, against 0.53-0.80 mapped); tokens the
    per-token fit never sees keep their start vector, so mapped they land in the fitted vectors' space."""
    return _mapped(start, _bag(token_ids, len(start)), targets, l2)


def _mapped(start: np.ndarray, bag: Any, targets: np.ndarray, l2: float) -> np.ndarray:
    """`start_map` on an already built token bag (`distill` reuses its own)."""
    x = np.asarray(bag @ start, np.float32)
    xm, ym = x.mean(0), targets.mean(0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + l2 * len(x) * np.eye(x.shape[1], dtype=np.float32), xc.T @ (targets - ym))
    return np.asarray((start - xm) @ w + ym, np.float32)


def distill(start: np.ndarray, token_ids: Sequence[Sequence[int]], targets: np.ndarray, l2: float = STATIC_L2,
            tolerance: float = 1e-3, max_iterations: int = 300, map_start: bool = True) -> np.ndarray:
    """Token vectors V minimising ||mean_tokens(V) - targets||^2 + l2 ||V - start||^2 over the prompts
    (conjugate gradients on the normal equations, all columns at once, over the tokens that occur;
    the others keep their start vector); with ``map_start`` the start vectors first go through
    `start_map`."""
    x = _bag(token_ids, len(start))
    if map_start:
        start = _mapped(start, x, targets, MAP_L2)
    used = np.unique(x.indices)
    x = x[:, used]
    b = np.asarray(x.T @ (targets - x @ start[used]), np.float32)

    def normal(d: np.ndarray) -> np.ndarray:
        return np.asarray(x.T @ (x @ d), np.float32) + np.float32(l2) * d

    d = np.zeros_like(b)
    r, b2 = b.copy(), float((b * b).sum()) or 1.0
    p, rs = r.copy(), (r * r).sum(0)
    for _ in range(max_iterations):
        ap = normal(p)
        alpha = rs / np.maximum((p * ap).sum(0), 1e-30)
        d += alpha * p
        r -= alpha * ap
        rs_new = (r * r).sum(0)
        if np.sqrt(rs_new.sum() / b2) < tolerance:
            break
        p = r + (rs_new / np.maximum(rs, 1e-30)) * p
        rs = rs_new
    vectors = start.astype(np.float32, copy=True)
    vectors[used] += d
    return vectors


def out_of_fold(start: np.ndarray, token_ids: Sequence[Sequence[int]], targets: np.ndarray, folds: np.ndarray,
                l2: float = STATIC_L2, map_start: bool = True,
                log: Callable[[str], None] | None = None) -> np.ndarray:
    """[prompts, width]: each prompt embedded by vectors distilled without its fold, as a new prompt
    is (its own fitted vectors would bring it closer to the full encoder than a new prompt gets)."""
    out, names = np.zeros_like(targets, dtype=np.float32), np.unique(folds)
    for i, f in enumerate(names):
        if log:
            log(f"out-of-fold vectors {i + 1}/{len(names)}")
        rest, held = np.where(folds != f)[0], np.where(folds == f)[0]
        vectors = distill(start, [token_ids[i] for i in rest], targets[rest], l2, map_start=map_start)
        out[held] = embed(vectors, [token_ids[i] for i in held])
    return out


def embed(vectors: np.ndarray, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """[prompts, width]: the mean of each prompt's token vectors (what the exported graph computes)."""
    return np.asarray(_bag(token_ids, len(vectors)) @ vectors, np.float32)


@dataclass
class StaticConfig:
    hidden_size: int
    num_hidden_layers: int = 0


class StaticEncoder:
    """The distilled vectors behind the interface the export's PyTorch steps call on an encoder
    (``encoder(**batch).last_hidden_state``, ``config.hidden_size``)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.config = StaticConfig(hidden_size=vectors.shape[1])

    def __call__(self, input_ids: Any, **_: Any) -> Any:
        import torch
        from types import SimpleNamespace

        return SimpleNamespace(last_hidden_state=torch.from_numpy(self.vectors)[input_ids])


def write_onnx(vectors: np.ndarray, path: Path) -> None:
    """The encoder graph: ``Gather(vectors, input_ids)`` as ``last_hidden_state`` [batch, seq, width],
    with the transformer graph's inputs (the head's pooling reads ``attention_mask``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "sequence_length"])
    out = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch_size", "sequence_length", vectors.shape[1]])
    graph = helper.make_graph([helper.make_node("Gather", ["token_vectors", "input_ids"], [OUTPUT], axis=0)],
                              "static_encoder", [ids, mask], [out],
                              [numpy_helper.from_array(vectors.astype(np.float32), "token_vectors")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="llm-router")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
