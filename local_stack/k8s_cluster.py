"""A real Kubernetes control plane on 127.0.0.1, for the cluster tests and `make k8s-up`: etcd,
kube-apiserver, kube-controller-manager and kube-scheduler (built by `make k8s`), and kwok,
whose fake node takes the pods the scheduler binds: they go Running and Ready (and helm test
pods Succeeded) without any container starting. Admission, defaulting, validation, controllers
(Deployments, ReplicaSets, HPA, PDB, garbage collection) and scheduling are the real ones.

A fresh certificate authority, admin client certificate and service-account key are generated
into the state directory at each start; the admin kubeconfig is ``<state>/kubeconfig``.

Usage: ``python -m local_stack.k8s_cluster --state-dir .eval/k8s`` (binaries from the env
K8S_BIN_DIR, KWOK_BIN, ETCD_BIN, as `make k8s-up` sets them).
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import requests
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .processes import stop_process, wait_until_ready
from .triton_launcher import free_ports

NODE_NAME = "kwok-node-0"

# The fake node: big enough for every example values file (GPUs included), labelled like a GPU node.
NODE_MANIFEST = f"""apiVersion: v1
kind: Node
metadata:
  name: {NODE_NAME}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: {NODE_NAME}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/agent: ""
    type: kwok
    nvidia.com/gpu.present: "true"
status:
  allocatable: {{cpu: "64", memory: 512Gi, pods: "250", nvidia.com/gpu: "64", ephemeral-storage: 1Ti}}
  capacity: {{cpu: "64", memory: 512Gi, pods: "250", nvidia.com/gpu: "64", ephemeral-storage: 1Ti}}
"""
# kwok's own stages complete only Jobs' pods; `helm test` waits for its hook pods to succeed.
HELM_TEST_COMPLETE_STAGE = """apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: helm-test-pod-complete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: [Running]}
    - {key: '.metadata.annotations["helm.sh/hook"]', operator: In, values: [test, test-success]}
  delay: {durationMilliseconds: 500}
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated: {exitCode: 0, finishedAt: {{ $now | Quote }}, reason: Completed, startedAt: {{ $now | Quote }}}
      {{ end }}
      phase: Succeeded
"""


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name, signer: rsa.RSAPrivateKey, *,
          ca: bool = False, sans: list[x509.GeneralName] | None = None, client: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256())


def write_pki(pki: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters), service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm-router-test-ca")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default",
                                                                "kubernetes.default.svc")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.0.0.1")]
    server = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), server_key, ca_name,
                   ca_key, sans=sans)
    admin_key = _key()
    admin = _cert(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "admin")]), admin_key, ca_name, ca_key, client=True)
    sa_key = _key()
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": _pem(ca_key),
             "apiserver.crt": server.public_bytes(serialization.Encoding.PEM), "apiserver.key": _pem(server_key),
             "admin.crt": admin.public_bytes(serialization.Encoding.PEM), "admin.key": _pem(admin_key),
             "sa.key": _pem(sa_key),
             "sa.pub": sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)}
    for name, data in files.items():
        (pki / name).write_bytes(data)
        (pki / name).chmod(0o600)


def kubeconfig_text(server: str, pki: Path) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {{server: "{server}", certificate-authority: "{pki / 'ca.crt'}"}}
users:
- name: admin
  user: {{client-certificate: "{pki / 'admin.crt'}", client-key: "{pki / 'admin.key'}"}}
contexts:
- name: local
  context: {{cluster: local, user: admin}}
current-context: local
"""


