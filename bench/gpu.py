"""`make bench-gpu`: the router classifier served by Triton on a GPU (issue 20), or on the CPU as a
dry run of the same steps. Never pass/fail: it prints a table and writes JSON and Markdown.

Steps (each prints a ">> k/5" line):
  1. the environment: GPU, torch, onnxruntime's providers, the engine model.py picks;
  2. the engine alone, outside Triton: scores against onnxruntime's fp32 CPU run of the same graph
     (max |diff| over --parity prompts), then per batch size the tokenizer's time and the graph's
     time (where the time goes, without Triton);
  3. Triton with the exported version, --instances model instances (KIND_GPU on a GPU), the
     shipped dynamic batcher: one prompt at a time from one client (p50/p99);
  4. saturation: --clients processes x --threads connections sending single prompts, then the same
     sending batches of --batch prompts (prompts/s, p50/p99 per request);
  5. Triton's own statistics per phase: time queued, in compute (input, inference: tokenizer + graph +
     head, output) per request, and the mean batch Triton formed.
The client is the standard library's HTTP client (KServe v2 JSON), so the device needs nothing beyond
torch, numpy, tokenizers, onnx and the bundled tritonserver (bench/gpu_bundle.py carries those).

Usage: python -m bench.gpu [--version N] [--seconds 15] [--out DIR]
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "router_classifier"
DEFAULT_DATA = ROOT.parent / "shared" / "routing" / "mmlu-val.jsonl"
AIM_PROMPTS_PER_S = 20_000
AIM_SINGLE_P50_MS = 1.5


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    return float(np.percentile(np.asarray(samples), q))


def load_prompts(path: Path, n: int) -> list[str]:
    prompts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            prompts.append(json.loads(line)["prompt"])
            if len(prompts) >= n:
                break
    if not prompts:
        raise SystemExit(f"no prompts in {path}")
    return prompts


def newest_version(repository: Path) -> Path:
    versions = sorted((p for p in (repository / MODEL).iterdir() if p.name.isdigit() and (p / "model.onnx").is_file()),
                      key=lambda p: int(p.name))
    if not versions:
        raise SystemExit(f"no exported version with model.onnx under {repository / MODEL}: run `make export`")
    return versions[-1]


# -- 1-2: the engine outside Triton ----------------------------------------------------------------------
def environment() -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__,
                            "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
                            "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = None
        info["cuda"] = False
    return info


def engine_study(version: Path, prompts: list[str], parity_n: int, batches: list[int], on_gpu: bool) -> dict[str, Any]:
    """Parity with onnxruntime's fp32 CPU run, and tokenizer vs graph time per batch size."""
    from export.served_model import load_module

    model = load_module(version / "model.py", "bench_gpu_model")
    device = "cuda" if on_gpu else "cpu"
    gpu = model.ClassifierRuntime(version, model.RuntimeSettings(device=device, precision="fp32", engine="torch"))
    cpu = model.ClassifierRuntime(version, model.RuntimeSettings(device="cpu", precision="fp32", engine="onnxruntime"))
    out: dict[str, Any] = {"engine": gpu.session.get_providers()[0]}
    if on_gpu:
        t0 = time.monotonic()
        out["plans"] = gpu.session.warmup(_log)
        out["warmup_s"] = round(time.monotonic() - t0, 1)
    sample = prompts[:parity_n]
    a, b = gpu.score(sample), cpu.score(sample)
    out["parity_n"] = len(sample)
    out["parity_max_abs_diff"] = float(np.max(np.abs(a - b)))
    out["parity_same_side_of_median"] = float(np.mean((a >= np.median(b)) == (b >= np.median(b))))
    names = _score_outputs(gpu)
    rows = []
    for size in batches:
        texts = _batch(prompts, size)
        tok, graph = [], []
        repeats = max(5, min(200, 2000 // size))
        for _ in range(repeats):
            t0 = time.perf_counter()
            feeds = gpu.encode(texts)
            t1 = time.perf_counter()
            gpu.session.run(names, feeds)
            t2 = time.perf_counter()
            tok.append((t1 - t0) * 1e3)
            graph.append((t2 - t1) * 1e3)
        tokens = int(feeds["attention_mask"].sum())
        rows.append({"batch": size, "tokens": tokens, "tokenize_ms_p50": round(_pct(tok, 50), 3),
                     "graph_ms_p50": round(_pct(graph, 50), 3),
                     "prompts_per_s": round(size / ((_pct(tok, 50) + _pct(graph, 50)) / 1e3), 1)})
        row = rows[-1]
        _log(f"   batch {size:4d}: tokenizer {row['tokenize_ms_p50']:.3f} ms, graph {row['graph_ms_p50']:.3f} ms"
             f" -> {row['prompts_per_s']:,.0f} prompts/s in one thread")
    out["batches"] = rows
    # A CPU dry run only checks this path, on its smallest batch.
    size = max(batches) if on_gpu else min(batches)
    out["fp32_products"] = fp32_products(model, gpu, sample, b, _batch(prompts, size))
    fp32 = out["fp32_products"]
    _log(f"   fp32 products instead of TF32: max |diff| {fp32['parity_max_abs_diff']:.2e}, "
         f"batch {fp32['batch']} graph {fp32['graph_ms_p50']:.3f} ms")
    gpu.close()
    cpu.close()
    return out


def _score_outputs(runtime: Any) -> list[str]:
    """The graph outputs the served score is computed from (what Triton's model asks for)."""
    return ["knn_score", "knn_support"] if runtime.signals is not None else list(runtime.score_outputs)


def _batch(prompts: list[str], size: int) -> list[str]:
    """``size`` prompts spread over the sample (a stride, so a batch mixes lengths as traffic does)."""
    return [prompts[(i * 7) % len(prompts)] for i in range(size)]


def fp32_products(model: Any, runtime: Any, sample: list[str], reference: np.ndarray,
                  texts: list[str]) -> dict[str, Any]:
    """The same graph with fp32 matrix products instead of TF32: what TF32 buys in time and costs in
    agreement with the CPU's scores (the served default is TF32; on a CPU both are fp32)."""
    served = runtime.session
    runtime.session = model._torch_graph().TorchGraphSession(
        runtime.version_dir / "model.onnx", device=str(served.device), max_length=runtime.max_length,
        matmul_precision="highest")
    try:
        exact = runtime.score(sample)
        names = _score_outputs(runtime)
        feeds = runtime.encode(texts)
        runtime.session.run(names, feeds)  # builds (and on a GPU captures) the plan
        graph = []
        for _ in range(20):
            t0 = time.perf_counter()
            runtime.session.run(names, feeds)
            graph.append((time.perf_counter() - t0) * 1e3)
    finally:
        runtime.session = served
        if served.on_cuda:
            served.torch.set_float32_matmul_precision("high")  # the setting is the process's
    return {"parity_max_abs_diff": float(np.max(np.abs(exact - reference))), "batch": len(texts),
            "graph_ms_p50": round(_pct(graph, 50), 3)}


# -- 3-5: through Triton --------------------------------------------------------------------------------
def model_repository(version: Path, dest: Path, instances: int, on_gpu: bool) -> Path:
    """A repository with only ``version``: the shipped config.pbtxt, its instances on the GPU (the
    engine, torch in fp32, is set through the environment the stubs inherit: triton_study)."""
    model_dir = dest / MODEL
    model_dir.mkdir(parents=True)
    config = (ROOT / "model_repository" / MODEL / "config.pbtxt").read_text(encoding="utf-8")
    kind = "KIND_GPU" if on_gpu else "KIND_CPU"
    for old, new in (("count: 1\n    kind: KIND_CPU", f"count: {instances}\n    kind: {kind}"),
                     ("version_policy: { latest: { num_versions: 3 } }",
                      f"version_policy: {{ specific: {{ versions: [{version.name}] }} }}")):
        if old not in config:  # the shipped config changed: say so rather than bench another setup
            raise SystemExit(f"bench.gpu: {old!r} is no longer in config.pbtxt; update model_repository()")
        config = config.replace(old, new)
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    (model_dir / version.name).symlink_to(version.resolve(), target_is_directory=True)
    return dest


def _request_body(texts: list[str]) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES",
                                   "data": texts}],
                       "outputs": [{"name": "score"}, {"name": "strong_share"}, {"name": "confidence"}]}).encode()


