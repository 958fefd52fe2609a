"""``python -m bench.compare``: `make bench` over router-model versions, alternating, side by side.

Choosing a version by its latency (e.g. the default against `--encoder-layers 3`) on a noisy
machine needs the versions measured in turns, under the same conditions, and the same figure
compared across runs. Each run serves one version alone: a copy of the model repository holding
only that ``router_classifier`` version (and the other models as they are), staged with
``scripts/package_model_repository.py``, then a whole `python -m bench` against it. The order is
A, B, A, B, ...; the table gives each figure's median over a version's runs, every run's value,
and B / A.

    python -m bench.compare --versions 6 7 --runs 2 -- --wrk tools/wrk-4.1.0/wrk --streams 0
    make bench-compare VERSIONS="6 7" RUNS=2
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from export.served_model import load_module

ROOT = Path(__file__).resolve().parents[1]
MODEL = "router_classifier"
# The figures that depend on the classifier (and the manual path and the bare proxy, as controls for
# the hour); with `--litellm` among the bench's arguments, the throughput ratios against it too.
DEFAULT_KEYS = r"^(manual_overhead_p50_ms|auto_overhead_p\d+_ms|classifier_.*|load_(auto|manual)_c\d+_rps|" \
               r"rate_(auto|manual|floor)_r\d+_overhead_p\d+_ms|ratio_(auto|manual)_vs_litellm_c\d+_rps)$"

pmr = load_module(ROOT / "scripts" / "package_model_repository.py", "package_model_repository")


def single_version_repository(repository: Path, version: int, out: Path) -> Path:
    """Stage into ``out`` the models Triton would serve from ``repository``, with ``MODEL``'s
    served version replaced by ``version`` alone. Returns ``out``."""
    available = pmr.version_dirs(repository / MODEL)
    if version not in available:
        raise SystemExit(f"bench.compare: {MODEL} has no version {version} under {repository} "
                         f"(versions: {', '.join(map(str, available)) or 'none'})")
    selection = pmr.select_files(repository)
    selection[MODEL] = [version]
    pmr.stage(repository, pmr.repository_files(repository, selection), out)
    return out


def summarize(runs: dict[int, list[dict[str, Any]]], keys: str = DEFAULT_KEYS) -> list[dict[str, Any]]:
    """Per figure (numeric, matching ``keys``, present in every run): each version's median and its
    runs' values, and the last version's median over the first's."""
    versions = list(runs)
    pattern = re.compile(keys)
    names = [k for k, v in runs[versions[0]][0].items() if pattern.match(k) and isinstance(v, (int, float))
             and all(isinstance(r.get(k), (int, float)) for rs in runs.values() for r in rs)]
    rows = []
    for name in names:
        medians = {v: statistics.median(r[name] for r in runs[v]) for v in versions}
        first, last = medians[versions[0]], medians[versions[-1]]
        rows.append({"figure": name, "median": medians, "runs": {v: [r[name] for r in runs[v]] for v in versions},
                     "ratio": round(last / first, 3) if first else None})
    return rows


def table(rows: list[dict[str, Any]], versions: list[int]) -> str:
    head = ("| figure | " + " | ".join(f"version {v}: median (runs)" for v in versions)
            + f" | {versions[-1]} / {versions[0]} |")
    lines = [head, "|---" * (len(versions) + 2) + "|"]
    for row in rows:
        cells = [f"{row['median'][v]:g} ({', '.join(f'{x:g}' for x in row['runs'][v])})" for v in versions]
        lines.append(f"| {row['figure']} | " + " | ".join(cells) + f" | {row['ratio']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--versions", type=int, nargs="+", required=True, help=f"{MODEL} versions, in turn")
    p.add_argument("--runs", type=int, default=2, help="runs per version (alternating)")
    p.add_argument("--keys", default=DEFAULT_KEYS, help="regex of the bench figures to compare")
    p.add_argument("--out", type=Path, default=ROOT / ".eval" / "bench-compare")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: arguments for every `python -m bench`")
    a = p.parse_args(argv)
    if len(a.versions) < 2 or a.runs < 1:
        p.error("give at least two versions and one run")
    bench_args = a.bench_args[1:] if a.bench_args[:1] == ["--"] else a.bench_args
    a.out.mkdir(parents=True, exist_ok=True)
    runs: dict[int, list[dict[str, Any]]] = {v: [] for v in a.versions}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        repos = {v: single_version_repository(a.model_repository.resolve(), v, Path(tmp) / f"v{v}")
                 for v in a.versions}
        for i in range(1, a.runs + 1):
            for v in a.versions:
                out, log = a.out / f"v{v}-run{i}.json", a.out / f"v{v}-run{i}.log"
                print(f">> run {i}/{a.runs}, version {v}: python -m bench (log: {log})", flush=True)
                with open(log, "w") as f:
                    rc = subprocess.run([sys.executable, "-m", "bench", "--model-repository", str(repos[v]),
                                         "--out", str(out), *bench_args], cwd=ROOT, stdout=f,
                                        stderr=subprocess.STDOUT).returncode
                if rc != 0:
                    print(f"bench.compare: the bench of version {v} failed (exit {rc}); see {log}", file=sys.stderr)
                    return rc
                runs[v].append(json.loads(out.read_text()))
    rows = summarize(runs, a.keys)
    (a.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows, a.versions))
    print(f"(runs and summary under {a.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