class KubeCluster:
    def __init__(self, state_dir: Path, bin_dir: Path, kwok: Path, etcd: Path,
                 progress: Callable[[str], None] | None = None) -> None:
        self.state = state_dir.resolve()
        self.bin_dir, self.kwok, self.etcd = bin_dir, kwok, etcd
        self._progress = progress or (lambda m: print(f"[k8s] {m}", file=sys.stderr, flush=True))
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.kubeconfig = self.state / "kubeconfig"
        self.server = ""

    @classmethod
    def from_env(cls, state_dir: Path) -> KubeCluster:
        missing = [v for v in ("K8S_BIN_DIR", "KWOK_BIN", "ETCD_BIN") if not os.environ.get(v)]
        if missing:
            raise FileNotFoundError(f"set {', '.join(missing)} (make k8s builds them; make test sets them)")
        return cls(state_dir, Path(os.environ["K8S_BIN_DIR"]), Path(os.environ["KWOK_BIN"]),
                   Path(os.environ["ETCD_BIN"]))

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.state / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        # PR_SET_PDEATHSIG is Linux-only and not in the stdlib: stop() (and atexit in tests) end them.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self._procs.append((name, proc))
        return proc

    def start(self, timeout_s: float = 180) -> KubeCluster:
        started = time.monotonic()
        if self.state.exists():
            shutil.rmtree(self.state)
        (self.state / "etcd").mkdir(parents=True)
        pki = self.state / "pki"
        write_pki(pki)
        etcd_client, etcd_peer, api, cm, sched, kwok_port = free_ports(6)
        self.server = f"https://127.0.0.1:{api}"
        self.kubeconfig.write_text(kubeconfig_text(self.server, pki))
        self.kubeconfig.chmod(0o600)  # it names the admin's key
        try:
            self._progress(f"etcd on 127.0.0.1:{etcd_client}")
            etcd = self._start("etcd", [
                str(self.etcd), "--data-dir", str(self.state / "etcd"), "--name", "default",
                "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
                "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
                "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}", "--log-level", "warn"])
            wait_until_ready(etcd, lambda: urllib.request.urlopen(f"http://127.0.0.1:{etcd_client}/health",
                                                                   timeout=2).status == 200,
                             30, "etcd", self.state / "etcd.log")
            self._progress(f"kube-apiserver on {self.server}")
            apiserver = self._start("kube-apiserver", [
                str(self.bin_dir / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api}",
                f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
                # etcd 3.4 has no watch progress requests, so watch-list streams fail mid-way, and
                # kwok's client-go retries them after a back-off: pods changed state a minute late.
                # Without the feature the server refuses them at once and clients list + watch.
                "--feature-gates=WatchList=false",
                f"--cert-dir={self.state / 'apiserver-certs'}"])
            wait_until_ready(apiserver, self._api_ready, timeout_s, "kube-apiserver", self.state / "kube-apiserver.log",
                             poll_s=0.5)
            kubeconfig = str(self.kubeconfig)
            self._progress("kube-controller-manager, kube-scheduler, kwok")
            self._start("kube-controller-manager", [
                str(self.bin_dir / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1", f"--secure-port={cm}", "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true", "--controllers=*",
                # HPA: the controller runs; without a metrics API it reports the metrics unknown.
                "--horizontal-pod-autoscaler-sync-period=5s"])
            self._start("kube-scheduler", [
                str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1", f"--secure-port={sched}", "--leader-elect=false"])
            stages = self.state / "kwok-stages.yaml"
            stages.write_text(Path(f"{self.kwok}-stages.yaml").read_text() + "\n---\n" + HELM_TEST_COMPLETE_STAGE)
            self._start("kwok", [
                str(self.kwok), f"--kubeconfig={kubeconfig}", f"--config={stages}",
                "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-ip=127.0.0.1", "--node-lease-duration-seconds=40", "--server-address",
                f"127.0.0.1:{kwok_port}"])
            self.core().create_node(yaml.safe_load(NODE_MANIFEST))
            deadline = time.monotonic() + timeout_s
            while not self._node_ready():
                self._check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the kwok node is not Ready after {timeout_s:.0f}s; see {self.state}/kwok.log")
                time.sleep(0.5)
            self._progress(f"ready in {time.monotonic() - started:.1f}s: KUBECONFIG={self.kubeconfig}")
        except BaseException:
            self.stop()
            raise
        return self

    def session(self) -> requests.Session:
        """The API server's REST API as the admin, for what the client library does not wrap."""
        pki = self.state / "pki"
        session = requests.Session()
        session.cert = (str(pki / "admin.crt"), str(pki / "admin.key"))
        session.verify = str(pki / "ca.crt")
        session.trust_env = False  # no REQUESTS_CA_BUNDLE or proxy from the environment: this CA, directly
        return session

    def _api_ready(self) -> bool:
        with self.session() as session:
            return session.get(f"{self.server}/readyz", timeout=2).status_code == 200

    def api_client(self) -> k8s.ApiClient:
        return k8s_config.new_client_from_config(str(self.kubeconfig))

    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api_client())

    def _node_ready(self) -> bool:
        status = self.core().read_node(NODE_NAME).status
        return status is not None and any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])

    def _check_alive(self) -> None:
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see {self.state}/{name}.log")

    def stop(self) -> None:
        for _name, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self._procs):
            stop_process(proc, timeout_s=15)
        self._procs.clear()

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".eval/k8s"))
    args = parser.parse_args(argv)
    cluster = KubeCluster.from_env(args.state_dir)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with cluster:
        print(f"\n>> export KUBECONFIG={cluster.kubeconfig}   (Ctrl-C stops the cluster)\n", flush=True)
        while not stop.is_set():
            cluster._check_alive()
            stop.wait(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
