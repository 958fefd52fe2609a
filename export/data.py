"""Routing data (see ../shared/routing/README.md): JSON Lines of prompts with per-model quality,
plus models.json naming the weak and the strong model. Any two model names work."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line_no}: bad record ({exc!r})") from exc
    if not ids:
        raise ValueError(f"{path}: no records")
    return RoutingSet(path, ids, prompts, np.asarray(weak), np.asarray(strong))


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
