"""``python -m export.cv``: the routing-quality protocol. Every choice is made on training data.

Candidates are scored by cross-validation on the training files only:
- ``random``: 5 folds at random over the MMLU training prompts (in-domain, familiar subjects);
- ``subject``: 5 folds that each hold out whole MMLU subjects (the ``source`` field), so every
  prompt is scored by a model that never saw its subject (unfamiliar domains);
- ``source``: MMLU and LLMRouter training prompts together, each fold holding out whole subjects
  or whole LLMRouter tasks (math, code, QA, ...): difficulty that must carry across tasks.
  Each held-out fold is scored by its own model, so these protocols also report the APGR pooled
  within each fold (``fold_pooled_apgr``), the figure to compare candidates on.
Then, once per candidate the CV chose, the validation files are scored by the candidate trained
on all training prompts: mmlu-val, llmrouter-val and zeroeval-ood (MATH level 5 and CRUXEval:
a different model pair, in no training file). Each file is scored with its own default pair.

Embeddings (the base encoder, mean-pooled, max 128 tokens, as served) are computed once and
cached under ``.cache/cv/``; with ``--encoder static`` they are the targets of the static
encoder's vectors, distilled inside every fit. Prints a table and writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from export import metrics
from export.data import DEFAULT_DATA_DIR, REWRITES, load_models, load_routing_set, rewrite, strip_choices
from export.onnx_head import EmbeddingHead, ridge_map
from export.served_model import FEATURE_NAMES, LogisticBlend, lists_options, prompt_features

CACHE = Path(".cache/cv")
MAX_LENGTH = 128
FOLDS = 5


@dataclass
class RoutingData:
    """One file with its default pair's scores, base embeddings and prompt features."""

    name: str
    prompts: list[str]
    sources: list[str]
    weak: np.ndarray
    strong: np.ndarray
    emb: np.ndarray = field(default_factory=lambda: np.zeros((0, 384), np.float32))
    # The question-only copies (MMLU without its A-D scaffolding) that the index also holds, for the
    # rows in `qonly_mask` (the rows whose prompt has the scaffolding); other rows' entries are unused.
    qonly_emb: np.ndarray = field(default_factory=lambda: np.zeros((0, 384), np.float32))
    qonly_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, len(FEATURE_NAMES)), np.float32))
    # With --map-to-full: the full encoder's embeddings of the same rows, what a shallower encoder's
    # `emb` is mapped onto (fitted on the training rows of every fit, never on the rows it scores).
    target_emb: np.ndarray | None = None
    qonly_target_emb: np.ndarray | None = None
    # With --encoder static: these rows embedded, each by vectors fitted without its fold of `folds`
    # (one distillation per fold), what out-of-fold votes on them read, as a new prompt (or a new
    # task's) is embedded; computed only when asked. None: the embeddings do not depend on the rows.
    fold_view: "Callable[[np.ndarray], RoutingData] | None" = None
    # The rows' ids (``export.data``'s): what ``rewrite`` keys a row's chat wording on. Empty for rows
    # built without them; only ``make cv --rewrites`` reads them.
    ids: list[str] = field(default_factory=list)
    _options: tuple[list[str], np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def options(self) -> np.ndarray:
        """1 where the prompt lists A-D options (``lists_options``): as a query, it sees the
        question-only copies. Derived from ``prompts`` and recomputed when they are replaced (by
        assignment or ``dataclasses.replace``), so that it never describes other prompts."""
        if self._options is None or self._options[0] is not self.prompts:
            self._options = (self.prompts, lists_options(self.prompts))
        return self._options[1]

    def held_out(self, folds: np.ndarray) -> "RoutingData":
        """These rows as out-of-fold votes over ``folds`` should read them (see ``fold_view``)."""
        return self.fold_view(folds) if self.fold_view else self

    @property
    def gap(self) -> np.ndarray:
        """The kNN label: (strong - weak + 1) / 2 in [0, 1]."""
        return np.clip((self.strong - self.weak + 1.0) / 2.0, 0.0, 1.0)

    def subset(self, rows: np.ndarray) -> "RoutingData":
        return RoutingData(self.name, [self.prompts[i] for i in rows], [self.sources[i] for i in rows],
                           self.weak[rows], self.strong[rows], self.emb[rows], self.qonly_emb[rows],
                           self.qonly_mask[rows], self.features[rows],
                           None if self.target_emb is None else self.target_emb[rows],
                           None if self.qonly_target_emb is None else self.qonly_target_emb[rows],
                           ids=[self.ids[i] for i in rows] if self.ids else [])

    def index(self, augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The kNN index of these rows: (embeddings, gap labels), question-only copies appended."""
        if not augment or not self.qonly_mask.any():
            return self.emb, self.gap
        return (np.concatenate([self.emb, self.qonly_emb[self.qonly_mask]]),
                np.concatenate([self.gap, self.gap[self.qonly_mask]]))

    def index_copies(self, augment: bool = True) -> np.ndarray:
        """Per row of ``index``: whether it is a question-only copy (they follow the rows)."""
        return np.r_[np.zeros(len(self.prompts), bool), np.ones(int(self.qonly_mask.sum()) if augment else 0, bool)]

    def index_targets(self, augment: bool = True) -> np.ndarray:
        """``target_emb`` in the order of ``index``."""
        if self.target_emb is None or self.qonly_target_emb is None:
            raise ValueError(f"{self.name}: no full-encoder embeddings to map onto (--map-to-full)")
        if not augment or not self.qonly_mask.any():
            return self.target_emb
        return np.concatenate([self.target_emb, self.qonly_target_emb[self.qonly_mask]])


def load(path: Path, models_json: Path) -> RoutingData:
    data = load_routing_set(path, load_models(models_json))
    return RoutingData(path.stem, data.prompts, data.sources, data.weak, data.strong, ids=data.ids)


def _embed(prompts: list[str], encoder: Any, layers: int = 0, max_length: int = MAX_LENGTH) -> np.ndarray:
    suffix = f"|{max_length}" + (f"|layers={layers}" if layers else "")  # all layers: the older cache keys
    key = hashlib.sha256(("\x00".join(prompts) + suffix).encode()).hexdigest()[:20]
    path = CACHE / f"emb-{key}.npy"
    if path.is_file():
        return np.load(path)
    from export.train import predict_embeddings

    tokenizer, model = encoder()
    print(f">> embedding {len(prompts)} prompts (not cached yet: {path})", flush=True)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out = np.zeros((len(prompts), model.config.hidden_size), np.float32)
    out[order] = predict_embeddings(model, tokenizer, [prompts[i] for i in order], max_length)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def prepare(data: RoutingData, encoder: Any, layers: int = 0, full_encoder: Any = None,
            max_length: int = MAX_LENGTH) -> RoutingData:
    """Embeddings (of the encoder's first ``layers`` layers; 0: all; of the first ``max_length``
    tokens), question-only copies, features; with ``full_encoder`` also the full encoder's
    embeddings (what --map-to-full maps onto)."""
    stripped = [strip_choices(p) for p in data.prompts]
    data.qonly_mask = np.array([a != b for a, b in zip(stripped, data.prompts)], dtype=bool)
    copies = [q for q, m in zip(stripped, data.qonly_mask) if m]

    def embed(enc: Any, n_layers: int) -> tuple[np.ndarray, np.ndarray]:
        emb = _embed(data.prompts, enc, n_layers, max_length)
        qonly = np.zeros_like(emb)
        if copies:
            qonly[data.qonly_mask] = _embed(copies, enc, n_layers, max_length)
        return emb, qonly

    data.emb, data.qonly_emb = embed(encoder, layers)
    if full_encoder is not None:
        data.target_emb, data.qonly_target_emb = embed(full_encoder, 0)
    data.features = prompt_features(data.prompts)
    return data


# --- scorers: fit on a training RoutingData, score another ----------------------------------------
@dataclass(frozen=True)
class KnnSpec:
    k: int = 200
    ramp: float = 0.25
    center: bool = True
    augment: bool = True  # index the question-only copies too
    gate: bool = True  # ... seen only by queries that list A-D options (EmbeddingHead ``copies``)
    map_l2: float | None = None  # map `emb` onto `target_emb` (ridge, this L2) before the vote; None: no map


MAP_L2 = 1.0  # --map-to-full's ridge penalty, chosen by the CV below (1 and 100 tried; docs/router-quality.md)


def knn_head(train: RoutingData, spec: KnnSpec) -> EmbeddingHead:
    """The kNN head over an index of ``train``; with ``spec.map_l2`` its map is fitted on ``train``'s
    index rows alone."""
    emb, labels = train.index(spec.augment)
    projection = None if spec.map_l2 is None else ridge_map(emb, train.index_targets(spec.augment), spec.map_l2)
    return EmbeddingHead(emb, labels, spec.k, spec.ramp, center=spec.center, projection=projection,
                         copies=train.index_copies(spec.augment) if spec.gate else None)


def knn_fit_score(train: RoutingData, test: RoutingData, spec: KnnSpec) -> tuple[np.ndarray, np.ndarray]:
    """(vote, support) of ``test`` against an index of ``train``."""
    head = knn_head(train, spec)
    return head.vote(head.embed(test.emb), test.options)


LENGTH_FEATURES = ("log_chars", "log_words", "log_lines")
# Without the features that mark a benchmark's format (MMLU's A-D options, question marks).
STRUCTURE_FEATURES = tuple(n for n in FEATURE_NAMES if n not in ("log_choices", "log_question"))
# --blend-features of `make export`: which prompt features the blend may weigh. `length` is what the
# cross-validation chose (docs/router-quality.md).
BLEND_FEATURES = {"length": LENGTH_FEATURES, "structure": STRUCTURE_FEATURES, "all": FEATURE_NAMES}
BLEND_L2 = 100.0  # chosen by the CV below (1, 100, 1000 tried: 100 and 1000 tie, 1 is lower)


def fit_blend(vote: np.ndarray, features: np.ndarray, target: np.ndarray, l2: float = BLEND_L2,
              features_used: tuple[str, ...] | None = None) -> LogisticBlend:
    """The served blend (LogisticBlend, in the Triton model's code) fitted by Newton's method on
    the L2-penalised cross-entropy with soft targets (the gap label). Constant inputs (a vote of
    0.5 everywhere: the features alone) get a zero weight, and so do features not in
    ``features_used`` (default: all)."""
    x = LogisticBlend.inputs(vote, features)
    unused = [] if features_used is None else [1 + i for i, n in enumerate(FEATURE_NAMES) if n not in features_used]
    x[:, unused] = 0.0
    mean, scale = x.mean(0), x.std(0) + 1e-6
    scale[unused] = 1.0  # an unused feature: weight 0, and no blow-up of its served value
    xs = (x - mean) / scale
    w, b = np.zeros(xs.shape[1]), 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-(xs @ w + b)))
        g = np.r_[xs.T @ (p - target) + l2 * w, (p - target).sum()]
        r = p * (1 - p)
        h = np.zeros((len(w) + 1, len(w) + 1))
        h[:-1, :-1] = (xs * r[:, None]).T @ xs + l2 * np.eye(len(w))
        h[:-1, -1] = h[-1, :-1] = xs.T @ r
        h[-1, -1] = r.sum()
        step = np.linalg.solve(h, g)
        w, b = w - step[:-1], b - step[-1]
        if np.abs(step).max() < 1e-9:
            break
    return LogisticBlend(mean, scale, w, b)


def oof_votes(data: RoutingData, folds: np.ndarray, spec: KnnSpec) -> tuple[np.ndarray, np.ndarray]:
    """(vote, support) of every row from an index of the other folds' rows."""
    vote, support = np.zeros(len(data.prompts)), np.zeros(len(data.prompts))
    for f in np.unique(folds):
        test = np.where(folds == f)[0]
        vote[test], support[test] = knn_fit_score(data.subset(np.where(folds != f)[0]), data.subset(test), spec)
    return vote, support


@dataclass
class BlendFit:
    blend: LogisticBlend
    familiar_vote: np.ndarray  # random-fold out-of-fold votes of the training rows (unseen, in-domain)
    familiar_support: np.ndarray  # their supports: the confidence's reference


def train_blend(train: RoutingData, spec: KnnSpec, use_knn: bool = True, blend: LogisticBlend | None = None,
                features_used: tuple[str, ...] | None = None) -> BlendFit:
    """The blend for an index of ``train``: fitted on out-of-fold votes of both regimes, familiar
    (random folds) and unfamiliar (whole sources held out), each row once per regime. With
    ``blend`` given (another precision's), only the familiar votes and supports are computed."""
    n = len(train.prompts)
    if not use_knn:
        half = np.full(n, 0.5)
        return BlendFit(fit_blend(half, train.features, train.gap), half, np.zeros(n))
    familiar_folds = random_folds(n, seed=1)
    familiar, support = oof_votes(train.held_out(familiar_folds), familiar_folds, spec)
    if blend is not None:
        return BlendFit(blend, familiar, support)
    # The static encoder: a held-out source's text unseen by the vectors too, as a new task's is.
    source_folds = group_folds(train.sources, seed=1)
    unfamiliar = oof_votes(train.held_out(source_folds), source_folds, spec)[0]
    blend = fit_blend(np.r_[familiar, unfamiliar], np.concatenate([train.features] * 2), np.r_[train.gap, train.gap],
                      features_used=features_used)
    return BlendFit(blend, familiar, support)


# --- folds ---------------------------------------------------------------------------------------
def random_folds(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % FOLDS


def group_folds(groups: list[str], seed: int = 0) -> np.ndarray:
    """Whole groups per fold, balanced by size (largest first into the smallest fold); random folds
    when there is only one group (nothing to hold out)."""
    names, counts = np.unique(groups, return_counts=True)
    if len(names) < 2:
        return random_folds(len(groups), seed)
    rng = np.random.default_rng(seed)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], rng.random()))
    sizes, fold_of = np.zeros(FOLDS), {}
    for i in order:
        f = int(np.argmin(sizes))
        fold_of[names[i]] = f
        sizes[f] += counts[i]
    return np.array([fold_of[g] for g in groups])


def concat(parts: list[RoutingData], name: str) -> RoutingData:
    fields = ["weak", "strong", "emb", "qonly_emb", "qonly_mask", "features"]
    if all(p.target_emb is not None for p in parts):
        fields += ["target_emb", "qonly_target_emb"]
    return RoutingData(name, sum((p.prompts for p in parts), []), sum((p.sources for p in parts), []),
                       ids=sum((p.ids for p in parts), []) if all(p.ids for p in parts) else [],
                       **{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields})


# --- the protocol --------------------------------------------------------------------------------
Fit = Callable[[RoutingData, RoutingData], np.ndarray]


def oof(data: RoutingData, folds: np.ndarray, fit: Fit, scored: RoutingData | None = None,
        also: RoutingData | None = None) -> np.ndarray:
    """Every row scored by ``fit`` trained on the other folds' rows (nested: a blend's own
    out-of-fold votes come from inside the training folds only); with ``scored`` (the same rows
    rewritten: ``rewrite_views``) the held-out rows are scored as ``scored`` has them; ``also``:
    rows every fold trains on besides."""
    out = np.zeros(len(data.prompts))
    for f in np.unique(folds):
        test = np.where(folds == f)[0]
        train = data.subset(np.where(folds != f)[0])
        out[test] = fit(train if also is None else concat([train, also], train.name), (scored or data).subset(test))
    return out


def rewrite_views(data: RoutingData, encoder: Any, layers: int = 0,
                  max_length: int = MAX_LENGTH) -> dict[str, RoutingData]:
    """``data``'s rows as free-form traffic would word them, labels kept (``make eval
    EVAL_ARGS=--rewrite R`` on a validation file): the question alone (MMLU's A-D options
    stripped) and a chat request around it (``export.data.rewrite``, keyed by the row's id);
    ``none``: the rows unchanged (the names of ``export.data.REWRITES``)."""
    if len(data.ids) != len(data.prompts):
        raise ValueError(f"{data.name}: rewording needs every row's id")
    views = {"none": data}
    for name in (r for r in REWRITES if r != "none"):
        prompts = rewrite(data.prompts, data.ids, name)
        views[name] = replace(data, prompts=prompts, emb=_embed(prompts, encoder, layers, max_length),
                              features=prompt_features(prompts),
                              target_emb=None, qonly_target_emb=None, fold_view=None)
    return views


def static_fit(inner: Fit, tokenizer: Any, start: np.ndarray, max_length: int, l2: float,
               map_start: bool = True, oof_blend: bool = True) -> Fit:
    """--encoder static: the token vectors distilled on each fit's training prompts alone (their text
    and their full-encoder embeddings, ``target_emb``; never the scored rows'), then ``inner`` on the
    prompts embedded with those vectors, as `make export EXPORT_ARGS=--encoder static` serves them.
    As in the export, the blend's own out-of-fold votes read the training prompts embedded by vectors
    fitted without their fold (``fold_view``: 5 more fits for its random folds, 5 for its held-out
    sources): a prompt's own vectors bring it closer to the full encoder than a new prompt gets, and
    a source's text, seen by the vectors, brings it closer than a new task's. ``oof_blend=False``
    skips that (the blend votes in sample; much quicker: docs/router-quality.md)."""
    from export import static_encoder

    tokens: dict[str, list[int]] = {}

    def token_ids(texts: list[str]) -> list[list[int]]:
        new = [t for t in dict.fromkeys(texts) if t not in tokens]
        if new:
            tokens.update(zip(new, static_encoder.token_ids(tokenizer, new, max_length)))
        return [tokens[t] for t in texts]

    def texts(data: RoutingData) -> tuple[list[str], list[str]]:
        return data.prompts, [strip_choices(p) for p, m in zip(data.prompts, data.qonly_mask) if m]

    def embedded(data: RoutingData, vectors: np.ndarray) -> RoutingData:
        prompts, copies = texts(data)
        emb = static_encoder.embed(vectors, token_ids(prompts))
        qonly = np.zeros_like(emb)
        if copies:
            qonly[data.qonly_mask] = static_encoder.embed(vectors, token_ids(copies))
        return replace(data, emb=emb, qonly_emb=qonly, target_emb=None, qonly_target_emb=None)

    def vectors(data: RoutingData) -> np.ndarray:
        prompts, copies = texts(data)
        return static_encoder.distill(start, token_ids(prompts + copies), data.index_targets(True), l2,
                                      map_start=map_start)

    def out_of_fold(train: RoutingData, index_folds: np.ndarray) -> np.ndarray:
        prompts, copies = texts(train)
        return static_encoder.out_of_fold(start, token_ids(prompts + copies), train.index_targets(True),
                                          index_folds, l2, map_start)

    def fit(train: RoutingData, test: RoutingData) -> np.ndarray:
        fitted = vectors(train)
        served = embedded(train, fitted)
        if oof_blend:  # the index as `texts` lists it: the rows, then their question-only copies
            index_rows = np.r_[np.arange(len(train.prompts)), np.where(train.qonly_mask)[0]]
            served = replace(served, fold_view=static_fold_view(
                served, index_rows, lambda index_folds: out_of_fold(train, index_folds)))
        return inner(served, embedded(test, fitted))
    return fit


def static_fold_view(data: RoutingData, index_rows: np.ndarray,
                     out_of_fold: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], RoutingData]:
    """``RoutingData.fold_view`` for ``data`` whose kNN index holds ``index_rows`` (the row of each
    index prompt: the rows, then their question-only copies): ``out_of_fold`` embeds the index
    prompts for folds over them, a copy in its row's fold."""
    n = len(data.prompts)
    copies = index_rows[n:]

    def held_out(folds: np.ndarray) -> RoutingData:
        index_emb = out_of_fold(folds[index_rows])
        qonly = np.zeros_like(data.qonly_emb)
        qonly[copies] = index_emb[n:]
        return replace(data, emb=index_emb[:n], qonly_emb=qonly, fold_view=None)
    return held_out


