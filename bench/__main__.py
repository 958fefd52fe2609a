"""Benchmarks (never pass/fail): start real Triton and the real router, then measure
  1. router overhead with manual routing: p50 through the router minus p50 calling the upstream
     directly (an instant OpenAI-compatible upstream, so upstream time does not hide it), and the
     same for LiteLLM's proxy in front of the same upstream (--litellm: the peer, side by side);
     the floor under it: the same for a bare Flask proxy (bench/floor_app.py) under the router's
     gunicorn settings, so that the router's own work is the difference;
  2. automatic routing (classification through Triton included), same method;
  3. the Triton-served classifier: p50 for one prompt, and prompts/s with concurrent batches;
  4. each Triton-hosted LLM: load-free generation tokens/s;
  5. fixed concurrency: wrk at 1, 8 and 64 connections (requests/s, p50/p99) for the upstream
     directly, manual and automatic routing and LiteLLM (the decision cache off, bodies rotating
     over 512 prompts);
  6. fixed rate: vegeta at --rates requests/s, same four and the bare proxy (open loop: latency
     under a set arrival rate, where the overhead aims are stated);
  7. concurrency: --streams streams of --stream-seconds held open on a slow upstream through one
     router process, short requests answered meanwhile, the router's memory.
Ratios against LiteLLM are printed with the figures (this machine is noisy; ratios travel better).
Prints a table, then which of the README's aims the run met (bench/aims.py), and writes JSON
(default .eval/bench.json)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import yaml

from router_service.classifier_client import ClassifierClient
from local_stack.processes import wait_until_ready
from local_stack.stack import start_router, stop_process, wait_ready
from local_stack.triton_launcher import TritonPorts, TritonServer, free_port

from . import aims
from .concurrency import hold_streams
from .instant_upstream import InstantUpstream
from .litellm_peer import LiteLLMProxy
from .load import run_wrk, write_script
from .rate import run_vegeta, write_targets

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) > 1 else samples[0]


def _prompts(data: Path, n: int) -> list[str]:
    with data.open() as f:
        return [json.loads(line)["prompt"] for _, line in zip(range(n), f)]


@contextlib.contextmanager
def _floor(config: Path, upstream_url: str, session: requests.Session, chat_body: Callable[[str], dict],
           tmp: str) -> Iterator[str]:
    """bench/floor_app.py (a bare Flask proxy) under the router's gunicorn settings, the floor under
    the router's overhead: its chat-completions URL while it runs (steps 1 and 6)."""
    port = free_port()
    env = {"FLOOR_UPSTREAM": upstream_url + "/chat/completions"}
    proc = start_router(config, "127.0.0.1", port, env, log=Path(tmp) / "floor.log", app="bench.floor_app:app")
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_until_ready(proc, lambda: session.post(url, json=chat_body("floor"), timeout=2).ok, 60,
                         "the floor app", Path(tmp) / "floor.log", poll_s=0.2)
        yield url
    finally:
        stop_process(proc)


def bench_config(triton: TritonServer, upstream_url: str, slow_url: str) -> dict:
    config = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    config["triton"] = {"http_url": triton.http_url, "grpc_url": triton.grpc_url, "timeout_s": 10.0}
    for name in ("instant-a", "instant-b"):
        config["targets"].append({"name": name, "kind": "openai", "url": upstream_url, "model": "instant",
                                  "context_window": 32768, "usd_per_1m_input_tokens": 1.0,
                                  "usd_per_1m_output_tokens": 1.0})
    config["targets"].append({"name": "slow", "kind": "openai", "url": slow_url, "model": "slow",
                              "context_window": 32768})
    # Automatic routing is measured on the classifier itself (no decision cache), and separately
    # on a cache hit.
    config["classifiers"].append({"name": "minilm-uncached", "triton_model": "router_classifier", "cache": {"size": 0}})
    config["policies"].append({"name": "instant", "classifier": "minilm-uncached", "weak": "instant-a",
                               "strong": "instant-b", "threshold": 0.5})
    config["policies"].append({"name": "instant-cached", "classifier": "minilm", "weak": "instant-a",
                               "strong": "instant-b", "threshold": 0.5})
    return config


