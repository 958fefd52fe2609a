"""`make observe`: the whole stack with a real Prometheus, driven by a traffic mix, then the chart's
Grafana dashboard drawn from the same PromQL (no Grafana here) and the alert rules' state.

It starts Triton and the router on free loopback ports (or uses a running stack: --router-url and
--triton-metrics), scrapes both every 2 s with the chart's alert rules loaded, sends automatic,
manual, streamed and invalid requests for --minutes, and writes one PNG with a plot per panel."""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from .prometheus import GRAFANA_VARIABLES, Monitoring, PrometheusServer, render_monitoring
from .stack import start_router, stop_process, wait_ready
from .triton_launcher import TritonPorts, TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What is 2+2?", "Name three primary colours.", "Translate 'good morning' into Spanish.",
    "Prove that the square root of 2 is irrational.", "Explain how TCP congestion control works.",
    "Write a Python function that merges two sorted lists.", "What is the capital of Australia?",
    "A train leaves at 3 pm at 60 km/h; another at 4 pm at 90 km/h. When does the second catch up?",
    "Summarise the causes of the French Revolution in three sentences.",
    "Which is larger, 9.11 or 9.9? Explain.", "Give a haiku about autumn.",
    "Derive the formula for the sum of a geometric series.",
]


def _request(url: str, rng: random.Random) -> int:
    """One request of the mix: mostly automatic routing, some manual, streamed or invalid."""
    prompt = rng.choice(PROMPTS)
    roll = rng.random()
    body: dict[str, Any] = {"model": "router", "max_tokens": 12, "messages": [{"role": "user", "content": prompt}]}
    if roll < 0.1:
        body["model"] = "smollm2-135m"
    elif roll < 0.25:
        body["stream"] = True
    elif roll < 0.3:
        body = {"model": "router", "messages": []}  # a client mistake: 400
    with requests.post(url + "/v1/chat/completions", json=body, stream=bool(body.get("stream")), timeout=120) as r:
        r.content  # noqa: B018 -- read the stream to its end
        return r.status_code


def drive(url: str, minutes: float, concurrency: int, seed: int = 0) -> dict[int, int]:
    """Traffic for ``minutes``; prints progress every 15 s; returns the count per status."""
    rng, lock, counts = random.Random(seed), threading.Lock(), {}  # type: ignore[var-annotated]
    deadline = time.monotonic() + minutes * 60
    started, next_note = time.monotonic(), time.monotonic() + 15

    def worker(_: int) -> None:
        nonlocal next_note
        while time.monotonic() < deadline:
            status = _request(url, rng)
            with lock:
                counts[status] = counts.get(status, 0) + 1
                if time.monotonic() >= next_note:
                    print(f">> traffic: {sum(counts.values())} requests in {time.monotonic() - started:.0f}s "
                          f"{dict(sorted(counts.items()))}", flush=True)
                    next_note += 15

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return counts


def _legend(template: str, labels: dict[str, str]) -> str:
    out = template
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out or json.dumps(labels)


def plot(prom: PrometheusServer, monitoring: Monitoring, start: float, end: float, out: Path) -> list[str]:
    """Every dashboard panel as a subplot of one PNG; returns the panels that had no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in monitoring.dashboard["panels"] if p["type"] != "row"]
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.3 * rows), squeeze=False)
    variables = {**GRAFANA_VARIABLES, "$__rate_interval": "1m", "$__range": f"{max(60, int(end - start))}s"}
    empty = []
    for ax, panel in itertools.zip_longest(axes.flat, panels):
        if panel is None:
            ax.axis("off")
            continue
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        drawn = False
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(name, value)
            for series in prom.query_range(expr, start, end, step="5s"):
                points = [(float(t) - start, float(v)) for t, v in series["values"] if math.isfinite(float(v))]
                if not points:
                    continue
                xs, ys = zip(*points)
                if panel["type"] == "stat":
                    ax.text(0.5, 0.5, f"{ys[-1]:.1%}" if "percent" in panel["fieldConfig"]["defaults"]["unit"]
                            else f"{ys[-1]:.3g}", ha="center", va="center", fontsize=22, transform=ax.transAxes)
                    ax.set_xticks([])
                    ax.set_yticks([])
                else:
                    ax.plot(xs, ys, label=_legend(target.get("legendFormat", ""), series["metric"])[:40])
                drawn = True
        if not drawn:
            empty.append(panel["title"])
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        elif panel["type"] != "stat":
            ax.legend(fontsize=6)
            ax.set_xlabel(f"seconds ({panel['fieldConfig']['defaults']['unit']})", fontsize=7)
    fig.suptitle(f"LLM router dashboard (helm/llm-router/dashboards/llm-router.json) from Prometheus, "
                 f"{(end - start) / 60:.0f} min of traffic", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return empty


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "router.yaml")
    parser.add_argument("--router-url", help="use this running router instead of starting one")
    parser.add_argument("--triton-metrics", help="host:port of the running Triton's metrics (with --router-url)")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--helm", type=Path, default=Path(os.environ.get("HELM_BIN", ROOT / "tools/bin/helm-v3.16.4")))
    args = parser.parse_args(argv)

    monitoring = render_monitoring(args.helm)
    triton: TritonServer | None = None
    router = None
    try:
        if args.router_url:
            url, triton_metrics = args.router_url.rstrip("/"), args.triton_metrics
        else:
            triton = TritonServer(args.model_repository.resolve(), ports=TritonPorts.free())
            print(">> starting Triton", flush=True)
            triton.start()
            port = free_port()
            router = start_router(args.config, "127.0.0.1", port, {
                "TRITON_HTTP_URL": triton.http_url, "TRITON_GRPC_URL": triton.grpc_url,
                "WEB_CONCURRENCY": "2"})
            url = f"http://127.0.0.1:{port}"
            wait_ready(url + "/health/ready", router, timeout_s=120)
            triton_metrics = f"127.0.0.1:{triton.ports.metrics}"
        scrape = {"router": [url.removeprefix("http://")]}
        if triton_metrics:
            scrape["triton"] = [triton_metrics]
        with PrometheusServer(scrape, monitoring.rule_groups, interval="2s") as prom:
            print(f">> Prometheus at {prom.url} (scraping {scrape}); driving traffic for {args.minutes} min", flush=True)
            prom.wait_for("sum(up)", lambda r: bool(r) and float(r[0]["value"][1]) == len(scrape))
            start = time.time()
            counts = drive(url, args.minutes, args.concurrency)
            time.sleep(5)
            end = time.time()
            print(f">> {sum(counts.values())} requests {dict(sorted(counts.items()))}; plotting", flush=True)
            empty = plot(prom, monitoring, start, end, args.out)
            alerts = [(a["labels"]["alertname"], a["state"]) for a in prom.api("alerts")["alerts"]]
            print(f">> wrote {args.out}; panels without data: {empty or 'none'}; alerts: {alerts or 'none'}")
    finally:
        if router is not None:
            stop_process(router)
        if triton is not None:
            triton.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
