"""Triton python-backend model for the router classifier (template: copied as ``model.py`` into
every version directory, next to ``model.onnx``, the tokenizer files and ``metadata.json``, so
code, tokenizer and weights are versioned together).

Contract: input ``text`` (TYPE_STRING, dims [1], batched): raw prompt text; output ``score``
(TYPE_FP32, dims [1]): P(strong model needed) in [0, 1].

Serving needs only numpy, ``tokenizers`` and onnxruntime (no torch, no transformers).
``ClassifierRuntime`` is the same preprocessing + inference outside Triton (evaluation, tests).

Settings (config.pbtxt ``parameters``, overridden by environment variables):
- ``device`` / ROUTER_CLASSIFIER_DEVICE: ``auto`` (CUDA when onnxruntime-gpu sees a GPU, else
  CPU), ``cpu`` or ``cuda``.
- ``intra_op_threads`` / ROUTER_CLASSIFIER_THREADS: onnxruntime intra-op threads, 0 = auto
  (half the visible cores, at most 4: the box also runs Triton itself and the LLMs).

numpy: Triton <= 2.51's stub needs numpy < 2 (see ``initialize``); outputs are plain owned
C-contiguous float32 arrays either way. (``pb_utils.Tensor.from_dlpack`` on a numpy array, which
would sidestep the numpy dtype struct, crashes the 2.51 stub: its capsule renaming breaks numpy's
capsule destructor.)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

try:  # present only inside Triton's python-backend stub
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]
except ImportError:
    pb_utils = None

METADATA_FILE = "metadata.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class RuntimeSettings:
    device: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int = 0  # 0 = auto
    device_id: int = 0


def _auto_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))


class ClassifierRuntime:
    """Tokenizer + onnxruntime session of one exported version directory."""

    def __init__(self, version_dir: str | os.PathLike[str], settings: RuntimeSettings = RuntimeSettings()):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.version_dir = Path(version_dir)
        self.metadata: dict[str, Any] = json.loads((self.version_dir / METADATA_FILE).read_text(encoding="utf-8"))
        self.max_length = int(self.metadata["max_length"])
        self.positive_index = int(self.metadata.get("positive_label_index", 1))

        self.tokenizer = Tokenizer.from_file(str(self.version_dir / TOKENIZER_FILE))
        # The saved tokenizer.json may carry a fixed padding length (e.g. 128 or 512): drop it and
        # pad each batch only to its longest prompt; truncate as in training.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad_token = str(self.metadata.get("pad_token", "[PAD]"))
        pad_id = self.tokenizer.token_to_id(pad_token)
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad_token)

        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads or _auto_threads()
        options.inter_op_num_threads = 1
        # Don't busy-wait between requests: the CPU is shared with Triton and the LLMs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.providers = self._providers(settings, ort.get_available_providers())
        self.session = ort.InferenceSession(str(self.version_dir / MODEL_FILE), options, providers=self.providers)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name

    @staticmethod
    def _providers(settings: RuntimeSettings, available: Sequence[str]) -> list[Any]:
        device = settings.device.lower()
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {settings.device!r}")
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise RuntimeError("device 'cuda' requested but onnxruntime has no CUDAExecutionProvider")
        if device != "cpu" and "CUDAExecutionProvider" in available:
            return [("CUDAExecutionProvider", {"device_id": settings.device_id}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Model inputs for ``texts``: int64 [batch, longest prompt in the batch (<= max_length)]."""
        encodings = self.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: value for name, value in feeds.items() if name in self.input_names}

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, 2), dtype=np.float32)
        return np.asarray(self.session.run([self.output_name], self.encode(texts))[0], dtype=np.float32)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """P(strong model needed) per text, float32 [len(texts)], in one onnxruntime run."""
        return probabilities(self.logits(texts), self.positive_index)


def probabilities(logits: np.ndarray, positive_index: int = 1) -> np.ndarray:
    """Softmax probability of the positive class (sigmoid for a single-logit head)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1 or z.shape[-1] == 1:
        p = 1.0 / (1.0 + np.exp(-z.reshape(-1)))
    else:
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        p = e[:, positive_index] / e.sum(axis=-1)
    return p.astype(np.float32)


def _decode(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def settings_from_config(model_config: dict[str, Any], environ: dict[str, str] | None = None) -> RuntimeSettings:
    env = os.environ if environ is None else environ
    params = {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}
    device = env.get("ROUTER_CLASSIFIER_DEVICE") or params.get("device") or "auto"
    threads = env.get("ROUTER_CLASSIFIER_THREADS") or params.get("intra_op_threads") or "0"
    return RuntimeSettings(device=device, intra_op_threads=int(threads))


class TritonPythonModel:
    """Triton entry point: all requests of a dynamic batch go through one onnxruntime run."""

    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        settings = settings_from_config(model_config)
        if args.get("model_instance_kind") == "GPU":
            settings = RuntimeSettings(settings.device, settings.intra_op_threads, int(args["model_instance_device_id"]))
        self.runtime = ClassifierRuntime(Path(__file__).resolve().parent, settings)
        if int(np.__version__.split(".")[0]) >= 2:
            # Triton <= 2.51's stub is built with pybind11 < 2.12, which misreads numpy 2's dtype
            # struct: TYPE_STRING inputs arrive garbled and numpy outputs come back empty. Fixed in
            # Triton >= 2.52 (python_backend PR #384); with 2.51 the serving image needs numpy < 2.
            print("router_classifier: WARNING numpy >= 2 in the python-backend environment: "
                  "Triton <= 2.51 needs numpy < 2 (string inputs and outputs break)", flush=True)
        print(f"router_classifier: loaded {self.runtime.version_dir} providers={self.runtime.session.get_providers()} "
              f"max_length={self.runtime.max_length}", flush=True)

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        spans: list[tuple[int, int] | Exception] = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, "text")
                if tensor is None:
                    raise ValueError("missing input 'text'")
                batch = [_decode(v) for v in np.asarray(tensor.as_numpy(), dtype=object).reshape(-1)]
                spans.append((len(texts), len(texts) + len(batch)))
                texts.extend(batch)
            except Exception as exc:  # one bad request must not fail its batch-mates
                spans.append(exc)

        try:
            scores = self.runtime.score(texts)
        except Exception as exc:
            return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"router_classifier: {exc}"))
                    for _ in requests]

        responses = []
        for span in spans:
            if isinstance(span, Exception):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(span))))
                continue
            start, end = span
            # A fresh, owned, C-contiguous, native-endian float32 [n, 1] array per response: no views
            # into the batch array, no numpy scalar types, nothing the stub must convert.
            out = np.empty((end - start, 1), dtype=np.float32)
            out[:, 0] = scores[start:end]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("score", out)]))
        return responses

    def finalize(self) -> None:
        self.runtime = None  # type: ignore[assignment]

