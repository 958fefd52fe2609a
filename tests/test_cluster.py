"""The chart on a real Kubernetes API server (local_stack/k8s_cluster.py: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler v1.34, and a kwok node whose pods go Running and Ready
without containers). What offline rendering and schema validation cannot check: admission,
defaulting, strict server-side field validation, immutable fields, the controllers rolling
Deployments, PDBs and HPAs, helm hooks, upgrades and rollbacks.

``make test`` builds the control plane (``make k8s``) and passes its binaries in env
K8S_BIN_DIR, KWOK_BIN and ETCD_BIN; without them these tests fail (they never skip). The
Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule) are not the chart's: the fixture
registers schema-less stand-ins for them, as a cluster with the operator would have them."""
from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from local_stack.k8s_cluster import KubeCluster
from router_service.config import parse_config

from .test_helm import BAD_VALUES, CHART, EXAMPLES, SCHEMA_ERROR, VALUE_IDS, VALUE_SETS, _helm_bin, effective_values

RELEASE = "llm-router"
CRD_STAND_INS = [("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
                 ("monitoring.coreos.com", "PrometheusRule", "prometheusrules")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    try:
        kube = KubeCluster.from_env(tmp_path_factory.mktemp("k8s") / "state")
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}: run the tests via `make test` (it builds the control plane)")
    kube.start(timeout_s=300)
    ext = k8s.ApiextensionsV1Api(kube.api_client())
    for group, kind, plural in CRD_STAND_INS:
        ext.create_custom_resource_definition({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}})
    deadline = time.monotonic() + 60
    while not all(_crd_established(ext, f"{plural}.{group}") for group, _, plural in CRD_STAND_INS):
        assert time.monotonic() < deadline, "the stand-in CRDs were not established"
        time.sleep(0.5)
    yield kube
    kube.stop()


def _crd_established(ext: k8s.ApiextensionsV1Api, name: str) -> bool:
    conditions = ext.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def helm(kube: KubeCluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm_bin(), "--kubeconfig", str(kube.kubeconfig), *args], capture_output=True,
                          text=True, timeout=timeout)


def values_args(values: Path | None) -> list[str]:
    return ["-f", str(values)] if values is not None else \
        ["--set", "router.auth.masterKeySecret.name=llm-router-master-key"]


