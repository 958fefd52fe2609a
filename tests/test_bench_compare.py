"""bench/compare.py: the repository each run serves, and the side-by-side summary (no timing here:
`make bench-compare` measures; these check what it compares)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare import single_version_repository, summarize, table


def _repository(root: Path) -> Path:
    model = root / "router_classifier"
    for v in (1, 2, 3):
        (model / str(v)).mkdir(parents=True)
        (model / str(v) / "model.onnx").write_text(f"weights of version {v}")
    (model / "config.pbtxt").write_text('name: "router_classifier"\nversion_policy: { latest: { num_versions: 3 } }\n')
    (model / "model.py").write_text("# the Triton model\n")
    llm = root / "smollm2_135m"
    (llm / "1").mkdir(parents=True)
    (llm / "1" / "model.py").write_text("# an LLM\n")
    (llm / "config.pbtxt").write_text('name: "smollm2_135m"\n')
    return root


def test_each_run_serves_the_chosen_version_alone(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "repo")
    out = single_version_repository(repo, 2, tmp_path / "v2")
    served = out / "router_classifier"
    # The config serves the latest three: only version 2 may be there for Triton to find.
    assert sorted(p.name for p in served.iterdir() if p.is_dir()) == ["2"]
    assert (served / "2" / "model.onnx").read_text() == "weights of version 2"
    assert (served / "config.pbtxt").is_file() and (served / "model.py").is_file()
    assert (out / "smollm2_135m" / "1" / "model.py").is_file()  # the other models as they are
    assert sorted(p.name for p in (repo / "router_classifier").iterdir() if p.is_dir()) == ["1", "2", "3"]

    with pytest.raises(SystemExit, match=r"no version 9 .*versions: 1, 2, 3"):
        single_version_repository(repo, 9, tmp_path / "v9")


def test_summary_gives_medians_runs_and_the_ratio(tmp_path: Path) -> None:
    runs = {
        6: [{"auto_overhead_p50_ms": 12.0, "manual_overhead_p50_ms": 1.2, "load_direct_c1_rps": 5000.0,
             "classifier_prompts_per_s": 250.0, "cpu_count": 2},
            {"auto_overhead_p50_ms": 11.0, "manual_overhead_p50_ms": 1.4, "load_direct_c1_rps": 6000.0,
             "classifier_prompts_per_s": 240.0, "cpu_count": 2},
            {"auto_overhead_p50_ms": 14.0, "manual_overhead_p50_ms": 1.1, "load_direct_c1_rps": 5500.0, "cpu_count": 2}],
        7: [{"auto_overhead_p50_ms": 9.0, "manual_overhead_p50_ms": 1.2, "load_direct_c1_rps": 7000.0,
             "classifier_prompts_per_s": 410.0, "cpu_count": 2},
            {"auto_overhead_p50_ms": 10.0, "manual_overhead_p50_ms": 1.3, "load_direct_c1_rps": 7000.0,
             "classifier_prompts_per_s": 420.0, "cpu_count": 2},
            {"auto_overhead_p50_ms": 8.0, "manual_overhead_p50_ms": 1.2, "load_direct_c1_rps": 7000.0,
             "classifier_prompts_per_s": 400.0, "cpu_count": 2}],
    }
    for i, run in enumerate(runs[6] + runs[7]):  # with --litellm: the ratios against it
        run["ratio_auto_vs_litellm_c64_rps"] = 2.0 + i / 10
    rows = {r["figure"]: r for r in summarize(runs)}
    # Figures outside the default keys (the upstream alone, the machine) and figures some run lacks
    # (a step skipped) are left out.
    assert set(rows) == {"auto_overhead_p50_ms", "manual_overhead_p50_ms", "ratio_auto_vs_litellm_c64_rps"}
    assert rows["ratio_auto_vs_litellm_c64_rps"]["median"] == {6: 2.1, 7: 2.4}
    auto = rows["auto_overhead_p50_ms"]
    assert auto["median"] == {6: 12.0, 7: 9.0}
    assert auto["runs"] == {6: [12.0, 11.0, 14.0], 7: [9.0, 10.0, 8.0]}
    assert auto["ratio"] == 0.75
    text = table(summarize(runs), [6, 7])
    assert "| auto_overhead_p50_ms | 12 (12, 11, 14) | 9 (9, 10, 8) | 0.75 |" in text
