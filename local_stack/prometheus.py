"""A real Prometheus for the local stack and the tests: start it on loopback against the router
and Triton, load the chart's alert rules, and read the chart's dashboard queries back through
its HTTP API (`make observe`, tests/test_observability.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from .processes import stop_process, wait_until_ready
from .triton_launcher import free_port

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "llm-router"
DEFAULT_BINARY = ROOT / "tools" / "prometheus-2.42.0" / "prometheus"
# Grafana's interval variables, as the tests and plots fill them in.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h"}


def prometheus_binary() -> Path:
    """$PROMETHEUS_BIN, else the copy `make prometheus` unpacked under tools/."""
    path = Path(os.environ.get("PROMETHEUS_BIN", DEFAULT_BINARY))
    if not path.is_file():
        raise FileNotFoundError(f"no Prometheus at {path}: run `make prometheus` (or set PROMETHEUS_BIN)")
    return path


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    expr: str  # as written in the dashboard, Grafana variables included
    legend: str

    def promql(self, variables: dict[str, str] | None = None) -> str:
        expr = self.expr
        for name, value in (variables or GRAFANA_VARIABLES).items():
            expr = expr.replace(name, value)
        return expr


@dataclass(frozen=True)
class Monitoring:
    """What the chart ships for Prometheus and Grafana, rendered by `helm template`."""

    dashboard: dict[str, Any]
    rule_groups: list[dict[str, Any]]

    @property
    def queries(self) -> list[PanelQuery]:
        return [PanelQuery(p["title"], t["expr"], t.get("legendFormat", ""))
                for p in self.dashboard["panels"] for t in p.get("targets", [])]

    @property
    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.rule_groups for rule in group["rules"]]


def render_monitoring(helm: Path, *set_values: str) -> Monitoring:
    """The dashboard ConfigMap and the PrometheusRule, as `helm template` renders them."""
    # (Auth is off here only because nothing of it shows in these two objects.)
    args = [str(helm), "template", "observe", str(CHART), "--set", "metrics.grafanaDashboard.enabled=true",
            "--set", "metrics.prometheusRule.enabled=true", "--set", "router.auth.enabled=false"]
    for value in set_values:
        args += ["--set", value]
    docs = [d for d in yaml.safe_load_all(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
            if d]
    dashboard = next(d for d in docs if d["kind"] == "ConfigMap" and "llm-router.json" in d.get("data", {}))
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    return Monitoring(json.loads(dashboard["data"]["llm-router.json"]), rule["spec"]["groups"])


METRIC_NAME = re.compile(r"\b((?:router|nv)_[a-z0-9_]+)\b")


def metric_names(expr: str) -> set[str]:
    """The router's and Triton's metric names an expression reads (`router_*`, `nv_*`), label
    values (quoted strings) aside."""
    return set(METRIC_NAME.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)))


class PrometheusServer:
    """``prometheus`` on a free loopback port scraping ``targets`` ({job: [host:port, ...]}) every
    ``interval``, evaluating ``rule_groups`` at the same pace. Its data lives in a temporary
    directory that goes with ``stop()``."""

    def __init__(self, targets: dict[str, list[str]], rule_groups: list[dict[str, Any]] | None = None,
                 interval: str = "1s", binary: Path | None = None) -> None:
        self.binary = binary or prometheus_binary()
        self.targets = targets
        self.rule_groups = rule_groups or []
        self.interval = interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="prometheus-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def rules_file(self) -> Path:
        return self._dir / "rules.yaml"

    @property
    def log_file(self) -> Path:
        return self._dir / "prometheus.log"

    def check_rules(self) -> str:
        """``promtool check rules`` on the rule file; raises with its output when it fails."""
        self.rules_file.write_text(yaml.safe_dump({"groups": self.rule_groups}, sort_keys=False))
        done = subprocess.run([str(self.binary.with_name("promtool")), "check", "rules", str(self.rules_file)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"promtool check rules failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def start(self, timeout_s: float = 60) -> PrometheusServer:
        self.check_rules()
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval,
                       "scrape_timeout": self.interval},
            "rule_files": [str(self.rules_file)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": addrs}]}
                               for job, addrs in self.targets.items()],
        }
        (self._dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [str(self.binary), f"--config.file={self._dir / 'prometheus.yml'}",
               f"--storage.tsdb.path={self._dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
               "--web.enable-lifecycle"]
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self._dir)
        wait_until_ready(self._proc, lambda: requests.get(self.url + "/-/ready", timeout=1).ok, timeout_s,
                         "prometheus", self.log_file)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout_s=10)
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def api(self, path: str, **params: Any) -> Any:
        resp = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's series (vector results)."""
        return list(self.api("query", query=promql)["result"])

    def query_range(self, promql: str, start: float, end: float, step: str = "5s") -> list[dict[str, Any]]:
        return list(self.api("query_range", query=promql, start=start, end=end, step=step)["result"])

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def wait_for(self, promql: str, predicate: Any, timeout_s: float = 60) -> list[dict[str, Any]]:
        """Poll an instant query until ``predicate(result)`` holds; return that result."""
        deadline = time.monotonic() + timeout_s
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise TimeoutError(f"{promql!r} never satisfied the condition; last result: {result}")

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
