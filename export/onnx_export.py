"""ONNX export of the fine-tuned classifier with optimum's exporter, and the parity check
of the exported artefact (served code path: tokenizers + onnxruntime) against PyTorch."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# What a version directory needs from the Hugging Face save: the tokenizer (tokenizer.json is the
# one served; the others keep the directory loadable by transformers) and the model config.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
CONFIG_FILE = "config.json"


def export_onnx(hf_dir: Path, out_dir: Path, opset: int | None = None, task: str = "text-classification") -> Path:
    """optimum's ONNX exporter (task text-classification, or feature-extraction for an encoder whose
    embeddings feed a numpy head); returns the path of model.onnx.

    optimum's own output validation is skipped: ``parity_check`` compares the served code path
    (``tokenizers`` preprocessing + onnxruntime) with PyTorch, which covers more."""
    import warnings

    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():  # torch.onnx tracer warnings about constant masks are expected
        warnings.simplefilter("ignore")
        main_export(
            model_name_or_path=str(hf_dir),
            output=out_dir,
            task=task,
            opset=opset,
            device="cpu",
            do_validation=False,
            local_files_only=True,
        )
    model = out_dir / "model.onnx"
    if not model.is_file():
        raise RuntimeError(f"optimum wrote no model.onnx into {out_dir}: {sorted(p.name for p in out_dir.iterdir())}")
    return model


def copy_artifacts(hf_dir: Path, onnx_dir: Path, stage: Path) -> list[str]:
    """model.onnx + tokenizer files + config.json into the staged version directory."""
    copied = []
    shutil.copy2(onnx_dir / "model.onnx", stage / "model.onnx")
    copied.append("model.onnx")
    for name in (*TOKENIZER_FILES, CONFIG_FILE):
        source = hf_dir / name if (hf_dir / name).exists() else onnx_dir / name
        if source.exists():
            shutil.copy2(source, stage / name)
            copied.append(name)
    if "tokenizer.json" not in copied:
        raise RuntimeError("the tokenizer has no tokenizer.json (a fast tokenizer is required for serving)")
    return copied


def merge_encoders(base: Path, tuned: Path, out: Path, tuned_output: str = "ft_last_hidden_state") -> dict[str, int]:
    """One ONNX graph computing both encoders from the same inputs: ``base``'s outputs plus
    ``tuned``'s first output renamed ``tuned_output``. Weights equal in both (the layers frozen
    during fine-tuning) are stored once, and nodes that then compute the same thing from the same
    inputs are merged, so the frozen trunk runs once and only the fine-tuned layers run twice.
    Returns node counts before and after the merge."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(base)), onnx.load(str(tuned))
    ga, gb = a.graph, b.graph
    if [i.name for i in ga.input] != [i.name for i in gb.input]:
        raise ValueError(f"encoders take different inputs: {[i.name for i in ga.input]} vs {[i.name for i in gb.input]}")
    inputs = {i.name for i in ga.input}

    def content(t: Any) -> tuple[int, tuple[int, ...], str]:
        return t.data_type, tuple(t.dims), hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest()

    by_content = {content(t): t.name for t in ga.initializer}
    rename: dict[str, str] = {}
    extra_initializers = []  # the tuned encoder's own weights
    for t in gb.initializer:
        shared = by_content.get(content(t))
        rename[t.name] = shared or "ft/" + t.name
        if shared is None:
            t.name = rename[t.name]
            extra_initializers.append(t)
    for node in gb.node:
        rename.update({o: "ft/" + o for o in node.output if o and o not in rename})

    def renamed(name: str) -> str:
        return name if (not name or name in inputs) else rename.get(name, name)

    nodes = list(ga.node)
    for node in gb.node:
        node.input[:] = [renamed(x) for x in node.input]
        node.output[:] = [renamed(x) for x in node.output]
        node.name = "ft/" + node.name
        nodes.append(node)
    # Common-subexpression elimination in topological order: the same op with the same attributes
    # on the same inputs reuses the first node's outputs.
    seen: dict[tuple[Any, ...], Any] = {}
    alias: dict[str, str] = {}
    kept = []
    for node in nodes:
        node.input[:] = [alias.get(x, x) for x in node.input]
        key = (node.domain, node.op_type, tuple(node.input),
               tuple(sorted(attr.SerializeToString() for attr in node.attribute)))
        twin = seen.get(key)
        if twin is not None and len(twin.output) == len(node.output):
            alias.update(zip(node.output, twin.output))
            continue
        seen[key] = node
        kept.append(node)
    source = renamed(gb.output[0].name)
    kept.append(onnx.helper.make_node("Identity", [alias.get(source, source)], [tuned_output], name="ft/output"))
    output = onnx.ValueInfoProto()
    output.CopyFrom(gb.output[0])
    output.name = tuned_output
    del ga.node[:]
    ga.node.extend(kept)
    ga.initializer.extend(extra_initializers)
    ga.output.append(output)
    del ga.value_info[:]  # stale shape annotations of the base graph alone
    onnx.checker.check_model(a)
    onnx.save(a, str(out))
    return {"nodes_before": len(nodes), "nodes_after": len(kept), "shared_initializers": len(gb.initializer)
            - len(extra_initializers)}


