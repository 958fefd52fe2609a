"""Triton python-backend model for the router classifier. This file lives with the Triton model
(model_repository/router_classifier/) and ``make export`` copies it as ``model.py`` into every
version directory, next to ``model.onnx``, the tokenizer files and ``metadata.json``, so code,
tokenizer and weights are versioned together. The export and evaluation load it from here
(export/served_model.py) to score prompts exactly as Triton does.

Contract: input ``text`` (TYPE_STRING, dims [1], batched): raw prompt text. Outputs, each computed
only when requested:
- ``score`` (TYPE_FP32, dims [1]): need for the strong model, in [0, 1] (classifier export:
  P(strong model needed); kNN head with gap labels: the similar training prompts' mean of
  (strong - weak + 1) / 2; see metadata.json ``label_definition``);
- ``strong_share`` (TYPE_FP32, dims [1]): the fraction of the version's calibration prompts
  (``calibration.npy``: their sorted scores) that score >= this prompt, so routing to the strong
  model iff ``strong_share <= s`` sends about a share ``s`` of traffic there;
- ``confidence`` (TYPE_FP32, dims [1]): how familiar the prompt is, in [0, 1]: the share of the
  version's reference prompts (unseen in-domain prompts) that are no more similar to the training
  data than this one; NaN for versions exported without it (``--head blend`` has it);
- ``calibration`` (TYPE_FP32, dims [9]): the score thresholds that send 10%, 20%, ..., 90% of the
  calibration traffic to the strong model (the same for every prompt; ask with any text, e.g. "");
- ``calibration_shares`` (TYPE_FP32, dims [9]): those shares (``CALIBRATION_SHARES``, the one
  source of the grid: the router's client labels the thresholds with them);
- ``calibration_quality`` (TYPE_FP32, dims [9]): the version's quality/cost curve: the quality, as
  a fraction of the strong model's, measured on its validation prompts when that share of them
  (highest scores first) goes to the strong model (``metadata.json`` ``validation``); NaN for
  versions exported without it.

Scoring (``metadata.json`` ``head``): the ONNX model is either a text classifier (logits; the
score is the softmax of the positive class) or, with ``head.type == "embedding"``, a sentence
encoder with its head appended to the graph (export/onnx_head.py): mean pooling, then a
nearest-neighbour vote over the training prompts' embeddings (centred on their mean unless exported
with ``--knn-center none``, L2-normalised; soft labels), output ``knn_score``. An index that holds
MMLU's question-only copies (``--augment question-only-gated``, the default) takes one more graph
input, ``lists_options`` (computed here from the text): the copies vote only for prompts that list
A-D options themselves. The ensemble export
has a second encoder branch in the same graph, a fine-tuned copy sharing the frozen lower layers,
whose pooled embedding feeds a 3-class linear head (output ``clf_score``); here the two scores are
blended by rank (``RankBlend``, references in ``head.npz``).
One onnxruntime run per batch, and on a GPU the whole head runs there: only a few floats per
prompt come back to the host.

Serving needs only numpy, ``tokenizers`` and onnxruntime (no torch, no transformers). On a GPU where
onnxruntime is the CPU build, ``torch_graph.py`` (versioned beside this file) runs the same
``model.onnx`` with torch and CUDA graphs (``engine``).
``ClassifierRuntime`` is the same preprocessing + inference outside Triton (evaluation, tests).

Settings (config.pbtxt ``parameters``, overridden by environment variables):
- ``device`` / ROUTER_CLASSIFIER_DEVICE: ``auto`` (a GPU when onnxruntime-gpu or torch sees one,
  else CPU), ``cpu`` or ``cuda``.
- ``engine`` / ROUTER_CLASSIFIER_ENGINE: ``auto``, ``onnxruntime`` or ``torch`` (``choose_engine``).
- ``intra_op_threads`` / ROUTER_CLASSIFIER_THREADS: onnxruntime intra-op threads, 0 = auto
  (half the cores, at most 4: the box also runs Triton itself and the LLMs).
- ``precision`` / ROUTER_CLASSIFIER_PRECISION: ``auto`` (the int8 model on CPU when the version has
  one, fp32 on a GPU), ``fp32`` or ``int8``.
- ``prompt_workers`` / ROUTER_CLASSIFIER_PROMPT_WORKERS: the int8 model runs prompt by prompt; the
  prompts of one batch run this many at a time, 0 = auto (the cores over the intra-op threads,
  so that a full batch keeps every core busy without oversubscribing them). A lone prompt runs
  as fast as before; under load, batches use every core. "Cores": the affinity mask capped by a
  cgroup CPU limit, for both settings.
- ``lone_prompt_threads`` / ROUTER_CLASSIFIER_LONE_PROMPT_THREADS: 0 = off (the default); above
  ``intra_op_threads``, a batch of one prompt (what Triton hands over when requests do not queue)
  runs on a second session with this many threads, spinning only during the run. CPU only. It
  pays where cores stay awake (steady traffic, dedicated cores), not after idle gaps on a VM
  (``_lone_prompt_session``).

numpy: Triton <= 2.51's stub needs numpy < 2 (see ``initialize``); outputs are plain owned
C-contiguous float32 arrays either way. (``pb_utils.Tensor.from_dlpack`` on a numpy array, which
would sidestep the numpy dtype struct, crashes the 2.51 stub: its capsule renaming breaks numpy's
capsule destructor.)
"""
from __future__ import annotations

