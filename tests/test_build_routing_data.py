"""Building routing files from a RouteLLM-shaped checkout (a small made-up one)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from export.build_routing_data import build, is_validation


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"])
        writer.writerows(rows)


def test_build_from_routellm_layout(tmp_path: Path) -> None:
    mmlu = tmp_path / "RouteLLM" / "routellm" / "evals" / "mmlu"
    prompts = [f"Question {i}?\nA. x\nB. y\nAnswer:" for i in range(60)]
    rows = [(p, "True" if i % 2 else "False", "True") for i, p in enumerate(prompts)]
    _write_csv(mmlu / "responses" / "mmlu_anatomy.csv", rows + [rows[0]])  # a duplicate within the subject
    _write_csv(mmlu / "responses" / "mmlu_virology.csv", rows[:3])  # the same prompts in another subject
    (mmlu / "contaminated_prompts.jsonl").write_text(json.dumps({"prompt": prompts[5]}) + "\n")

    counts = build(tmp_path / "RouteLLM", tmp_path / "out")
    records = [json.loads(line) for name in ("mmlu-train.jsonl", "mmlu-val.jsonl")
               for line in (tmp_path / "out" / name).read_text().splitlines()]
    assert counts["train"] + counts["val"] == len(records) == 59 + 3  # 60 - contaminated, + 3 in virology
    anatomy = [r for r in records if r["source"] == "mmlu/anatomy"]
    assert len({r["id"] for r in anatomy}) == len(anatomy) == 59
    assert prompts[5] not in {r["prompt"] for r in records}
    first = next(r for r in anatomy if r["prompt"] == prompts[1])
    assert first["scores"] == {"mixtral-8x7b-instruct-v0.1": 1.0, "gpt-4-1106-preview": 1.0}
    val = {json.loads(line)["prompt"] for line in (tmp_path / "out" / "mmlu-val.jsonl").read_text().splitlines()}
    assert val == {p for p in prompts if p != prompts[5] and is_validation(p)}
    models = json.loads((tmp_path / "out" / "models.json").read_text())
    assert models["weak"] == "mixtral-8x7b-instruct-v0.1" and models["strong"] == "gpt-4-1106-preview"
