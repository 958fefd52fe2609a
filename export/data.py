"""Routing data (see ../shared/routing/README.md): JSON Lines of prompts with per-model quality,
plus models.json naming the weak and the strong model. Any two model names work."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

DEFAULT_DATA_DIR = Path("../shared/routing")
TRAIN_FILE = "mmlu-train.jsonl"
VAL_FILE = "mmlu-val.jsonl"
MODELS_FILE = "models.json"


@dataclass(frozen=True)
class ModelPair:
    weak: str
    strong: str


@dataclass(frozen=True)
class RoutingSet:
    """Prompts with both models' quality, as parallel arrays."""

    path: Path
    ids: list[str]
    prompts: list[str]
    weak: NDArray[np.float64]
    strong: NDArray[np.float64]
    sources: list[str] = field(default_factory=list)  # per prompt: `source` (MMLU subject, LLMRouter task, ...)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> NDArray[np.int64]:
        """1 where the strong model's quality beats the weak model's: the strong model is needed."""
        return (self.strong > self.weak).astype(np.int64)


def load_models(path: Path) -> ModelPair:
    raw = json.loads(path.read_text(encoding="utf-8"))
    try:
        pair = ModelPair(weak=str(raw["weak"]), strong=str(raw["strong"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: needs 'weak' and 'strong' model names") from exc
    if pair.weak == pair.strong:
        raise ValueError(f"{path}: weak and strong are the same model {pair.weak!r}")
    return pair


def load_routing_set(path: Path, models: ModelPair, limit: int | None = None) -> RoutingSet:
    """Read ``path``; ``limit`` keeps the first N records (files are ordered by subject, so a
    small limit covers few subjects: fine for smoke tests, not for real training)."""
    ids: list[str] = []
    prompts: list[str] = []
    weak: list[float] = []
    strong: list[float] = []
    sources: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if limit is not None and len(ids) >= limit:
                break
            try:
                rec = json.loads(line)
                scores = rec["scores"]
                ids.append(str(rec["id"]))
                prompts.append(str(rec["prompt"]))
                weak.append(float(scores[models.weak]))
                strong.append(float(scores[models.strong]))
                sources.append(str(rec.get("source", path.stem)))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line_no}: bad record ({exc!r})") from exc
    if not ids:
        raise ValueError(f"{path}: no records")
    return RoutingSet(path, ids, prompts, np.asarray(weak), np.asarray(strong), sources)


def models_file_for(path: Path, default: Path) -> Path:
    """The models file of a routing file: ``<prefix>-models.json`` beside ``<prefix>-train.jsonl``
    (or ``-val``, ``-ood``), as the shipped LLMRouter and ZeroEval files have; else a
    ``models.json`` beside it (the shipped MMLU files, mixed into another directory's data); else
    ``default``."""
    prefix = path.name.split("-")[0]
    candidate = path.with_name(f"{prefix}-models.json")
    if prefix != path.name and candidate.is_file():
        return candidate
    beside = path.with_name("models.json")
    return beside if beside.is_file() else default


def combine(sets: list[RoutingSet]) -> RoutingSet:
    """Several files as one training set; each keeps the scores of its own default pair, so the
    labels ask the same question everywhere: does this prompt need its stronger model?"""
    if len(sets) == 1:
        return sets[0]
    return RoutingSet(sets[0].path, sum((s.ids for s in sets), []), sum((s.prompts for s in sets), []),
                      np.concatenate([s.weak for s in sets]), np.concatenate([s.strong for s in sets]),
                      sum((s.sources for s in sets), []))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def strip_choices(prompt: str) -> str:
    """The question of an MMLU-style prompt without its ``\\nA. … \\nD. …\\nAnswer:`` scaffolding
    (prompts without that scaffolding come back unchanged): a stand-in for free-form traffic."""
    i = prompt.rfind("\nA.")
    if i >= 0 and prompt.rstrip().endswith("Answer:") and all(x in prompt[i:] for x in ("\nB.", "\nC.", "\nD.")):
        return prompt[:i].strip()
    return prompt


def with_question_only(prompts: list[str]) -> tuple[list[str], np.ndarray]:
    """``prompts`` followed by the question-only copy (``strip_choices``) of each one that has
    MMLU's scaffolding, and for every returned prompt the index of the prompt it came from."""
    stripped = [strip_choices(p) for p in prompts]
    keep = [i for i, (a, b) in enumerate(zip(stripped, prompts)) if a != b]
    return list(prompts) + [stripped[i] for i in keep], np.r_[np.arange(len(prompts)), keep].astype(np.int64)


# Chat-style rewrites for the generalization check: free-form requests around an MMLU question,
# none of them seen in training (which has only the MMLU prompts and their question-only copies).
CHAT_TEMPLATES = (
    "Hey, quick question: {q} Can you explain your reasoning?",
    "I'm studying for an exam and got stuck on this one. {q} The options are {options}. Which is it, and why?",
    "{q}\n\nPlease answer in two or three sentences.",
    "Could you help me understand the following? {q}",
    "Explain like I'm new to the subject: {q}",
    "My teacher asked: \"{q}\" I narrowed it down to {options}. What do you think?",
)


# The generalization checks: prompts reworded as free-form traffic would send them (`rewrite`).
REWRITES = ("none", "question-only", "chat")


def rewrite(prompts: list[str], ids: list[str], how: str) -> list[str]:
    """``prompts`` reworded (their labels stay theirs): ``question-only`` strips MMLU's A-D options
    (``strip_choices``), ``chat`` wraps the question in a chat request (``chat_rewrite``, keyed by
    the prompt's id), ``none`` keeps them."""
    if how == "question-only":
        return [strip_choices(p) for p in prompts]
    if how == "chat":
        return [chat_rewrite(p, i) for p, i in zip(prompts, ids)]
    if how != "none":
        raise ValueError(f"rewrite: one of {REWRITES}, not {how!r}")
    return list(prompts)


def split_choices(prompt: str) -> tuple[str, list[str]]:
    """(question, [option texts]) of an MMLU-style prompt; (prompt, []) without the scaffolding."""
    question = strip_choices(prompt)
    if question == prompt:
        return prompt, []
    tail = prompt[prompt.rfind("\nA."):].strip()
    options = []
    for line in tail.splitlines():
        if len(line) > 2 and line[0] in "ABCD" and line[1] == ".":
            options.append(line[2:].strip())
    return question, options


def chat_rewrite(prompt: str, key: str) -> str:
    """``prompt`` as a free-form chat request: one of CHAT_TEMPLATES, picked by a hash of ``key``
    (deterministic across runs), around the question, with the options inlined where the template
    names them."""
    question, options = split_choices(prompt)
    template = CHAT_TEMPLATES[int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % len(CHAT_TEMPLATES)]
    if "{options}" in template and not options:
        template = CHAT_TEMPLATES[0]
    listed = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else "".join(options)
    return template.format(q=question, options=listed)