def fold_pooled_apgr(scores: np.ndarray, data: RoutingData, folds: np.ndarray) -> tuple[float, list[float]]:
    """(mean over folds, per fold) of the APGR of each fold's rows pooled: the rows one model scored.

    Out-of-fold scores from several folds come from as many models, each with its own scale: the
    blend's intercept and feature weights shift a whole held-out fold up or down. Pooled across
    folds, whole held-out tasks are then ordered by which model scored them, an order no served
    model produces (one model scores all traffic). Within a fold the held-out tasks are ordered by
    one model, as served (docs/router-quality.md: the blend's held-out-task figure pooled across
    folds was 0.50 against 0.60 within them). Folds whose stronger model gains nothing are skipped."""
    per = list(metrics.per_source_apgr(scores, data.weak, data.strong, [str(f) for f in folds], min_prompts=1,
                                       min_gap=0.0).values())
    return (round(float(np.mean(per)), 4) if per else float("nan")), per


def report(scores: np.ndarray, data: RoutingData, by_source: bool = False,
           folds: np.ndarray | None = None) -> dict[str, Any]:
    """APGR and strong share at 95% of the pooled scores; with ``folds`` (grouped CV) also the APGR
    pooled within each fold (``fold_pooled_apgr``); with ``by_source`` the APGR per source."""
    m = metrics.routing_metrics(scores, data.weak, data.strong)
    row: dict[str, Any] = {"apgr": round(m.apgr, 4), "strong_share_at_95": round(m.strong_share_at_95, 4),
                           "n": len(scores)}
    if folds is not None:
        row["fold_pooled_apgr"], row["per_fold"] = fold_pooled_apgr(scores, data, folds)
    if by_source:  # macro average over the sources where the stronger model is better at all
        per = metrics.per_source_apgr(scores, data.weak, data.strong, data.sources)
        row["per_source"] = per
        row["macro_apgr"] = round(float(np.mean(list(per.values()))), 4)
    return row