import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import numpy as np

try:  # present only inside Triton's python-backend stub
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]
except ImportError:
    pb_utils = None

METADATA_FILE = "metadata.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CALIBRATION_FILE = "calibration.npy"
HEAD_FILE = "head.npz"
CALIBRATION_SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OUTPUTS = ("score", "strong_share", "confidence", "calibration", "calibration_shares", "calibration_quality")
# The same for every prompt: no model run.
CALIBRATION_OUTPUTS = ("calibration", "calibration_shares", "calibration_quality")
QUALITY_KEY = "quality_at_calibration_shares"  # metadata.json validation: the quality/cost curve
# outputs of an embedding head attached to the encoder graph (export/onnx_head.py)
KNN_OUTPUT, CLF_OUTPUT, POOLED_OUTPUT, SUPPORT_OUTPUT = "knn_score", "clf_score", "pooled", "knn_support"
# ... and its input beside the tokens, in graphs whose index holds question-only copies (``lists_options``)
OPTIONS_INPUT = "lists_options"


PRECISIONS = ("auto", "fp32", "int8")
ENGINES = ("auto", "onnxruntime", "torch")
TORCH_GRAPH_FILE = "torch_graph.py"  # the GPU path without onnxruntime-gpu, versioned beside this file


@dataclass(frozen=True)
class RuntimeSettings:
    device: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int = 0  # 0 = auto
    device_id: int = 0
    precision: str = "auto"  # auto | fp32 | int8 (see ClassifierRuntime.choose_precision)
    prompt_workers: int = 0  # 0 = auto: prompts of a batch run concurrently (int8 only)
    lone_prompt_threads: int = 0  # 0 = off; > intra_op_threads: threads for a batch of one (CPU only)
    engine: str = "auto"  # auto | onnxruntime | torch (see ClassifierRuntime.choose_engine)


# -- prompt features: signals that carry across tasks (length, structure) ---------------------------
# Cheap (regexes, no model): the blend learns how much they add to the nearest-neighbour vote, and
# they carry the score where the vote has no similar training prompts to go on.
_FEATURE_PATTERNS = {
    "code": re.compile(r"```|\bdef |\breturn\b|\bassert\b|#include|\bprint\(|;\s*$|[{}]|==|=>|\bfunction\b|"
                       r"\bclass \w+|\bimport \w+", re.MULTILINE),
    "math": re.compile(r"\$|\\[a-zA-Z]+|\^|\d\s*[-+*/=<>]\s*\d|\b(?:sqrt|log|sin|cos|integral|derivative|"
                       r"probability|equation|polynomial)\b", re.IGNORECASE),
    "list": re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.MULTILINE),
    "constraint": re.compile(r"\b(?:must|exactly|at least|at most|no more than|without|only|each|every|should|"
                             r"ensure|include|exclude|format|words?|sentences?|paragraphs?)\b", re.IGNORECASE),
    "steps": re.compile(r"\b(?:then|steps?|first|second|third|finally|after|before|calculate|compute|prove|derive|"
                        r"show that|how many|how much|total|remaining|each)\b", re.IGNORECASE),
    "question": re.compile(r"\?"),
    "choices": re.compile(r"^[A-D][.)] ", re.MULTILINE),
}
FEATURE_NAMES = ("log_chars", "log_words", "log_lines", "digits", "non_ascii", *(f"log_{k}" for k in _FEATURE_PATTERNS))


def _log_count(pattern: re.Pattern[str]) -> Callable[[str], float]:
    return lambda t: math.log1p(len(pattern.findall(t)))


