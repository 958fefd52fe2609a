"""``python -m export.compare_int8``: measure an int8 dynamic-quantized variant of a version's
model.onnx against the fp32 one: CPU latency (1 prompt, batch of 32) and routing quality on a
routing file. Measurement only: nothing in the model repository changes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from export import metrics, repository
from export.data import MODELS_FILE, load_models, load_routing_set
from export.evaluate import load_runtime, score_prompts


def latency_ms(runtime: Any, prompts: list[str], batch: int, repeats: int) -> dict[str, float]:
    """Median and p90 wall time of ``runtime.score`` on consecutive ``batch``-sized slices."""
    runtime.score(prompts[:batch])  # warm-up
    times = []
    for i in range(repeats):
        start = (i * batch) % max(1, len(prompts) - batch)
        chunk = prompts[start : start + batch]
        t0 = time.perf_counter()
        runtime.score(chunk)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.compare_int8", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model-name", default="router_classifier")
    p.add_argument("--version", type=int)
    p.add_argument("--models-json", type=Path)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = as served)")
    p.add_argument("--repeats", type=int, default=50)
    a = p.parse_args(argv)

    from onnxruntime.quantization import QuantType, quantize_dynamic

    version_dir = repository.version_dir(a.model_repository / a.model_name, a.version)
    data = load_routing_set(a.data, load_models(a.models_json or a.data.parent / MODELS_FILE))
    results: dict[str, Any] = {"version": int(version_dir.name), "n": len(data), "threads": a.threads}
    with tempfile.TemporaryDirectory(prefix="router-int8-") as tmp:
        int8_dir = Path(tmp) / version_dir.name
        shutil.copytree(version_dir, int8_dir)
        quantize_dynamic(version_dir / "model.onnx", int8_dir / "model.onnx", weight_type=QuantType.QInt8)
        for label, path in (("fp32", version_dir), ("int8", int8_dir)):
            print(f">> {label}: {path / 'model.onnx'} ({(path / 'model.onnx').stat().st_size / 1e6:.1f} MB)", flush=True)
            runtime = load_runtime(path, a.threads)
            scores = score_prompts(runtime, data.prompts)
            results[label] = {
                "model_mb": round((path / "model.onnx").stat().st_size / 1e6, 1),
                "latency_1": latency_ms(runtime, data.prompts, 1, a.repeats),
                "latency_32": latency_ms(runtime, data.prompts, 32, max(5, a.repeats // 5)),
                **{k: v for k, v in metrics.routing_metrics(scores, data.weak, data.strong).as_dict().items()
                   if k in ("apgr", "auc", "cpt50", "cpt80", "strong_share_at_95")},
            }
            print(f">> {label}: {json.dumps(results[label])}", flush=True)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