def _drive(args: tuple[str, int, list[str], int, float, int]) -> tuple[int, list[float], int]:
    """One client process: ``threads`` keep-alive connections, each sending requests of ``batch``
    prompts back to back until the deadline. Returns (prompts done, latencies in ms, errors)."""
    import threading

    host_port, threads, prompts, batch, seconds, seed = args
    host, port = host_port.split(":")
    path = f"/v2/models/{MODEL}/infer"
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    done, latencies, errors = [0], [], [0]

    def loop(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        i, mine, lat, bad = (seed * 7919 + k * 104729) % len(prompts), 0, [], 0
        bodies = [_request_body([prompts[(j + m) % len(prompts)] for m in range(batch)]) for j in range(i, i + 64)]
        n = 0
        while time.monotonic() < deadline:
            body = bodies[n % len(bodies)]
            n += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                ok = False
            lat.append((time.perf_counter() - t0) * 1e3)
            if ok:
                mine += batch
            else:
                bad += 1
        with lock:
            done[0] += mine
            latencies.extend(lat)
            errors[0] += bad

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return done[0], latencies, errors[0]


def _stats(http_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{http_url}/v2/models/{MODEL}/stats", timeout=10) as r:
        models = json.loads(r.read())["model_stats"]
    totals: dict[str, float] = {"requests": 0, "executions": 0, "inferences": 0}
    for m in models:
        s = m["inference_stats"]
        totals["requests"] += int(s["success"]["count"])
        totals["executions"] += int(m.get("execution_count", 0))
        totals["inferences"] += int(m.get("inference_count", 0))
        for key in ("queue", "compute_input", "compute_infer", "compute_output"):
            totals[key + "_ns"] = totals.get(key + "_ns", 0) + int(s[key]["ns"])
    return totals


def _stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    d = {k: after[k] - before.get(k, 0) for k in after}
    requests = max(d["requests"], 1)
    executions = max(d["executions"], 1)
    return {
        "requests": int(d["requests"]), "executions": int(d["executions"]),
        "mean_batch_prompts": round(d["inferences"] / executions, 1),
        **{f"{k}_us_per_request": round(d[k + "_ns"] / requests / 1e3, 1)
           for k in ("queue", "compute_input", "compute_infer", "compute_output")},
        "compute_infer_us_per_execution": round(d["compute_infer_ns"] / executions / 1e3, 1),
    }


def phase(name: str, http_url: str, host_port: str, prompts: list[str], clients: int, threads: int, batch: int,
          seconds: float) -> dict[str, Any]:
    _log(f"   {name}: {clients} client process(es) x {threads} connection(s), {batch} prompt(s) a request, "
         f"{seconds:.0f}s")
    before = _stats(http_url)
    t0 = time.monotonic()
    if clients == 1:
        results = [_drive((host_port, threads, prompts, batch, seconds, 0))]
    else:
        with mp.get_context("spawn").Pool(clients) as pool:
            results = pool.map(_drive, [(host_port, threads, prompts, batch, seconds, c) for c in range(clients)])
    wall = time.monotonic() - t0
    after = _stats(http_url)
    latencies = [x for r in results for x in r[1]]
    done, errors = sum(r[0] for r in results), sum(r[2] for r in results)
    triton = _stats_delta(before, after)
    row: dict[str, Any] = {"phase": name, "clients": clients, "threads": threads, "batch": batch,
           "prompts_per_s": round(done / seconds, 1), "requests": len(latencies), "errors": errors,
           "p50_ms": round(_pct(latencies, 50), 3), "p99_ms": round(_pct(latencies, 99), 3),
           "wall_s": round(wall, 1), "triton": triton}
    _log(f"   -> {row['prompts_per_s']:,.0f} prompts/s, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
         f"{errors} errors; Triton: mean batch {triton['mean_batch_prompts']}, queue "
         f"{triton['queue_us_per_request']} us, infer {triton['compute_infer_us_per_request']} us a request")
    return row


def triton_study(version: Path, prompts: list[str], args: argparse.Namespace, on_gpu: bool) -> dict[str, Any]:
    from local_stack.triton_launcher import TritonPorts, TritonServer, TritonStartError

    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        repo = model_repository(version, work / "repository", args.instances, on_gpu)
        env_engine = {"ROUTER_CLASSIFIER_ENGINE": "torch", "ROUTER_CLASSIFIER_PRECISION": "fp32",
                      "ROUTER_CLASSIFIER_DEVICE": "cuda" if on_gpu else "cpu"}
        os.environ.update(env_engine)  # the stubs inherit Triton's environment
        server = TritonServer(repo, TritonPorts.free(), log_file=work / "triton.log",
                              extra_args=["--http-thread-count=32"])
        started = time.monotonic()
        try:
            server.start(timeout_s=args.triton_timeout)
        except TritonStartError as exc:
            if not on_gpu:
                raise
            # Should the bundled server not take the GPU as an instance kind, model.py still runs on
            # cuda:0 from a CPU-kind instance: one more start, not a lost run.
            _log(f"   KIND_GPU did not load ({str(exc).splitlines()[0]}); again with KIND_CPU instances")
            shutil.rmtree(repo)
            repo = model_repository(version, work / "repository", args.instances, on_gpu=False)
            server = TritonServer(repo, TritonPorts.free(), log_file=work / "triton-cpu-kind.log",
                                  extra_args=["--http-thread-count=32"])
            server.start(timeout_s=args.triton_timeout)
        kind = (repo / MODEL / "config.pbtxt").read_text().split("kind: ")[1].split()[0]
        out: dict[str, Any] = {"load_s": round(time.monotonic() - started, 1), "instances": args.instances,
                               "kind": kind}
        try:
            host_port = server.http_url.removeprefix("http://")
            phase("warm-up", server.http_url, host_port, prompts, 1, 4, 1, 2.0)
            out["phases"] = [
                phase("one prompt, one client", server.http_url, host_port, prompts, 1, 1, 1, args.seconds),
                phase("single prompts, saturated", server.http_url, host_port, prompts, args.clients, args.threads, 1,
                      args.seconds),
                phase(f"batches of {args.batch}, saturated", server.http_url, host_port, prompts, args.clients,
                      max(1, args.threads // 4), args.batch, args.seconds),
            ]
        finally:
            server.stop()
            log = Path(server.log_file or work / "triton.log").read_text(errors="replace").splitlines()
            out["model_log"] = [line for line in log if "router_classifier:" in line][-8:]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(result: dict[str, Any]) -> str:
    env, eng, tri = result["environment"], result["engine"], result.get("triton", {})
    lines = [f"# Router classifier through Triton ({env.get('gpu') or 'CPU dry run'})", "",
             f"Version {result['version']}; engine `{eng['engine']}`; torch {env.get('torch')}, "
             f"onnxruntime {env['onnxruntime']} ({', '.join(env['ort_providers'])}).", "",
             f"Parity with onnxruntime fp32 on the CPU over {eng['parity_n']} prompts: max |score diff| "
             f"{eng['parity_max_abs_diff']:.2e}" + (
                 f" (TF32 products; fp32 products: {eng['fp32_products']['parity_max_abs_diff']:.2e}, batch "
                 f"{eng['fp32_products']['batch']} in {eng['fp32_products']['graph_ms_p50']} ms)"
                 if "fp32_products" in eng else "") + ".", "",
             "| batch | tokens | tokenizer ms | graph ms | prompts/s (one thread) |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['tokens']} | {r['tokenize_ms_p50']} | {r['graph_ms_p50']} | "
              f"{r['prompts_per_s']:,.0f} |" for r in eng["batches"]]
    if "triton_error" in result:
        lines += ["", f"Triton failed: {result['triton_error']}"]
    if tri:
        lines += ["", f"Triton: {tri['instances']} instance(s), {tri['kind']}, loaded in {tri['load_s']} s.", "",
                  "| phase | prompts/s | p50 ms | p99 ms | errors | mean batch | queue us/req | infer us/req |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p['phase']} | {p['prompts_per_s']:,.0f} | {p['p50_ms']} | {p['p99_ms']} | {p['errors']} | "
                  f"{p['triton']['mean_batch_prompts']} | {p['triton']['queue_us_per_request']} | "
                  f"{p['triton']['compute_infer_us_per_request']} |" for p in tri["phases"]]
        best = max(p["prompts_per_s"] for p in tri["phases"])
        single = tri["phases"][0]["p50_ms"]
        lines += ["", f"Aims: > {AIM_PROMPTS_PER_S:,} prompts/s: {best:,.0f} "
                  f"({'met' if best > AIM_PROMPTS_PER_S else 'not met'}); "
                  f"one prompt < {AIM_SINGLE_P50_MS} ms p50: {single} ms "
                  f"({'met' if single < AIM_SINGLE_P50_MS else 'not met'})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--version", type=int, default=None, help="default: the newest with model.onnx")
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("ROUTING_DATA", DEFAULT_DATA.parent)) / "mmlu-val.jsonl")
    parser.add_argument("--prompts", type=int, default=2048)
    parser.add_argument("--parity", type=int, default=512, help="prompts compared with onnxruntime on the CPU")
    parser.add_argument("--batches", default="1,8,64,256", help="batch sizes for the engine's time split")
    parser.add_argument("--instances", type=int, default=2, help="Triton model instances")
    parser.add_argument("--clients", type=int, default=None, help="client processes (default: cores / 2)")
    parser.add_argument("--threads", type=int, default=32, help="connections per client process")
    parser.add_argument("--batch", type=int, default=64, help="prompts per request in the batch phase")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--triton-timeout", type=float, default=300.0)
    parser.add_argument("--skip-triton", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / ".eval" / "bench-gpu")
    args = parser.parse_args(argv)
    args.clients = args.clients or max(1, (os.cpu_count() or 2) // 2)

    version = (args.model_repository / MODEL / str(args.version) if args.version
               else newest_version(args.model_repository))
    prompts = load_prompts(args.data, args.prompts)
    _log(">> 1/5 environment")
    env = environment()
    _log("   " + json.dumps(env))
    on_gpu = bool(env.get("cuda"))
    result: dict[str, Any] = {"version": int(version.name), "environment": env}
    _log(f">> 2/5 the engine outside Triton ({'GPU' if on_gpu else 'CPU dry run'}): parity and time split")
    result["engine"] = engine_study(version, prompts, args.parity, [int(b) for b in args.batches.split(",")], on_gpu)
    engine = result["engine"]
    _log(f"   parity: max |diff| {engine['parity_max_abs_diff']:.2e} over {engine['parity_n']} prompts")
    args.out.mkdir(parents=True, exist_ok=True)
    # Written after each step: a run cut short (device time is counted) keeps what it measured.
    (args.out / "bench-gpu.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    if not args.skip_triton:
        _log(">> 3/5 Triton: one prompt at a time; 4/5 saturation; 5/5 Triton's statistics per phase")
        try:
            result["triton"] = triton_study(version, prompts, args, on_gpu)
        except Exception as exc:  # noqa: BLE001 -- reported with what was measured before it
            result["triton_error"] = f"{type(exc).__name__}: {exc}"[-4000:]
            _log(f"   Triton failed: {result['triton_error']}")
        (args.out / "bench-gpu.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    report = markdown(result)
    (args.out / "bench-gpu.md").write_text(report, encoding="utf-8")
    print(report)
    _log(f"wrote {args.out / 'bench-gpu.json'} and {args.out / 'bench-gpu.md'}")
    return 1 if "triton_error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
