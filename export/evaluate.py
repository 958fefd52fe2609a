"""``python -m export.evaluate``: score a routing file with a served router-classifier version.

Loads the version directory (default: the latest, as Triton serves it) through that version's own
``model.py`` (tokenizers + onnxruntime, exactly Triton's code path), scores the ``prompt`` of every
record, writes ``{"id", "score"}`` lines (and ``"confidence"`` where the version reports it), prints
one JSON line of routing metrics (router and random routing, and the share of prompts unfamiliar to
the version) and plots quality against the share of strong calls (router, random, oracle).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from export import metrics, repository
from export.data import MODELS_FILE, REWRITES, load_models, load_routing_set, models_file_for, rewrite
from export.served_model import load_module
from router_service.classifier import UNFAMILIAR_BELOW

BATCH = 64


@dataclass(frozen=True)
class EvaluateOptions:
    data: Path
    scores: Path
    model_repository: Path
    model_name: str
    version: int | None
    plot: Path | None
    models_json: Path | None
    threads: int
    rewrite: str = "none"  # none | question-only | chat: generalization checks (the labels stay the prompt's)


def parse_args(argv: list[str] | None = None) -> EvaluateOptions:
    p = argparse.ArgumentParser(prog="python -m export.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="routing JSONL (id, prompt, scores)")
    p.add_argument("--scores", type=Path, required=True, help="output JSONL of {id, score}")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model-name", default="router_classifier")
    p.add_argument("--version", type=int, help="version to load (default: the latest)")
    p.add_argument("--plot", type=Path, help="PNG path (default: next to --scores, .png)")
    p.add_argument("--models-json", type=Path, help=f"weak/strong names (default: {MODELS_FILE} next to --data)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = as served)")
    p.add_argument("--rewrite", choices=REWRITES, default="none",
                   help="generalization check, scoring each prompt rewritten: question-only strips MMLU's "
                        "'A. … D. … Answer:' scaffolding; chat puts the question (and, for some templates, the "
                        "options inline) into a free-form chat request unlike anything in training")
    p.add_argument("--question-only", action="store_true", help="same as --rewrite question-only")
    a = p.parse_args(argv)
    return EvaluateOptions(a.data, a.scores, a.model_repository, a.model_name, a.version, a.plot, a.models_json, a.threads,
                           "question-only" if a.question_only else a.rewrite)


def load_served_module(version_dir: Path) -> ModuleType:
    """Import ``<version_dir>/model.py`` (the code Triton runs for this version)."""
    name = f"router_classifier_v{version_dir.name}_{abs(hash(str(version_dir.resolve())))}"
    return load_module(version_dir / "model.py", name)


def load_runtime(version_dir: Path, threads: int = 0, device: str = "cpu") -> Any:
    module = load_served_module(version_dir)
    return module.ClassifierRuntime(version_dir, module.RuntimeSettings(device=device, intra_op_threads=threads))


def score_prompts(runtime: Any, prompts: list[str], batch: int = BATCH) -> tuple[np.ndarray, np.ndarray | None]:
    """The served score of each prompt, and its confidence (None when the version has none)."""
    # Sorted by length so each batch pads little, as Triton's dynamic batches of similar requests would.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    scores = np.zeros(len(prompts), dtype=np.float32)
    confidence: np.ndarray | None = np.zeros(len(prompts), dtype=np.float32)
    # A version exported before the confidence existed carries a model.py with `score` alone.
    evaluate = getattr(runtime, "evaluate", None) or (lambda texts: (runtime.score(texts), None))
    for start in range(0, len(order), batch):
        index = order[start : start + batch]
        scores[index], familiar = evaluate([prompts[i] for i in index])
        if familiar is None:
            confidence = None
        elif confidence is not None:
            confidence[index] = familiar
    return scores, confidence


def plot_curves(path: Path, weak: np.ndarray, strong: np.ndarray, scores: np.ndarray, title: str,
                baseline: np.ndarray | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = metrics.GRID
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    curves = (
        ("oracle", strong - weak, "tab:green", ":"),
        ("router", scores, "tab:blue", "-"),
        ("random", np.zeros_like(scores), "tab:gray", "--"),
        *((("prompt length", baseline, "tab:orange", "-."),) if baseline is not None else ()),
    )
    for label, s, color, style in curves:
        ax.plot(grid * 100, metrics.quality_curve(s, weak, strong, grid), style, color=color, label=label)
    ax.axhline(weak.mean(), color="tab:red", lw=0.8, alpha=0.6)
    ax.axhline(strong.mean(), color="tab:purple", lw=0.8, alpha=0.6)
    ax.text(1, weak.mean(), "weak only", va="bottom", fontsize=8)
    ax.text(1, strong.mean(), "strong only", va="bottom", fontsize=8)
    ax.set_xlabel("share of prompts sent to the strong model (%)")
    ax.set_ylabel("mean quality")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(opts: EvaluateOptions) -> dict[str, Any]:
    model_dir = opts.model_repository / opts.model_name
    version_dir = repository.version_dir(model_dir, opts.version)
    models = load_models(opts.models_json or models_file_for(opts.data, opts.data.parent / MODELS_FILE))
    data = load_routing_set(opts.data, models)
    ids, prompts = data.ids, data.prompts  # only the prompt goes to the model
    prompts = rewrite(prompts, ids, opts.rewrite)
    print(f">> scoring {len(prompts)} prompts of {opts.data} with {version_dir}", flush=True)
    runtime = load_runtime(version_dir, opts.threads)
    started = time.monotonic()
    scores, confidence = score_prompts(runtime, prompts)
    seconds = time.monotonic() - started

    opts.scores.parent.mkdir(parents=True, exist_ok=True)
    with opts.scores.open("w", encoding="utf-8") as fh:
        for row, (i, s) in enumerate(zip(ids, scores)):
            line = {"id": i, "score": round(float(s), 7)}
            if confidence is not None:
                line["confidence"] = round(float(confidence[row]), 7)
            fh.write(json.dumps(line) + "\n")
    router = metrics.routing_metrics(scores, data.weak, data.strong).as_dict()
    rand = metrics.random_metrics(data.weak, data.strong).as_dict()
    # Baseline: longer prompts first (characters of what was scored).
    lengths = np.asarray([len(p) for p in prompts], dtype=np.float64)
    by_length = metrics.routing_metrics(lengths, data.weak, data.strong).as_dict()
    plot = opts.plot or opts.scores.with_suffix(".png")
    apgr_text = f", APGR {router['apgr']:.3f}" if router["apgr"] is not None else ""
    plot_curves(plot, data.weak, data.strong, scores,
                f"{opts.data.name}{'' if opts.rewrite == 'none' else f' (rewrite: {opts.rewrite})'} "
                f"(version {version_dir.name}{apgr_text})\nweak {models.weak} / strong {models.strong}",
                baseline=lengths)
    print(f">> wrote {opts.scores} and {plot} ({seconds:.1f} s, {len(prompts) / max(seconds, 1e-9):.0f} prompts/s)",
          flush=True)
    keys = ("apgr", "cpt50", "cpt80", "strong_share_at_95", "auc")
    def r4(v: Any) -> Any:
        return round(v, 4) if isinstance(v, float) else v

    result = {"n": router["n"], "version": int(version_dir.name), **{k: r4(router[k]) for k in keys},
              "random": {k: r4(rand[k]) for k in keys}, "prompt_length": {k: r4(by_length[k]) for k in keys},
              "rewrite": opts.rewrite}
    if confidence is not None and len(prompts):
        # Prompts unlike the version's training data (a few percent in domain): the share the
        # router's dashboard and alert watch in production (router_classifier_confidence).
        result["unfamiliar_share"] = r4(float(np.mean(confidence < UNFAMILIAR_BELOW)))
        print(f">> {result['unfamiliar_share']:.1%} of the prompts are unfamiliar to version {version_dir.name} "
              f"(confidence below {UNFAMILIAR_BELOW}; a few percent in domain)", flush=True)
    per_source = metrics.per_source_apgr(scores, data.weak, data.strong, data.sources)
    if len(per_source) > 1:  # a file of several tasks: each task alone, and their mean
        result["per_source_apgr"] = per_source
        result["macro_apgr"] = r4(float(np.mean(list(per_source.values()))))
    # What the export's cross-validation on training data says of the served recipe (docs/router-quality.md).
    cv = runtime.metadata.get("cv")
    if cv:
        apgrs: dict[str, Any] = {}
        for protocol, rows in cv.items():
            for part, row in rows.items():
                apgrs[f"{protocol}/{part}"] = r4(row["apgr"])
                if "fold_pooled_apgr" in row:  # held-out sources: each fold's rows pooled alone (export/cv.py)
                    apgrs[f"{protocol}/{part}/within_folds"] = r4(row["fold_pooled_apgr"])
        result["served_version_cv_apgr"] = apgrs
    return result


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        result = run(opts)
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluate failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