def blend_fit(spec: KnnSpec, use_knn: bool, features_used: tuple[str, ...] | None = None) -> Fit:
    """The blend recipe as a candidate: trained on ``train`` (its own out-of-fold votes), scoring ``test``."""
    def fit(train: RoutingData, test: RoutingData) -> np.ndarray:
        model = train_blend(train, spec, use_knn, features_used=features_used).blend
        vote = knn_fit_score(train, test, spec)[0] if use_knn else np.full(len(test.prompts), 0.5)
        return model(vote, test.features).astype(np.float64)
    return fit


def served_cv(data: RoutingData, spec: KnnSpec, features_used: tuple[str, ...] | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """The blend recipe's cross-validated APGR on its own training rows (what `make export` records
    and `make eval` prints): random folds (familiar prompts) and folds that hold out whole
    sources (MMLU subjects, LLMRouter tasks: unfamiliar prompts), reported for the MMLU rows and
    for the other rows."""
    fit = blend_fit(spec, True, features_used)
    mmlu = np.array([s.startswith("mmlu/") for s in data.sources])
    out: dict[str, Any] = {}
    for protocol, folds in (("random", random_folds(len(data.prompts))), ("grouped", group_folds(data.sources))):
        log(f">> cross-validation ({protocol} folds) of the blend recipe on {len(data.prompts)} training prompts")
        # Held-out sources read as a new task's prompts (the static encoder: vectors fitted without
        # them); a random fold's rows are already embedded as unseen prompts of familiar tasks.
        scores = oof(data.held_out(folds) if protocol == "grouped" else data, folds, fit)
        out[protocol] = {part: report(scores[rows], data.subset(rows), by_source=part == "other",
                                      folds=folds[rows] if protocol == "grouped" else None)
                         for part, rows in (("mmlu", np.where(mmlu)[0]), ("other", np.where(~mmlu)[0])) if len(rows)}
    return out


def candidates(spec: KnnSpec) -> dict[str, Fit]:
    """name -> fit(train, test) -> scores."""

    def knn(train: RoutingData, test: RoutingData) -> np.ndarray:
        return knn_fit_score(train, test, spec)[0]

    def length(train: RoutingData, test: RoutingData) -> np.ndarray:
        return np.array([len(p) for p in test.prompts], dtype=np.float64)

    return {"length": length, "knn": knn, "features": blend_fit(spec, False),
            "knn+features": blend_fit(spec, True, FEATURE_NAMES), "knn+length": blend_fit(spec, True, LENGTH_FEATURES),
            "knn+structure": blend_fit(spec, True, STRUCTURE_FEATURES)}


def confidence_report(sets: dict[str, RoutingData], both: RoutingData, n_mmlu: int, spec: KnnSpec,
                      below: float = 0.05) -> list[dict[str, Any]]:
    """What the confidence flags, per set: the share of prompts below ``below``, how often the
    strong model is better on them and on the rest, and the vote's APGR when the flagged prompts
    are sent strong (or weak) first. Out-of-fold votes for the training files; for the held-out
    sources the APGR is pooled within each fold (``fold_pooled_apgr``)."""
    familiar = oof_votes(both, random_folds(len(both.prompts)), spec)
    source_folds = group_folds(both.sources)
    grouped = oof_votes(both, source_folds, spec)
    reference = np.sort(familiar[1])
    mmlu, other = np.arange(n_mmlu), np.arange(n_mmlu, len(both.prompts))
    Case = tuple[str, tuple[np.ndarray, np.ndarray], RoutingData, np.ndarray | None, np.ndarray | None]
    cases: list[Case] = [("MMLU, random folds", familiar, both.subset(mmlu), mmlu, None),
                         ("MMLU, held-out subjects", grouped, both.subset(mmlu), mmlu, source_folds[mmlu]),
                         ("other files, held-out tasks", grouped, both.subset(other), other, source_folds[other])]
    cases += [(name, knn_fit_score(both, sets[name], spec), sets[name], None, None)
              for name in ("mmlu-val", "llmrouter-val", "zeroeval-ood")]
    rows = []
    for name, (vote, support), data, idx, folds in cases:
        if idx is not None:
            vote, support = vote[idx], support[idx]
        low = np.searchsorted(reference, support, side="right") / len(reference) < below
        better = data.strong > data.weak

        def apgr(scores: np.ndarray) -> float:
            if folds is None:
                return round(metrics.apgr(scores, data.weak, data.strong), 4)
            return fold_pooled_apgr(scores, data, folds)[0]

        rows.append({"set": name, "below": round(float(low.mean()), 4),
                     "strong_better_below": round(float(better[low].mean()), 3) if low.any() else None,
                     "strong_better_above": round(float(better[~low].mean()), 3) if not low.all() else None,
                     "apgr_vote": apgr(vote), "apgr_low_strong_first": apgr(np.where(low, 2.0, vote)),
                     "apgr_low_weak_first": apgr(np.where(low, -1.0, vote))})
    return rows


def main(argv: list[str] | None = None) -> int:
    from export.pipeline import AUGMENTS, ExportOptions, default_base_model  # here: pipeline imports this module

    p = argparse.ArgumentParser(prog="python -m export.cv", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--k", type=int, default=KnnSpec.k)
    p.add_argument("--ramp", type=float, default=ExportOptions.knn_ramp,
                   help="neighbour weights ramp from 1 to 0 over this fraction of the top-(k+1) similarity range "
                        "(as `make export EXPORT_ARGS=--knn-ramp R` serves)")
    p.add_argument("--augment", choices=AUGMENTS, default=ExportOptions.augment,
                   help="question-only-gated: the index also holds each MMLU prompt without its A-D options, seen "
                        "only by prompts that list options; question-only: seen by every prompt; none: the prompts "
                        "alone (default: what `make export` serves; `EXPORT_ARGS=--augment A` exports another)")
    p.add_argument("--encoder-layers", type=int, default=0,
                   help="embed with the base encoder's first N transformer layers (as `make export "
                        "EXPORT_ARGS=--encoder-layers N` serves it); 0: all")
    p.add_argument("--map-to-full", action="store_true",
                   help="with --encoder-layers: map the shallow embeddings linearly onto the full encoder's "
                        "before the vote (ridge, fitted inside every fold), as `make export EXPORT_ARGS="
                        "'--encoder-layers N --map-to-full'` serves it")
    p.add_argument("--map-l2", type=float, default=MAP_L2,
                   help=f"the map's ridge penalty (default {MAP_L2}, what `make export` uses: chosen by this CV)")
    p.add_argument("--max-length", type=int, default=MAX_LENGTH,
                   help=f"tokens embedded per prompt, longer prompts truncated (default {MAX_LENGTH}, as "
                        "`make export` serves; `EXPORT_ARGS=--max-length N` exports another)")
    p.add_argument("--encoder", choices=("transformer", "static"), default="transformer",
                   help="static: token vectors distilled from the full encoder inside every fit (its training "
                        "prompts only), as `make export EXPORT_ARGS=--encoder static` serves")
    p.add_argument("--static-l2", type=float, help="--encoder static: the distillation's ridge penalty (default: "
                   "export/static_encoder.py STATIC_L2)")
    p.add_argument("--static-map", action=argparse.BooleanOptionalAction, default=True,
                   help="--encoder static: map the single-token start vectors first (static_encoder.start_map)")
    p.add_argument("--static-oof-blend", action=argparse.BooleanOptionalAction, default=True,
                   help="--encoder static: the blend votes on training prompts embedded out of fold (random "
                        "folds, and held-out sources), as the export fits it; 10 more distillations per fit "
                        "(--no-static-oof-blend: in sample, several times quicker)")
    p.add_argument("--rewrites", action="store_true",
                   help="also score the random MMLU folds with the held-out prompts reworded as free-form traffic "
                        "(question-only: the A-D options stripped; chat: a chat request around the question; none: "
                        "unchanged), labels kept, every fold's index also holding the LLMRouter rows as served: the "
                        "training-data twin of `make eval EVAL_ARGS=--rewrite R`")
    p.add_argument("--out", type=Path, default=Path(".eval/cv.json"))
    p.add_argument("--confidence", action="store_true",
                   help="instead of the candidates: what the confidence (familiarity) flags, per set")
    a = p.parse_args(argv)
    d = a.data_dir
    from export.train import keep_layers, load_encoder

    if not 0 < a.ramp <= 1:
        p.error("--ramp R needs 0 < R <= 1")
    if a.map_to_full and not a.encoder_layers:
        p.error("--map-to-full needs --encoder-layers N")
    if a.encoder == "static" and (a.encoder_layers or a.confidence):
        p.error("--encoder static embeds with the full encoder's distilled vectors: no --encoder-layers or --confidence")
    cache: dict[int, Any] = {}

    def loader(layers: int) -> Callable[[], Any]:
        def encoder() -> Any:
            if layers not in cache:
                import torch

                torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
                cache[layers] = load_encoder(default_base_model())
                keep_layers(cache[layers][1], layers)
            return cache[layers]
        return encoder

    full = loader(0) if a.map_to_full else None
    t0 = time.monotonic()
    sets = {name: prepare(load(d / f"{name}.jsonl", d / models), loader(a.encoder_layers), a.encoder_layers, full,
                          a.max_length)
            for name, models in [
        ("mmlu-train", "models.json"), ("mmlu-val", "models.json"), ("llmrouter-train", "llmrouter-models.json"),
        ("llmrouter-val", "llmrouter-models.json"), ("zeroeval-ood", "zeroeval-models.json")]}
    print(f">> data and embeddings ready in {time.monotonic() - t0:.0f}s", flush=True)
    wrap: Callable[[Fit], Fit] = lambda fit: fit
    if a.encoder == "static":
        from export import static_encoder

        for data in sets.values():  # the full encoder's embeddings become the distillation's targets
            data.target_emb, data.qonly_target_emb = data.emb, data.qonly_emb
        tokenizer, model = loader(0)()
        start_path = CACHE / f"static-start-{hashlib.sha256(str(default_base_model()).encode()).hexdigest()[:12]}.npy"
        if not start_path.is_file():
            CACHE.mkdir(parents=True, exist_ok=True)
            np.save(start_path, static_encoder.single_token_vectors(model, tokenizer))
        l2 = static_encoder.STATIC_L2 if a.static_l2 is None else a.static_l2
        wrap = lambda fit: static_fit(fit, tokenizer, np.load(start_path), a.max_length, l2, a.static_map,
                                      a.static_oof_blend)
    mmlu, lr = sets["mmlu-train"], sets["llmrouter-train"]
    both = concat([mmlu, lr], "mmlu+llmrouter-train")
    spec = KnnSpec(k=a.k, ramp=a.ramp, augment=a.augment != "none", gate=a.augment == "question-only-gated",
                   map_l2=a.map_l2 if a.map_to_full else None)
    if a.confidence:
        for flagged in confidence_report(sets, both, len(mmlu.prompts), spec):
            print(json.dumps(flagged), flush=True)
        return 0
    results: dict[str, Any] = {}
    subjects, sources = group_folds(mmlu.sources), group_folds(both.sources)
    views = rewrite_views(mmlu, loader(a.encoder_layers), a.encoder_layers, a.max_length) if a.rewrites else {}
    for name, fit in candidates(spec).items():
        if a.only and name not in a.only:
            continue
        fit = fit if name == "length" else wrap(fit)  # the length needs no embeddings
        t = time.monotonic()

        def done(step: str) -> None:  # a static candidate takes over an hour: say where it is
            print(f">> {name}: {step} ({time.monotonic() - t:.0f}s)", flush=True)

        row: dict[str, Any] = {"cv_random_mmlu": report(oof(mmlu, random_folds(len(mmlu.prompts)), fit), mmlu)}
        # The same folds, the held-out prompts reworded, each fold's index also holding every
        # LLMRouter row (as the served index does: reworded, a prompt may find those nearer).
        for wording, view in views.items():
            row[f"cv_rewrite_{wording}"] = report(oof(mmlu, random_folds(len(mmlu.prompts)), fit, view, lr), mmlu)
        done("random folds")
        row["cv_subject_mmlu"] = report(oof(mmlu, subjects, fit), mmlu, folds=subjects)
        done("held-out subject folds")
        src = oof(both, sources, fit)
        n_mmlu = len(mmlu.prompts)
        row["cv_source_mmlu"] = report(src[:n_mmlu], mmlu, folds=sources[:n_mmlu])
        row["cv_source_llmrouter"] = report(src[n_mmlu:], lr, by_source=True, folds=sources[n_mmlu:])
        done("held-out source folds")
        # One fit on all training rows scores the three files together (a row's score depends on the
        # training rows alone), then each file is reported on its own.
        vals = ("mmlu-val", "llmrouter-val", "zeroeval-ood")
        scores = fit(both, concat([sets[v] for v in vals], "validation"))
        for val, part in zip(vals, np.split(scores, np.cumsum([len(sets[v].prompts) for v in vals])[:-1])):
            row[f"val_{val}"] = report(part, sets[val], by_source=val != "mmlu-val")
        row["seconds"] = round(time.monotonic() - t, 1)
        results[name] = row
        print(json.dumps({name: row}), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1) + "\n")
    cols = ["cv_random_mmlu", "cv_subject_mmlu", "cv_source_mmlu", "cv_source_llmrouter",
            *(f"cv_rewrite_{r}" for r in views), "val_mmlu-val", "val_llmrouter-val", "val_zeroeval-ood"]
    print("\nGrouped columns: the APGR pooled within each fold (one model's scores), then pooled across folds in "
          "[brackets]; (per task) for LLMRouter.")
    print("| candidate | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
    for name, row in results.items():
        cells = [(f"{row[c]['fold_pooled_apgr']:.3f} [{row[c]['apgr']:.3f}]" if "fold_pooled_apgr" in row[c]
                  else f"{row[c]['apgr']:.3f}") + (f" ({row[c]['macro_apgr']:.3f})" if "macro_apgr" in row[c] else "")
                 for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
