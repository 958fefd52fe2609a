"""Build routing files (the format of ../shared/routing) from RouteLLM's MMLU evaluation data.

    git clone https://github.com/lm-sys/RouteLLM
    python -m export.build_routing_data --routellm RouteLLM --out ../shared/routing

Reads ``routellm/evals/mmlu/responses/mmlu_<subject>.csv`` (columns ``prompt`` and one True/False
column per model), drops the prompts listed in ``routellm/evals/mmlu/contaminated_prompts.jsonl``,
merges duplicate prompts within a subject, and splits about 90% / 10% by the SHA-1 of the prompt
text (identical prompts always share a split). Writes ``mmlu-train.jsonl``, ``mmlu-val.jsonl``
and ``models.json``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

MODEL_NAMES = {"mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b-instruct-v0.1",
               "gpt-4-1106-preview": "gpt-4-1106-preview"}
PRICES = {"mixtral-8x7b-instruct-v0.1": (0.6, 0.6), "gpt-4-1106-preview": (10.0, 30.0)}


def _truth(value: str) -> float:
    return 1.0 if value.strip().lower() in ("true", "1", "1.0") else 0.0


def is_validation(prompt: str, every: int = 10) -> bool:
    return int(hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8], 16) % every == 0


def build(routellm: Path, out: Path) -> dict[str, int]:
    mmlu = routellm / "routellm" / "evals" / "mmlu"
    contaminated: set[str] = set()
    contaminated_file = mmlu / "contaminated_prompts.jsonl"
    if contaminated_file.is_file():
        for line in contaminated_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                contaminated.add(record["prompt"] if isinstance(record, dict) else str(record))
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for path in sorted((mmlu / "responses").glob("mmlu_*.csv")):
        source = "mmlu/" + path.stem.removeprefix("mmlu_")
        seen: set[str] = set()
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                prompt = row["prompt"]
                if prompt in contaminated or prompt in seen:
                    continue
                seen.add(prompt)
                scores = {short: _truth(row[column]) for column, short in MODEL_NAMES.items() if column in row}
                record = {"id": f"{source}-{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:12]}",
                          "source": source, "prompt": prompt, "scores": scores}
                splits["val" if is_validation(prompt) else "train"].append(record)
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "mmlu-train.jsonl"), ("val", "mmlu-val.jsonl")):
        with (out / name).open("w", encoding="utf-8") as f:
            for record in splits[split]:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    models = {"weak": "mixtral-8x7b-instruct-v0.1", "strong": "gpt-4-1106-preview",
              "models": {name: {"usd_per_1m_input_tokens": i, "usd_per_1m_output_tokens": o}
                         for name, (i, o) in PRICES.items()}}
    (out / "models.json").write_text(json.dumps(models, indent=2) + "\n")
    return {split: len(records) for split, records in splits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routellm", type=Path, required=True, help="a checkout of lm-sys/RouteLLM")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    counts = build(args.routellm, args.out)
    print(f"wrote {counts['train']} train and {counts['val']} validation records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
