"""``python -m export.from_log``: the router's decision log (decision_log.path) as routing data,
in the format of ../shared/routing (JSON Lines of prompts with per-model quality, and a
models.json), ready for ``make export EXPORT_ARGS="--train ... --val ... --models-json ..."``.

A prompt becomes a record when its logged requests carry feedback for both targets of the chosen
policy: per-target ``grades`` (a comparison: the playground's "Best answer" sends them), or
ratings/thumbs of requests each target answered. A target's score is the mean of what it got.
Only requests whose text was kept (``decision_log.prompts``) can be used. The prompt is the text
the policy's classifier reads (its conversation window). The validation file holds the newest
prompts (a split by time, not at random: the router is scored on traffic newer than it was
trained on)."""
from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from router_service.config import load_config
from router_service.generation import Message
from router_service.policy import window_text


def _conversation(raw: str) -> tuple[Message, ...]:
    return tuple(Message(role=m["role"], content=m["content"], raw=m) for m in json.loads(raw))


def collect(db: Path, weak: str, strong: str, window: Any) -> list[dict[str, Any]]:
    """Records (``first_seen`` kept for the split) for every prompt graded for both targets."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT d.request_id, d.time, d.target, d.prompt, f.rating, f.grades FROM decisions d "
            "JOIN feedback f USING (request_id) WHERE d.prompt IS NOT NULL AND d.status = 200 ORDER BY d.time").fetchall()
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    first_seen: dict[str, float] = {}
    for row in rows:
        text = window_text(_conversation(row["prompt"]), window)
        first_seen.setdefault(text, row["time"])
        if row["grades"]:
            for target, grade in json.loads(row["grades"]).items():
                scores[text][target].append(float(grade))
        if row["rating"] is not None:
            scores[text][row["target"]].append(float(row["rating"]))
    records = []
    for text, by_target in scores.items():
        if by_target.get(weak) and by_target.get(strong):
            records.append({
                "id": "log-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12], "source": "log", "prompt": text,
                "scores": {m: round(sum(by_target[m]) / len(by_target[m]), 6) for m in (weak, strong)},
                "first_seen": first_seen[text]})
    return sorted(records, key=lambda r: r["first_seen"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.from_log", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", type=Path, default=Path(".eval/decisions.sqlite"))
    p.add_argument("--config", type=Path, default=Path("config/router.yaml"), help="the router config that logged it")
    p.add_argument("--policy", help="whose weak and strong targets and window to use (default: the default policy)")
    p.add_argument("--out-dir", type=Path, default=Path(".eval/from-log"))
    p.add_argument("--val-fraction", type=float, default=0.2, help="the newest share of prompts for validation")
    a = p.parse_args(argv)
    config = load_config(a.config)
    policy = config.policy(a.policy or config.default_policy)
    roles = dict(policy.target_roles())
    if "weak" not in roles or "strong" not in roles:
        raise SystemExit(f"policy {policy.name!r} has no weak/strong pair (a threshold policy has)")
    weak, strong = roles["weak"], roles["strong"]
    records = collect(a.db, weak, strong, policy.window)
    n_val = round(len(records) * a.val_fraction)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", records[:len(records) - n_val]), ("val", records[len(records) - n_val:])):
        with (a.out_dir / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps({k: v for k, v in r.items() if k != "first_seen"}) + "\n")
    prices = {t.name: {"usd_per_1m_input_tokens": t.usd_per_1m_input_tokens,
                       "usd_per_1m_output_tokens": t.usd_per_1m_output_tokens} for t in config.targets
              if t.name in (weak, strong)}
    (a.out_dir / "models.json").write_text(json.dumps({"weak": weak, "strong": strong, "models": prices}, indent=2)
                                           + "\n")
    print(json.dumps({"prompts": len(records), "train": len(records) - n_val, "val": n_val, "weak": weak,
                      "strong": strong, "out_dir": str(a.out_dir)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