def rendered(kube: KubeCluster, namespace: str, values: Path | None, *extra: str) -> list[dict[str, Any]]:
    done = helm(kube, "template", RELEASE, str(CHART), "--namespace", namespace, *values_args(values), *extra)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _secret_refs(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Secret name -> the keys the rendered pods read from it: what a user creates beforehand."""
    refs: dict[str, set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if isinstance(ref, dict):
                refs.setdefault(ref["name"], set()).add(ref["key"])
            if isinstance(node.get("secretRef"), dict):
                refs.setdefault(node["secretRef"]["name"], set())
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                refs.setdefault(node["secret"]["secretName"], set())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Pod", "Job"):
            walk(doc["spec"])
    return refs


def _claim_refs(docs: list[dict[str, Any]]) -> set[str]:
    """The PersistentVolumeClaims the rendered pods mount."""
    return {v["persistentVolumeClaim"]["claimName"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
            for v in d["spec"]["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}


def prepare(kube: KubeCluster, namespace: str, docs: list[dict[str, Any]]) -> None:
    """The namespace, the Secrets the pods reference (with the keys they read), and a volume for
    each claim the chart makes (this cluster has no provisioner)."""
    core = kube.core()
    core.create_namespace({"metadata": {"name": namespace}})
    # The service-account controller gives a new namespace its `default` account (pods need it).
    wait_for(f"the default ServiceAccount of {namespace}", lambda: any(
        a.metadata.name == "default" for a in core.list_namespaced_service_account(namespace).items))
    for name, keys in _secret_refs(docs).items():
        data = {k: base64.b64encode(f"test-{k}-0123456789abcdef".encode()).decode() for k in keys or {"key"}}
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": data})
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    for name in sorted(_claim_refs(docs) - {c["metadata"]["name"] for c in claims}):
        # An existing claim the values name (e.g. the model repository's): the user's, made beforehand.
        existing = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                    "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                             "resources": {"requests": {"storage": "10Gi"}}}}
        core.create_namespaced_persistent_volume_claim(namespace, existing)
        claims.append(existing)
    for claim in claims:
        spec = claim["spec"]
        core.create_persistent_volume({
            "metadata": {"name": f"{namespace}-{claim['metadata']['name']}"},
            "spec": {"capacity": {"storage": spec["resources"]["requests"]["storage"]},
                     "accessModes": spec["accessModes"], "storageClassName": spec.get("storageClassName") or "",
                     "hostPath": {"path": f"/tmp/{namespace}-{claim['metadata']['name']}"},
                     "claimRef": {"namespace": namespace, "name": claim["metadata"]["name"]}}})


def strict_dry_run(kube: KubeCluster, doc: dict[str, Any], namespace: str) -> requests.Response:
    """POST ``doc`` as a server-side dry run with strict field validation."""
    resource = DynamicClient(kube.api_client()).resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    path = resource.path(namespace=namespace if resource.namespaced else None)
    return kube.session().post(kube.server + path, params={"dryRun": "All", "fieldValidation": "Strict"},
                               json=doc, timeout=30)


def live(kube: KubeCluster, doc: dict[str, Any], namespace: str) -> Any:
    resource = DynamicClient(kube.api_client()).resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    return resource.get(name=doc["metadata"]["name"], namespace=namespace if resource.namespaced else None)


def wait_for(what: str, check: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# install every value set, roll out, helm test
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_install_rolls_out_and_passes_helm_test(cluster: KubeCluster, values: Path | None) -> None:
    namespace = f"install-{VALUE_IDS[VALUE_SETS.index(values)]}"
    docs = rendered(cluster, namespace, values)
    prepare(cluster, namespace, docs)
    # Every object, as rendered, passes the server's strict field validation (a dry run).
    for doc in docs:
        accepted = strict_dry_run(cluster, doc, namespace)
        assert accepted.status_code == 201, (doc["kind"], doc["metadata"]["name"], accepted.text)

    done = helm(cluster, "install", RELEASE, str(CHART), "--namespace", namespace, *values_args(values),
                "--wait", "--timeout", "240s")
    assert done.returncode == 0, done.stderr
    for doc in (d for d in docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})):
        found = live(cluster, doc, namespace)  # everything rendered is there (hooks run with helm test)
        assert found.metadata.labels["app.kubernetes.io/instance"] == RELEASE
    apps = k8s.AppsV1Api(cluster.api_client())
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        found = apps.read_namespaced_deployment(deployment["metadata"]["name"], namespace)
        status = found.status
        assert status.ready_replicas == status.replicas and status.replicas >= 1, deployment["metadata"]["name"]
        # The Secret references the cluster holds are the rendered ones (and the pods run with them).
        held = cluster.api_client().sanitize_for_serialization(found.spec.template.spec)
        assert _secret_refs([{"kind": "Pod", "spec": held}]) == _secret_refs([{"kind": "Pod", "spec": deployment[
            "spec"]["template"]["spec"]}])
    for kind, listing in (("HorizontalPodAutoscaler", k8s.AutoscalingV2Api(cluster.api_client())
                           .list_namespaced_horizontal_pod_autoscaler),
                          ("PodDisruptionBudget", k8s.PolicyV1Api(cluster.api_client())
                           .list_namespaced_pod_disruption_budget),
                          ("NetworkPolicy", k8s.NetworkingV1Api(cluster.api_client()).list_namespaced_network_policy)):
        names = sorted(o.metadata.name for o in listing(namespace).items)
        assert names == sorted(d["metadata"]["name"] for d in docs if d["kind"] == kind), kind
    # The PDBs see the pods they guard (their selectors match the Deployments' labels).
    for pdb in k8s.PolicyV1Api(cluster.api_client()).list_namespaced_pod_disruption_budget(namespace).items:
        wait_for(f"PDB {pdb.metadata.name} to count its pods", lambda p=pdb: (k8s.PolicyV1Api(
            cluster.api_client()).read_namespaced_pod_disruption_budget(p.metadata.name, namespace)
            .status.expected_pods or 0) >= 1)
    # The router config the cluster holds loads with the router's own loader and equals the values,
    # its Triton URLs pointing at this release's Triton Service.
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"][
        "app.kubernetes.io/component"] == "router")
    held = yaml.safe_load(cluster.core().read_namespaced_config_map(config_map["metadata"]["name"], namespace)
                          .data["router.yaml"])
    expected = effective_values(values)["router"]["config"]
    assert {k: v for k, v in held.items() if k != "triton"} == {k: v for k, v in expected.items() if k != "triton"}
    triton_service = next(d["metadata"]["name"] for d in docs if d["kind"] == "Service" and
                          d["metadata"]["labels"]["app.kubernetes.io/component"] == "triton")
    loaded = parse_config(held, environ={})
    assert loaded.triton.http_url.startswith(f"http://{triton_service}.{namespace}.svc:")
    cluster.core().read_namespaced_service(triton_service, namespace)  # and that Service exists

    tested = helm(cluster, "test", RELEASE, "--namespace", namespace, "--timeout", "120s")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "Phase:          Succeeded" in tested.stdout


# --------------------------------------------------------------------------------------------
# upgrades and rollbacks: the documented model-refresh paths
# --------------------------------------------------------------------------------------------
def _image(pod_or_template: Any) -> str:
    return next(c.image for c in pod_or_template.spec.containers if c.name == "tritonserver")


def _template_of(apps: k8s.AppsV1Api, name: str, namespace: str) -> Any:
    return apps.read_namespaced_deployment(name, namespace).spec.template


def test_upgrade_rolls_within_the_pdb_and_rollback_restores(cluster: KubeCluster, tmp_path: Path) -> None:
    namespace = "rollout"
    base = ["--set", "router.auth.masterKeySecret.name=llm-router-master-key", "--set", "triton.replicaCount=2",
            "--set", "triton.podDisruptionBudget.enabled=true"]
    docs = rendered(cluster, namespace, None, *base[2:])
    prepare(cluster, namespace, docs)
    assert helm(cluster, "install", RELEASE, str(CHART), "-n", namespace, *base, "--wait", "--timeout",
                "240s").returncode == 0
    apps = k8s.AppsV1Api(cluster.api_client())
    triton = next(d["metadata"]["name"] for d in docs if d["kind"] == "Deployment" and
                  d["metadata"]["labels"]["app.kubernetes.io/component"] == "triton")
    router = next(d["metadata"]["name"] for d in docs if d["kind"] == "Deployment" and
                  d["metadata"]["labels"]["app.kubernetes.io/component"] == "router")
    first_triton, first_router = _template_of(apps, triton, namespace), _template_of(apps, router, namespace)

    # A new image tag (the `image` source's refresh path) rolls Triton; the rollout never takes
    # more pods down than the PDB allows: maxUnavailable 0, new pods ready before old ones go.
    pdb = k8s.PolicyV1Api(cluster.api_client()).read_namespaced_pod_disruption_budget(triton, namespace)
    proc = subprocess.Popen([_helm_bin(), "--kubeconfig", str(cluster.kubeconfig), "upgrade", RELEASE, str(CHART),
                             "-n", namespace, *base, "--set", "triton.image.tag=models-2", "--wait", "--timeout",
                             "240s"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lowest = 2
    while proc.poll() is None:
        status = apps.read_namespaced_deployment(triton, namespace).status
        lowest = min(lowest, status.available_replicas or 0)
        time.sleep(0.2)
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
    min_available = 2 - int(pdb.spec.max_unavailable) if pdb.spec.max_unavailable is not None else \
        int(pdb.spec.min_available)
    assert lowest >= max(min_available, 2)  # maxUnavailable 0: never below the replica count
    rolled = _template_of(apps, triton, namespace)
    assert _image(rolled).endswith(":models-2")
    assert _template_of(apps, router, namespace) == first_router  # the router did not roll
    wait_for("the new Triton pods", lambda: all(
        _image(p).endswith(":models-2") for p in cluster.core().list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/component=triton").items))

    # A new model archive (the `fetch` source's refresh path) rolls Triton again, the same way.
    fetch = ["--set", "triton.modelRepository.source=fetch", "--set",
             "triton.modelRepository.fetch.url=https://models.example.com/model-repository-2.tar.gz"]
    lowest = 2
    proc = subprocess.Popen([_helm_bin(), "--kubeconfig", str(cluster.kubeconfig), "upgrade", RELEASE, str(CHART),
                             "-n", namespace, *base, "--set", "triton.image.tag=models-2", *fetch, "--wait",
                             "--timeout", "240s"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None:
        lowest = min(lowest, apps.read_namespaced_deployment(triton, namespace).status.available_replicas or 0)
        time.sleep(0.2)
    assert proc.returncode == 0 and lowest >= 2, proc.stdout.read() if proc.stdout else ""
    fetched = _template_of(apps, triton, namespace)
    assert fetched.metadata.annotations["checksum/model-repository"] != \
        rolled.metadata.annotations["checksum/model-repository"]
    assert any(c.name == "download-model-repository" for c in fetched.spec.init_containers or [])
    rolled = fetched

    # A router config change rolls the router (its checksum annotation), not Triton.
    changed = tmp_path / "config.yaml"
    config = effective_values(None)["router"]["config"]
    config["policies"][0]["strong_share"] = 0.35
    changed.write_text(yaml.safe_dump({"router": {"config": config}}))
    assert helm(cluster, "upgrade", RELEASE, str(CHART), "-n", namespace, *base, "--set", "triton.image.tag=models-2",
                *fetch, "-f", str(changed), "--wait", "--timeout", "240s").returncode == 0
    router_now = _template_of(apps, router, namespace)
    assert router_now.metadata.annotations["checksum/config"] != first_router.metadata.annotations["checksum/config"]
    assert _template_of(apps, triton, namespace) == rolled

    # helm rollback to the first revision brings both back.
    back = helm(cluster, "rollback", RELEASE, "1", "-n", namespace, "--wait", "--timeout", "240s")
    assert back.returncode == 0, back.stderr
    assert _image(_template_of(apps, triton, namespace)) == _image(first_triton)
    assert _template_of(apps, router, namespace).metadata.annotations == first_router.metadata.annotations
    history = yaml.safe_load(helm(cluster, "history", RELEASE, "-n", namespace, "-o", "yaml").stdout)
    assert [h["status"] for h in history][-1] == "deployed" and len(history) == 5


# --------------------------------------------------------------------------------------------
# bad values fail the way a user sees them
# --------------------------------------------------------------------------------------------
def test_bad_values_fail_before_anything_is_applied(cluster: KubeCluster, tmp_path: Path) -> None:
    namespace = "bad-values"
    cluster.core().create_namespace({"metadata": {"name": namespace}})
    for name in ("gpu-count-zero", "bad-service-type", "root-user"):
        values = tmp_path / f"{name}.yaml"
        values.write_text(yaml.safe_dump(BAD_VALUES[name]))
        done = helm(cluster, "install", RELEASE, str(CHART), "-n", namespace, "-f", str(values), "--set",
                    "router.auth.masterKeySecret.name=k")
        assert done.returncode != 0 and SCHEMA_ERROR in done.stderr, (name, done.stderr)
    assert helm(cluster, "list", "-n", namespace, "-a", "-q").stdout.strip() == ""
    assert k8s.AppsV1Api(cluster.api_client()).list_namespaced_deployment(namespace).items == []


def test_a_selector_change_is_refused_by_the_server(cluster: KubeCluster) -> None:
    """Deployment selectors are immutable: a value that changes the selector labels but not the
    object names (nameOverride "router": the release name "llm-router" contains it, so the names
    stay, while app.kubernetes.io/name changes) passes the schema and renders, and only the API
    server refuses it; the release keeps running its previous revision."""
    namespace = "immutable"
    base = ["--set", "router.auth.masterKeySecret.name=llm-router-master-key"]
    prepare(cluster, namespace, rendered(cluster, namespace, None))
    assert helm(cluster, "install", RELEASE, str(CHART), "-n", namespace, *base, "--wait", "--timeout",
                "240s").returncode == 0
    assert rendered(cluster, namespace, None, "--set", "nameOverride=router")  # renders fine offline
    done = helm(cluster, "upgrade", RELEASE, str(CHART), "-n", namespace, *base, "--set", "nameOverride=router")
    assert done.returncode != 0 and "field is immutable" in done.stderr, done.stderr
    apps = k8s.AppsV1Api(cluster.api_client())
    for deployment in apps.list_namespaced_deployment(namespace).items:
        assert deployment.spec.selector.match_labels["app.kubernetes.io/name"] == "llm-router"
        assert deployment.status.ready_replicas == deployment.spec.replicas


def test_strict_field_validation_rejects_an_unknown_field(cluster: KubeCluster) -> None:
    """The server-side check the install test relies on can fail: a misspelt field is refused."""
    namespace = "strict"
    docs = rendered(cluster, namespace, None)
    cluster.core().create_namespace({"metadata": {"name": namespace}})
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    refused = strict_dry_run(cluster, deployment, namespace)
    assert refused.status_code == 400, refused.text
    assert 'strict decoding error: unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in \
        refused.json()["message"]


assert EXAMPLES, "the chart's examples/ are the value sets installed above"