def quantize_int8(model: Path, out: Path) -> None:
    """Write ``out``: the int8 dynamic-quantized version of ``model`` (an fp32 ONNX file): int8
    weights, activations quantized per run. On CPU it halves the encoder's latency and quarters
    the file; routing quality is checked against the fp32 scores by the caller."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # DefaultTensorType: float for tensors shape inference leaves untyped (the merged ensemble graph)
    quantize_dynamic(model, out, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": 1})


@dataclass(frozen=True)
class Quantization:
    """How far the int8 model's served scores moved from the fp32 model's (same prompts)."""

    n: int
    max_abs_diff_score: float
    spearman: float
    apgr_fp32: float
    apgr_int8: float
    min_spearman: float

    @property
    def ok(self) -> bool:
        return self.spearman >= self.min_spearman


def compare_scores(fp32: np.ndarray, int8: np.ndarray, apgr_fp32: float, apgr_int8: float,
                   min_spearman: float) -> Quantization:
    from export.metrics import spearman

    return Quantization(n=len(fp32), max_abs_diff_score=float(np.max(np.abs(fp32 - int8))) if len(fp32) else 0.0,
                        spearman=spearman(fp32, int8), apgr_fp32=apgr_fp32, apgr_int8=apgr_int8,
                        min_spearman=min_spearman)


@dataclass(frozen=True)
class Parity:
    n: int
    max_abs_diff_prob: float
    max_abs_diff_logit: float
    token_ids_equal: bool
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.token_ids_equal and self.max_abs_diff_prob <= self.tolerance and self.max_abs_diff_logit <= self.tolerance


def parity_check(
    runtime: Any, hf_tokenizer: Any, torch_logits: np.ndarray, prompts: list[str], max_length: int,
    tolerance: float = 1e-4, batch_size: int = 64, reference: Any = None,
) -> tuple[Parity, np.ndarray]:
    """Run the served code path over ``prompts`` and compare with PyTorch's logits (or, for an
    embedding head, pooled embeddings) of the same prompts. An embedding head runs in the graph: its
    branch scores are compared with ``reference`` (export/onnx_head.py's numpy head) applied to the
    PyTorch embeddings. Returns the check and the served scores."""
    from export.served_model import POOLED_OUTPUT, lists_options, probabilities

    hf_ids = hf_tokenizer(prompts, truncation=True, max_length=max_length)["input_ids"]
    # Served ids without the batch padding, to compare with the unpadded transformers ids.
    served_ids = [[t for t, m in zip(e.ids, e.attention_mask) if m] for e in runtime.tokenizer.encode_batch(prompts)]
    if not runtime.embedding_head:
        logits = np.concatenate([runtime.logits(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
                                ) if prompts else np.zeros((0, torch_logits.shape[1]), dtype=np.float32)
        probs = probabilities(logits, runtime.positive_index)
        compared, torch_compared = probs, probabilities(torch_logits, runtime.positive_index)
    else:
        if reference is None:
            raise ValueError("parity_check: an embedding head needs its numpy reference")
        names = [*runtime.score_outputs, POOLED_OUTPUT]  # one run gives the branch scores and embeddings
        runs = [runtime.run(prompts[i : i + batch_size], names) for i in range(0, len(prompts), batch_size)]
        branches = [np.concatenate([r[j] for r in runs]) for j in range(len(names) - 1)]
        logits = np.concatenate([r[-1] for r in runs])
        probs = runtime.score_from(branches[0], branches[1] if len(branches) == 2 else None, prompts)
        # Compared per branch score (kNN vote, classifier): the ensemble's rank blend maps a 1e-7
        # score difference to a rank difference as steep as the reference scores are dense.
        compared = np.concatenate(branches)
        torch_compared = np.concatenate([c for c in reference.components(torch_logits, lists_options(prompts))
                                         if c is not None])
    parity = Parity(
        n=len(prompts),
        max_abs_diff_prob=float(np.max(np.abs(compared - torch_compared))) if len(prompts) else 0.0,
        max_abs_diff_logit=float(np.max(np.abs(logits - torch_logits))) if len(prompts) else 0.0,
        token_ids_equal=[list(x) for x in hf_ids] == served_ids,
        tolerance=tolerance,
    )
    return parity, probs