_FEATURE_FUNCTIONS: dict[str, Callable[[str], float]] = {
    "log_chars": lambda t: math.log1p(len(t)),
    "log_words": lambda t: math.log1p(len(t.split())),
    "log_lines": lambda t: math.log1p(t.count("\n")),
    "digits": lambda t: sum(c.isdigit() for c in t) / max(len(t), 1),
    "non_ascii": lambda t: sum(ord(c) > 127 for c in t) / max(len(t), 1),
    **{f"log_{k}": _log_count(p) for k, p in _FEATURE_PATTERNS.items()},
}


def prompt_features(texts: Sequence[str], names: Collection[str] = FEATURE_NAMES) -> np.ndarray:
    """[n, len(FEATURE_NAMES)] float32: log counts of length and structure, digit and non-ASCII
    shares. Only the columns in ``names`` are computed (the others stay 0): a served blend asks for
    the features it weighs, and the structure ones cost up to ~3 ms on a 4,000-character prompt."""
    out = np.zeros((len(texts), len(FEATURE_NAMES)), dtype=np.float32)
    for j, name in enumerate(FEATURE_NAMES):
        if name in names:
            f = _FEATURE_FUNCTIONS[name]
            out[:, j] = [f(text) for text in texts]
    return out


# MMLU-style A-D options: lines that start "A." or "A)" ... "D." (the `choices` feature's pattern).
_OPTION_LINE = _FEATURE_PATTERNS["choices"]


def lists_options(texts: Sequence[str]) -> np.ndarray:
    """float32 [n]: 1 where a prompt lists A-D options (lines starting with two or more distinct
    option letters), else 0. The graph input of a head whose index holds question-only copies
    (``OPTIONS_INPUT``): only prompts that list options see those copies."""
    return np.asarray([len({m.group(0)[0] for m in _OPTION_LINE.finditer(t)}) >= 2 for t in texts], np.float32)


def variant_file(name: str, precision: str) -> str:
    """A version's file for ``precision``: ``model.onnx`` (fp32) -> ``model.int8.onnx`` (int8)."""
    if precision == "fp32":
        return name
    stem, _, ext = name.rpartition(".")
    return f"{stem}.{precision}.{ext}"


def _cores() -> int:
    """The cores this process may use: the affinity mask, capped by a cgroup v2 CPU limit (in a
    Kubernetes pod the mask shows every core of the node, the limit what the pod gets)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _auto_threads() -> int:
    return max(1, min(4, _cores() // 2))


def _gpu_device_present() -> bool:
    """An NVIDIA device node: checked before importing torch, which costs a second and 200 MB."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def _torch_graph() -> Any:
    """torch_graph.py from this file's directory (a version directory, or the template's), imported
    by path: Triton's stub and the export load this file by path too."""
    import importlib.util
    import sys

    name = f"router_classifier_torch_graph_{abs(hash(str(Path(__file__).resolve().parent)))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / TORCH_GRAPH_FILE)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"{TORCH_GRAPH_FILE} is missing beside {__file__}: re-export this version")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module by name
        spec.loader.exec_module(module)
    return sys.modules[name]