def _ratios(results: dict[str, object]) -> dict[str, float]:
    """The router against LiteLLM where both were measured: throughput (higher is better for the
    router) and overhead (LiteLLM's over the router's: higher is better for the router)."""
    out: dict[str, float] = {}

    def ratio(a: str, b: str) -> float | None:
        x, y = results.get(a), results.get(b)
        return round(x / y, 2) if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y > 0 else None

    for mode in ("manual", "auto"):
        for c in (1, 8, 64):
            r = ratio(f"load_{mode}_c{c}_rps", f"load_litellm_c{c}_rps")
            if r is not None:
                out[f"ratio_{mode}_vs_litellm_c{c}_rps"] = r
        r = ratio("litellm_overhead_p50_ms", f"{mode}_overhead_p50_ms")
        if r is not None:
            out[f"ratio_litellm_over_{mode}_overhead_p50"] = r
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("ROUTING_DATA", ROOT.parent / "shared" /
                                                                         "routing")) / "mmlu-val.jsonl")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per latency measurement")
    parser.add_argument("--throughput-seconds", type=float, default=10.0)
    parser.add_argument("--wrk", type=Path, help="the wrk binary (make bench fetches it); without it step 5 is skipped")
    parser.add_argument("--vegeta", type=Path, help="the vegeta binary (make bench builds it); without it step 6 is skipped")
    parser.add_argument("--rates", type=int, nargs="*", default=[50, 200], help="requests/s of step 6")
    parser.add_argument("--litellm", type=Path, help="LiteLLM's `litellm` CLI (make bench installs it in its "
                                                     "own virtualenv); without it no peer is measured")
    parser.add_argument("--load-seconds", type=int, default=10)
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams in step 7 (0: skip it)")
    parser.add_argument("--stream-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / ".eval" / "bench.json")
    args = parser.parse_args(argv)

    prompts = _prompts(args.data, 512)
    results: dict[str, object] = {"cpu_count": os.cpu_count()}
    ports = TritonPorts.free()
    with tempfile.TemporaryDirectory() as tmp, TritonServer(args.model_repository.resolve(), ports=ports,
                                                            log_file=Path(tmp) / "triton.log") as triton, \
            InstantUpstream() as upstream, InstantUpstream(stream_seconds=args.stream_seconds) as slow, \
            contextlib.ExitStack() as peers:
        litellm = peers.enter_context(LiteLLMProxy(args.litellm, upstream.url, Path(tmp))) if args.litellm else None
        print(">> Triton ready; starting the router", flush=True)
        config_path = Path(tmp) / "router.yaml"
        config_path.write_text(yaml.safe_dump(bench_config(triton, upstream.url, slow.url)))
        port = free_port()
        # The request log stays on (its cost is part of the overhead), written to a file, not the console.
        router = start_router(config_path, "127.0.0.1", port, log=Path(tmp) / "router.log")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base + "/health/ready", router, timeout_s=60)
            session = requests.Session()
            prompt_iter = iter(prompts * 1000)

            def chat_body(model: str) -> dict:
                return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": next(prompt_iter)}]}

            print(">> 1/7 router overhead, manual routing" + (" (and LiteLLM's)" if litellm else "")
                  + ", and a bare proxy's", flush=True)
            direct = _timed(lambda: session.post(upstream.url + "/chat/completions", json=chat_body("instant")),
                            args.requests)
            manual = _timed(lambda: session.post(base + "/v1/chat/completions", json=chat_body("instant-a")),
                            args.requests)
            floor_url = peers.enter_context(_floor(config_path, upstream.url, session, chat_body, tmp))
            floor = _timed(lambda: session.post(floor_url, json=chat_body("floor")), args.requests)
            results["proxy_floor_overhead_p50_ms"] = round(_p(floor, 50) - _p(direct, 50), 3)
            if litellm is not None:
                peer = _timed(lambda: session.post(litellm.url + "/v1/chat/completions", json=chat_body("instant"),
                                                   headers=litellm.headers), args.requests)
                results["litellm_overhead_p50_ms"] = round(_p(peer, 50) - _p(direct, 50), 3)
            print(">> 2/7 automatic routing (classifier through Triton)", flush=True)
            auto = _timed(lambda: session.post(base + "/v1/chat/completions", json=chat_body("router:instant")),
                          args.requests)
            results["direct_upstream_p50_ms"] = round(_p(direct, 50), 3)
            results["manual_overhead_p50_ms"] = round(_p(manual, 50) - _p(direct, 50), 3)
            results["auto_overhead_p50_ms"] = round(_p(auto, 50) - _p(direct, 50), 3)
            results["auto_overhead_p90_ms"] = round(_p(auto, 90) - _p(direct, 50), 3)
            # Every prompt above was new to the decision cache; the same prompt again is a hit.
            repeated = chat_body("router:instant-cached")
            cached = _timed(lambda: session.post(base + "/v1/chat/completions", json=repeated), args.requests)
            results["auto_cached_overhead_p50_ms"] = round(_p(cached, 50) - _p(direct, 50), 3)

            print(">> 3/7 classifier through Triton", flush=True)
            client = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=30)
            single = _timed(lambda: client.score([next(prompt_iter)]), args.requests)
            results["classifier_single_p50_ms"] = round(_p(single, 50), 3)
            results["classifier_single_p90_ms"] = round(_p(single, 90), 3)
            batch = 32
            deadline = time.monotonic() + args.throughput_seconds

            def worker(offset: int) -> int:
                done, i = 0, offset
                local = ClassifierClient(triton.grpc_url, "router_classifier", timeout_s=60)
                while time.monotonic() < deadline:
                    local.score(prompts[i % 448: i % 448 + batch])
                    done, i = done + batch, i + batch
                return done

            t0 = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                total = sum(pool.map(worker, range(0, 128, 32)))
            results["classifier_prompts_per_s"] = round(total / (time.monotonic() - t0), 1)

            print(">> 4/7 local LLM generation", flush=True)
            for model in ("smollm2_135m", "gemma3_270m"):
                body: dict[str, Any] = {"messages": json.dumps([{"role": "user", "content": "Write a short story about a robot."}]),
                        "max_tokens": 64, "temperature": 0.0, "stream": False}
                session.post(f"{triton.http_url}/v2/models/{model}/generate", json=body)  # warm-up
                t0 = time.perf_counter()
                out = session.post(f"{triton.http_url}/v2/models/{model}/generate", json=body).json()
                elapsed = time.perf_counter() - t0
                results[f"{model}_tokens_per_s"] = round(int(out.get("completion_tokens", 0)) / elapsed, 1)

            # The systems under load, side by side: name -> (url, model, headers).
            systems: dict[str, tuple[str, str, dict[str, str]]] = {
                "direct": (upstream.url + "/chat/completions", "instant", {}),
                "manual": (base + "/v1/chat/completions", "instant-a", {}),
                "auto": (base + "/v1/chat/completions", "router:instant", {})}
            if litellm is not None:
                systems["litellm"] = (litellm.url + "/v1/chat/completions", "instant", litellm.headers)
            if args.wrk:
                print(f">> 5/7 fixed concurrency with wrk: {', '.join(systems)} at 1, 8, 64 connections", flush=True)
                for name, (target_url, model, headers) in systems.items():
                    script = write_script(Path(tmp) / f"{name}.lua", model, prompts, headers)
                    for connections in (1, 8, 64):
                        row = run_wrk(args.wrk, target_url, script, connections, args.load_seconds)
                        results.update({f"load_{name}_c{connections}_{k}": v for k, v in row.items()})
                        print(f"   {name:8} c{connections:<3} {row}", flush=True)
            if args.vegeta:
                # The bare proxy too: at a low rate, how much of the overhead any gunicorn + Flask
                # proxy pays here (wake-ups of an idle process), not the router's own work.
                paced = {**systems, "floor": (floor_url, "floor", {})}
                print(f">> 6/7 fixed rate with vegeta: {', '.join(paced)} at {args.rates} requests/s", flush=True)
                rows: dict[tuple[str, int], dict[str, float]] = {}
                for name, (target_url, model, headers) in paced.items():
                    targets = write_targets(Path(tmp) / f"{name}.targets", target_url, model, prompts, headers)
                    for rate in args.rates:
                        row = rows[name, rate] = run_vegeta(args.vegeta, targets, rate, args.load_seconds)
                        results.update({f"rate_{name}_r{rate}_{k}": v for k, v in row.items()})
                        print(f"   {name:8} {rate:>4}/s {row}", flush=True)
                # At a set arrival rate: minus the upstream alone, its p50 for both quantiles (as in
                # steps 1-2): one hiccup of the upstream's own run once made a p99 minus p99 negative.
                for (name, rate), row in rows.items():
                    if name != "direct":
                        for q in ("p50_ms", "p99_ms"):
                            results[f"rate_{name}_r{rate}_overhead_{q}"] = round(row[q] - rows["direct", rate]["p50_ms"], 2)
            results.update(_ratios(results))
            if args.streams:
                print(f">> 7/7 {args.streams} streams of {args.stream_seconds:.0f}s held open, short requests "
                      "meanwhile", flush=True)
                results.update(hold_streams(base + "/v1/chat/completions", args.streams, args.stream_seconds,
                                            "slow", "instant-a", router.pid))
        finally:
            stop_process(router)

    reached = aims.check(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**results, "aims": reached}, indent=2))
    width = max(len(k) for k in results)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in results.items()))
    print(">> the aims (README, Benchmarks), in this run on this machine:")
    print(aims.report(reached))
    print(f"(written to {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
