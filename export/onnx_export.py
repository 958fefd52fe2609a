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


def quantize_int8(model: Path) -> None:
    """Replace ``model`` (an fp32 ONNX file) by its int8 dynamic-quantized version: int8 weights,
    activations quantized per batch at run time. On CPU it halves the encoder's latency and
    quarters the file; routing quality is checked against the fp32 scores by the caller."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = model.with_name(model.stem + ".int8.onnx")
    quantize_dynamic(model, tmp, weight_type=QuantType.QInt8)
    tmp.replace(model)


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
    tolerance: float = 1e-4, batch_size: int = 64,
) -> tuple[Parity, np.ndarray]:
    """Run the served code path over ``prompts`` and compare with PyTorch's logits (or, for an
    embedding head, pooled embeddings) of the same prompts. Returns the check and the served scores."""
    from export.triton_classifier_model import probabilities

    logits = np.concatenate(
        [runtime.logits(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    ) if prompts else np.zeros((0, torch_logits.shape[1]), dtype=np.float32)
    hf_ids = hf_tokenizer(prompts, truncation=True, max_length=max_length)["input_ids"]
    # Served ids without the batch padding, to compare with the unpadded transformers ids.
    served_ids = [[t for t, m in zip(e.ids, e.attention_mask) if m] for e in runtime.tokenizer.encode_batch(prompts)]
    if runtime.head is None:
        probs = probabilities(logits, runtime.positive_index)
        torch_probs = probabilities(torch_logits, runtime.positive_index)
    else:  # the served score is the head applied to the served embedding (ClassifierRuntime.score)
        probs = runtime.head.score_embeddings(logits)
        torch_probs = runtime.head.score_embeddings(torch_logits)
    parity = Parity(
        n=len(prompts),
        max_abs_diff_prob=float(np.max(np.abs(probs - torch_probs))) if len(prompts) else 0.0,
        max_abs_diff_logit=float(np.max(np.abs(logits - torch_logits))) if len(prompts) else 0.0,
        token_ids_equal=[list(x) for x in hf_ids] == served_ids,
        tolerance=tolerance,
    )
    return parity, probs