class ClassifierRuntime:
    """Tokenizer + onnxruntime session of one exported version directory."""

    def __init__(self, version_dir: str | os.PathLike[str], settings: RuntimeSettings = RuntimeSettings(),
                 with_head: bool = True):
        """``with_head=False``: the encoder alone, before its head is attached (the export embeds
        the kNN index with it); ``logits`` then returns the mean-pooled hidden states."""
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
        self.engine = self.choose_engine(settings, ort.get_available_providers())
        if self.engine == "torch":
            import torch

            on_gpu = settings.device.lower() != "cpu" and torch.cuda.is_available()
            if settings.device.lower() == "cuda" and not on_gpu:
                raise RuntimeError("device 'cuda' requested but torch sees no GPU")
            self.providers: list[Any] = []
        else:
            self.providers = self._providers(settings, ort.get_available_providers())
            on_gpu = "CUDAExecutionProvider" in str(self.providers[0])
        # torch runs fp32 graphs only (no kernels for onnxruntime's quantized operators), on a CPU too
        self.precision = self.choose_precision(settings.precision, self.metadata, on_gpu or self.engine == "torch")
        model_file = self.version_dir / variant_file(MODEL_FILE, self.precision)
        if self.engine == "torch":
            self.session: Any = _torch_graph().TorchGraphSession(
                model_file, device=f"cuda:{settings.device_id}" if on_gpu else "cpu", max_length=self.max_length)
            self._lone_session = None
        else:
            self.session = ort.InferenceSession(str(model_file), options, providers=self.providers)
            self._lone_session = self._lone_prompt_session(ort, settings, options, model_file, on_gpu)
        self.input_names = {i.name for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        # An embedding head runs inside the graph (export/onnx_head.py): the graph returns the kNN
        # vote (and the classifier branch's score); only the ensemble's rank blend runs here.
        self.embedding_head = KNN_OUTPUT in outputs
        self.signals: LogisticBlend | None = None  # blend head: the vote and the prompt features
        self.familiarity: Familiarity | None = None
        if self.embedding_head:
            self.score_outputs = [KNN_OUTPUT] + ([CLF_OUTPUT] if CLF_OUTPUT in outputs else [])
            self.blend = RankBlend.load(self.version_dir, self.metadata, self.precision) if with_head else None
            if len(self.score_outputs) == 2 and with_head and self.blend is None:
                raise RuntimeError(f"{self.version_dir}: ensemble model without rank references ({HEAD_FILE})")
            if with_head and SUPPORT_OUTPUT in outputs and (self.metadata.get("head") or {}).get("blend"):
                self.signals = LogisticBlend.load(self.version_dir, self.metadata, self.precision)
                self.familiarity = Familiarity.load(self.version_dir, self.precision)
        # What model_output reads from a graph without an attached head: the encoder alone (every
        # output: one hidden state per branch), or a text classifier (its logits).
        self.hidden_outputs = outputs if not with_head else outputs[:1]
        self.with_head = with_head
        # int8 dynamic quantization scales activations per run (over the whole padded batch), so a
        # prompt's score would depend on what Triton batched it with: quantized models run each
        # prompt alone (no padding either), keeping scores batch-independent.
        self.per_prompt = self.precision == "int8"
        # onnxruntime releases the GIL and a session takes concurrent runs: the prompts of a batch
        # run side by side (2x the prompts/s on 2 cores), each still alone in its run.
        workers = settings.prompt_workers or max(1, _cores() // options.intra_op_num_threads)
        self._prompt_pool = ThreadPoolExecutor(workers, "prompt") if self.per_prompt and workers > 1 else None
        self.calibration_path = self.version_dir / variant_file(CALIBRATION_FILE, self.precision)
        self.calibration_scores = Calibration(np.load(self.calibration_path)) if self.calibration_path.is_file() else None

    def _lone_prompt_session(self, ort: Any, settings: RuntimeSettings, base: Any, model_file: Path,
                             on_gpu: bool) -> Any:
        """A second session of the same model, with ``lone_prompt_threads`` intra-op threads, for a
        batch of one prompt; None when off. Its threads spin during a run and ``force_spinning_stop``
        ends that with the run, so they burn nothing between requests. Batches keep the base
        session and run side by side (``prompt_workers``): more prompts/s on saturated cores.
        Scores are the same (integer products; each prompt still alone in its run).
        Measured on this project's 2-core VM (mmlu-val prompts, 1 thread against 2): 7.7 vs 4.8 ms
        a prompt back to back or 2 ms apart, 8.0 vs 5.8 ms 10 ms apart, but 8.7 vs 11.3 ms 20 ms
        apart: an idle virtual core wakes slowly, and the run waits for it. Hence off by default."""
        threads = settings.lone_prompt_threads
        if on_gpu or threads <= base.intra_op_num_threads:
            return None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.graph_optimization_level = base.graph_optimization_level
        return ort.InferenceSession(str(model_file), options, providers=self.providers)

    @property
    def lone_prompt_threads(self) -> int:
        """Intra-op threads a batch of one prompt runs with (0: not onnxruntime's to say)."""
        session = self._lone_session or self.session
        options = getattr(session, "get_session_options", None)
        return int(options().intra_op_num_threads) if options else 0

    @staticmethod
    def choose_engine(settings: RuntimeSettings, ort_providers: Sequence[str]) -> str:
        """What runs the graph. ``onnxruntime`` always on CPU, and on a GPU when onnxruntime-gpu is
        installed; ``torch`` (torch_graph.py: the same ONNX graph through torch with CUDA graphs)
        on a GPU where onnxruntime is the CPU build, or when asked for (on CPU too, for parity
        checks). ``auto`` picks torch only with a GPU device node, torch and no CUDA provider, so
        CPU serving never imports torch."""
        engine, device = settings.engine.lower(), settings.device.lower()
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {settings.engine!r}")
        if engine != "auto":
            return engine
        if device == "cpu" or "CUDAExecutionProvider" in ort_providers or not _gpu_device_present():
            return "onnxruntime"
        try:
            import torch
        except ImportError:
            return "onnxruntime"
        return "torch" if torch.cuda.is_available() else "onnxruntime"

    @staticmethod
    def choose_precision(requested: str, metadata: dict[str, Any], on_gpu: bool) -> str:
        """Which of the version's models to serve. A version holds the fp32 graph and, exported with
        ``--precision int8``, a dynamic-quantized copy (with its own kNN index and calibration).
        ``auto``: int8 on CPU, where it is about 2x faster; fp32 on a GPU, where onnxruntime has no
        CUDA kernels for the quantized operators (they would run on the CPU) and batches are cheap.
        (Older versions carry the model.py they were exported with, which reads their layout.)"""
        requested = requested.lower()
        if requested not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {requested!r}")
        available = metadata.get("precisions", ["fp32"])
        if requested == "auto":
            return "int8" if "int8" in available and not on_gpu else "fp32"
        if requested not in available:
            raise ValueError(f"this version has no {requested} model (it has {available})")
        return requested

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
        """Model inputs for ``texts``: int64 [batch, longest prompt in the batch (<= max_length)], and
        for a head with gated question-only copies ``OPTIONS_INPUT`` (float32 [batch])."""
        # encode_batch_fast (newer tokenizers) skips the character offsets, which nothing here reads:
        # about a sixth less tokenizer time for a full batch.
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        encodings = encode(list(texts))
        feeds = {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.asarray([e.type_ids for e in encodings], dtype=np.int64)
        if OPTIONS_INPUT in self.input_names:
            feeds[OPTIONS_INPUT] = lists_options(texts)
        return {name: value for name, value in feeds.items() if name in self.input_names}

    def run(self, texts: Sequence[str], names: Sequence[str]) -> list[np.ndarray]:
        """The named per-prompt outputs ([batch] or [batch, width]) for ``texts``: one onnxruntime
        run, or one per prompt for the int8 model."""
        if len(texts) == 1 and self._lone_session is not None:
            return self._run_on(self._lone_session, texts, names)
        if self.per_prompt and len(texts) > 1:
            parts = self._each_prompt(lambda t: self._run_on(self.session, [t], names), texts)
            return [np.concatenate([p[i] for p in parts]) for i in range(len(names))]
        return self._run_on(self.session, texts, names)

    def _run_on(self, session: Any, texts: Sequence[str], names: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in session.run(list(names), self.encode(texts))]

    def _each_prompt(self, fn: Callable[[str], Any], texts: Sequence[str]) -> list[Any]:
        return list(self._prompt_pool.map(fn, texts)) if self._prompt_pool else [fn(t) for t in texts]

    def close(self) -> None:
        if self._prompt_pool is not None:
            self._prompt_pool.shutdown(wait=False)

    def model_output(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's hidden states for ``texts`` (both branches concatenated along the feature
        axis) and the attention mask they were computed with: the encoder-only graph."""
        if self.per_prompt and len(texts) > 1:
            parts = self._each_prompt(lambda t: self.model_output([t]), texts)
            width = max(mask.shape[1] for _, mask in parts)
            outs = [np.pad(o, ((0, 0), (0, width - m.shape[1]), (0, 0))) for o, m in parts]
            masks = [np.pad(m, ((0, 0), (0, width - m.shape[1]))) for _, m in parts]
            return np.concatenate(outs), np.concatenate(masks)
        feeds = self.encode(texts)
        outs = self.session.run(self.hidden_outputs, feeds)
        out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)
        return np.asarray(out, dtype=np.float32), feeds["attention_mask"]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Classifier logits [n, 2] (text-classification export) or the pooled sentence embeddings
        [n, dim] (both branches side by side for the ensemble; what the parity check compares with
        PyTorch)."""
        if self.embedding_head:
            width = next(o.shape[-1] for o in self.session.get_outputs() if o.name == POOLED_OUTPUT)
            return self.run(texts, [POOLED_OUTPUT])[0] if texts else np.zeros((0, width), dtype=np.float32)
        if len(texts) == 0:
            return np.zeros((0, 2), dtype=np.float32)
        if not self.with_head:
            return mean_pool(*self.model_output(texts))
        return self.run(texts, self.hidden_outputs)[0]

    def components(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """An embedding head's branch scores: (kNN vote, classifier branch or None)."""
        if not self.embedding_head:
            raise RuntimeError("components: this version has no embedding head")
        if len(texts) == 0:
            return np.zeros(0, np.float32), (np.zeros(0, np.float32) if len(self.score_outputs) == 2 else None)
        outs = self.run(texts, self.score_outputs)
        return outs[0], (outs[1] if len(outs) == 2 else None)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """P(strong model needed) per text, float32 [len(texts)], in one onnxruntime run."""
        return self.evaluate(texts)[0]

    def evaluate(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(score, confidence or None) per text. Confidence, for a version with a signal blend: the
        share of the version's reference prompts (unseen in-domain prompts) that are no more
        familiar than this one, by the mean similarity of the nearest index prompts; near 0, the
        prompt is unlike the training data."""
        if not self.embedding_head:
            return probabilities(self.logits(texts), self.positive_index), None
        if self.signals is None:
            return self.score_from(*self.components(texts), texts), None
        assert self.familiarity is not None
        if len(texts) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        vote, support = self.run(texts, [KNN_OUTPUT, SUPPORT_OUTPUT])
        return self.signals(vote, prompt_features(texts, self.signals.features_used)), self.familiarity(support)

    def score_from(self, knn: np.ndarray, clf: np.ndarray | None, texts: Sequence[str]) -> np.ndarray:
        """The served score from the branch scores: the kNN vote, the ensemble's rank blend, or the
        blend of the vote and the features of ``texts``."""
        if self.signals is not None:
            return self.signals(knn, prompt_features(texts, self.signals.features_used))
        if clf is None:
            return np.clip(knn, 0.0, 1.0).astype(np.float32)
        assert self.blend is not None
        return self.blend(knn, clf)

    def strong_share(self, scores: np.ndarray) -> np.ndarray:
        if self.calibration_scores is None:
            raise RuntimeError(f"no calibration in {self.version_dir}: re-export this version with `make export`")
        return self.calibration_scores.strong_share(scores)

    def calibration(self) -> np.ndarray:
        if self.calibration_scores is None:
            raise RuntimeError(f"no calibration in {self.version_dir}: re-export this version with `make export`")
        return self.calibration_scores.thresholds()

    def quality(self) -> np.ndarray:
        """The quality/cost curve at ``CALIBRATION_SHARES`` (fractions of the strong model's
        quality on the validation prompts); NaN where the version's metadata does not have it."""
        values = (self.metadata.get("validation") or {}).get(QUALITY_KEY)
        if not isinstance(values, list) or len(values) != len(CALIBRATION_SHARES):
            return np.full(len(CALIBRATION_SHARES), np.nan, np.float32)
        return np.asarray(values, np.float32)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token vectors over the attention mask (sentence-transformers pooling), float32."""
    m = np.asarray(mask, dtype=np.float32)[:, :, None]
    h = np.asarray(hidden, dtype=np.float32)
    return (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


class LogisticBlend:
    """The score of a version exported with ``--head blend``: a logistic regression over the kNN
    vote (as a logit) and the prompt features, standardised, trained on out-of-fold votes from
    two regimes: familiar prompts (random folds) and unfamiliar ones (whole subjects and tasks
    held out), so it learns how far to trust the vote against the features (export/cv.py). The
    vote's support is not an input: its range on served traffic (an index that holds near
    duplicates) is outside what out-of-fold votes show, and a linear model extrapolates it badly;
    it feeds the confidence instead (``Familiarity``)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float):
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef, self.intercept = np.asarray(coef, np.float64), float(intercept)
        # The features with a weight: the only ones worth computing per request (input 0 is the vote).
        self.features_used = frozenset(n for n, c in zip(FEATURE_NAMES, self.coef[1:]) if c != 0.0)

    @staticmethod
    def inputs(vote: np.ndarray, features: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(vote, np.float64), 1e-4, 1 - 1e-4)
        return np.concatenate([np.log(p / (1 - p))[:, None], np.asarray(features, np.float64)], axis=1)

    def raw(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(((x - self.mean) / self.scale) @ self.coef + self.intercept)))

    def __call__(self, vote: np.ndarray, features: np.ndarray) -> np.ndarray:
        return self.raw(self.inputs(vote, features)).astype(np.float32)

    @classmethod
    def load(cls, version_dir: Path, metadata: dict[str, Any], precision: str = "fp32") -> "LogisticBlend":
        with np.load(version_dir / variant_file(HEAD_FILE, precision)) as npz:
            return cls(npz["blend_mean"], npz["blend_scale"], npz["blend_coef"], float(npz["blend_intercept"]))


class Familiarity:
    """Support (mean similarity of the nearest index prompts) -> the share of reference prompts
    (out-of-fold training prompts: unseen, in-domain) whose support is no higher."""

    def __init__(self, reference: np.ndarray):
        self.sorted = np.sort(np.asarray(reference, np.float32).reshape(-1))

    def __call__(self, support: np.ndarray) -> np.ndarray:
        s = np.asarray(support, np.float32).reshape(-1)
        return (np.searchsorted(self.sorted, s, side="right") / max(len(self.sorted), 1)).astype(np.float32)

    @classmethod
    def load(cls, version_dir: Path, precision: str = "fp32") -> "Familiarity":
        with np.load(version_dir / variant_file(HEAD_FILE, precision)) as npz:
            return cls(npz["support_ref"])


class RankBlend:
    """The ensemble's served score: ``knn_weight * rank(kNN) + (1 - knn_weight) * rank(classifier)``,
    each rank the position among that branch's scores of a reference set (``knn_ref``, ``clf_ref`` in
    head.npz), interpolated so the score stays continuous and in [0, 1]. Ranks make the two scales
    comparable without fitting a weight on labels."""

    def __init__(self, knn_weight: float, knn_ref: np.ndarray, clf_ref: np.ndarray):
        self.knn_weight = float(knn_weight)
        # rank lookup tables, built once (not per request)
        self.knn_ranks, self.clf_ranks = rank_table(knn_ref), rank_table(clf_ref)

    @classmethod
    def load(cls, version_dir: Path, metadata: dict[str, Any], precision: str = "fp32") -> "RankBlend | None":
        """The version's blend (each precision has its own references), or None without a classifier branch."""
        path = version_dir / variant_file(HEAD_FILE, precision)
        if "classifier" not in (metadata.get("head") or {}) or not path.is_file():
            return None
        with np.load(path) as npz:
            return cls(float(metadata["head"].get("knn_weight", 0.5)), npz["knn_ref"], npz["clf_ref"])

    def __call__(self, knn: np.ndarray, clf: np.ndarray) -> np.ndarray:
        score = (self.knn_weight * rank_in(self.knn_ranks, knn)
                 + (1.0 - self.knn_weight) * rank_in(self.clf_ranks, clf))
        return np.clip(score, 0.0, 1.0).astype(np.float32)


def rank_table(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct reference scores, their average rank (i + 0.5) / n in the sorted reference): the
    knots ``rank_in`` interpolates between. Built once per head, not per request."""
    ref = np.sort(np.asarray(reference, dtype=np.float64).reshape(-1))
    if len(ref) == 0:
        raise ValueError("empty reference")
    unique, first, counts = np.unique(ref, return_index=True, return_counts=True)
    return unique, (first + (counts - 1) / 2.0 + 0.5) / len(ref)


def rank_in(table: tuple[np.ndarray, np.ndarray], values: np.ndarray) -> np.ndarray:
    """Where ``values`` fall among the reference scores of ``table`` (``rank_table``), in [0, 1]:
    piecewise linear through the knots, so ties share their average rank and nearby values get
    nearby ranks (no steps for the parity check to trip on); flat beyond the ends."""
    return np.interp(np.asarray(values, dtype=np.float64), *table)


class Calibration:
    """Sorted scores of a calibration set: score <-> share of traffic at or above it."""

    def __init__(self, scores: np.ndarray):
        self.sorted = np.sort(np.asarray(scores, dtype=np.float32).reshape(-1))
        if len(self.sorted) == 0:
            raise ValueError("empty calibration")

    def strong_share(self, scores: np.ndarray) -> np.ndarray:
        """Fraction of calibration scores >= each score, float32."""
        s = np.asarray(scores, dtype=np.float32).reshape(-1)
        below = np.searchsorted(self.sorted, s, side="left")
        return ((len(self.sorted) - below) / len(self.sorted)).astype(np.float32)

    def threshold_for_share(self, share: float) -> float:
        """The score threshold (strong when score >= it) that sends ``share`` of the calibration strong."""
        desc = self.sorted[::-1]
        k = int(round(share * len(desc)))
        if k <= 0:
            return float(np.nextafter(desc[0], np.float32(np.inf)))
        return float(desc[min(k, len(desc)) - 1])

    def thresholds(self, shares: Sequence[float] = CALIBRATION_SHARES) -> np.ndarray:
        return np.asarray([self.threshold_for_share(s) for s in shares], dtype=np.float32)


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


def requested_outputs(request: Any) -> tuple[str, ...]:
    """The outputs a request asked for, in OUTPUTS order (Triton lists all of them when the client
    names none); ``score`` alone for a request object without the method."""
    method = getattr(request, "requested_output_names", None)
    names = set(method()) if callable(method) else {"score"}
    unknown = names - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown outputs requested: {sorted(unknown)}")
    return tuple(n for n in OUTPUTS if n in names) or ("score",)


def settings_from_config(model_config: dict[str, Any], environ: dict[str, str] | None = None) -> RuntimeSettings:
    env = os.environ if environ is None else environ
    params = {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}
    device = env.get("ROUTER_CLASSIFIER_DEVICE") or params.get("device") or "auto"
    threads = env.get("ROUTER_CLASSIFIER_THREADS") or params.get("intra_op_threads") or "0"
    precision = env.get("ROUTER_CLASSIFIER_PRECISION") or params.get("precision") or "auto"
    workers = env.get("ROUTER_CLASSIFIER_PROMPT_WORKERS") or params.get("prompt_workers") or "0"
    lone = env.get("ROUTER_CLASSIFIER_LONE_PROMPT_THREADS") or params.get("lone_prompt_threads") or "0"
    engine = env.get("ROUTER_CLASSIFIER_ENGINE") or params.get("engine") or "auto"
    return RuntimeSettings(device=device, intra_op_threads=int(threads), precision=precision,
                           prompt_workers=int(workers), lone_prompt_threads=int(lone), engine=engine)


class TritonPythonModel:
    """Triton entry point: all requests of a dynamic batch go through one onnxruntime run."""

    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        settings = settings_from_config(model_config)
        if args.get("model_instance_kind") == "GPU":
            settings = replace(settings, device_id=int(args["model_instance_device_id"]))
        self.runtime = ClassifierRuntime(Path(__file__).resolve().parent, settings)
        if int(np.__version__.split(".")[0]) >= 2:
            # Triton <= 2.51's stub is built with pybind11 < 2.12, which misreads numpy 2's dtype
            # struct: TYPE_STRING inputs arrive garbled and numpy outputs come back empty. Fixed in
            # Triton >= 2.52 (python_backend PR #384); with 2.51 the serving image needs numpy < 2.
            print("router_classifier: WARNING numpy >= 2 in the python-backend environment: "
                  "Triton <= 2.51 needs numpy < 2 (string inputs and outputs break)", flush=True)
        if self.runtime.engine == "torch" and self.runtime.precision == "fp32" and self.runtime.session.on_cuda:
            # Every bucket's CUDA graph now, while Triton loads the model: no request pays a capture.
            self.runtime.session.warmup(lambda m: print(f"router_classifier: {m}", flush=True))
        print(f"router_classifier: loaded {self.runtime.version_dir} providers={self.runtime.session.get_providers()} "
              f"precision={self.runtime.precision} max_length={self.runtime.max_length} "
              f"lone_prompt_threads={self.runtime.lone_prompt_threads}", flush=True)

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        spans: list[tuple[int, int, tuple[str, ...]] | Exception] = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, "text")
                if tensor is None:
                    raise ValueError("missing input 'text'")
                wanted = requested_outputs(request)
                batch = [_decode(v) for v in np.asarray(tensor.as_numpy(), dtype=object).reshape(-1)]
                if not set(wanted) <= set(CALIBRATION_OUTPUTS):  # only the calibration: no model run
                    spans.append((len(texts), len(texts) + len(batch), wanted))
                    texts.extend(batch)
                else:
                    spans.append((0, len(batch), wanted))
            except Exception as exc:  # one bad request must not fail its batch-mates
                spans.append(exc)

        try:
            scores, confidence = self.runtime.evaluate(texts) if texts else (np.zeros(0, np.float32), None)
            shares = (self.runtime.strong_share(scores) if any(
                not isinstance(sp, Exception) and "strong_share" in sp[2] for sp in spans) else None)
            calibration = (self.runtime.calibration() if any(
                not isinstance(sp, Exception) and "calibration" in sp[2] for sp in spans) else None)
        except Exception as exc:
            return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"router_classifier: {exc}"))
                    for _ in requests]

        responses = []
        for span in spans:
            if isinstance(span, Exception):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(span))))
                continue
            start, end, wanted = span
            # Fresh, owned, C-contiguous, native-endian float32 arrays per response: no views into
            # the batch arrays, no numpy scalar types, nothing the stub must convert.
            tensors = []
            for name in wanted:
                if name in CALIBRATION_OUTPUTS:
                    out = np.empty((end - start, len(CALIBRATION_SHARES)), dtype=np.float32)
                    out[:] = {"calibration": calibration, "calibration_shares": CALIBRATION_SHARES,
                              "calibration_quality": self.runtime.quality()}[name]
                else:
                    out = np.empty((end - start, 1), dtype=np.float32)
                    values = {"score": scores, "strong_share": shares, "confidence": confidence}[name]
                    # None: a version without a familiarity reference (confidence unknown); shares
                    # are computed whenever a request asks for them.
                    out[:, 0] = np.nan if values is None else values[start:end]
                tensors.append(pb_utils.Tensor(name, out))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.runtime.close()
        self.runtime = None  # type: ignore[assignment]

