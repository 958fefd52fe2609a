#!/usr/bin/env bash
# Zero-downtime refresh / rollback of a Triton model (default: router_classifier) in a running
# llm-router release whose model repository is a PVC (triton.modelRepository.source: pvc).
# See docs/kubernetes.md for the procedure and for the `fetch` and `image` sources.
#
#   scripts/refresh_router_model.sh [options] publish DIR   # DIR = a local version directory,
#                                                           # e.g. model_repository/router_classifier/7
#   scripts/refresh_router_model.sh [options] rollback [N]  # withdraw version N (default: newest)
#   scripts/refresh_router_model.sh [options] status        # versions on the PVC, state per pod
#   scripts/refresh_router_model.sh [options] load          # explicit mode: reload on every pod
#
# Options: -n NAMESPACE (default: kubectl's), -r RELEASE (default: llm-router),
#          -m MODEL (default: router_classifier), -t TIMEOUT seconds to wait (default: 600).
#
# publish: copies DIR into the repository as hidden `.incoming-N`, renames it to `N` (atomic, so
# Triton's poll never sees half a version), then, in explicit mode, asks every Triton pod to
# reload the model, and waits until every Triton pod serves version N. Triton loads N while the
# previous version keeps serving and unloads the old one only afterwards, so no request fails.
# rollback: renames version N to a hidden `.withdrawn-N-<time>` (kept for inspection, ignored
# by Triton): the previous version becomes the newest again and Triton reloads it the same way.
#
# Needs kubectl with exec/cp/create-pod rights in the namespace. A helper pod (busybox, non-root,
# uid 1000 like Triton) mounts the claim read-write; on a ReadWriteOnce claim it is scheduled
# next to a Triton pod.
set -euo pipefail

NAMESPACE=""
RELEASE="llm-router"
MODEL="router_classifier"
TIMEOUT=600
HELPER_IMAGE="${HELPER_IMAGE:-busybox:1.37.0}"

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "refresh_router_model: $*" >&2; exit 1; }
log() { echo ">> $*" >&2; }

while getopts "n:r:m:t:h" opt; do
  case "$opt" in
    n) NAMESPACE="$OPTARG" ;;
    r) RELEASE="$OPTARG" ;;
    m) MODEL="$OPTARG" ;;
    t) TIMEOUT="$OPTARG" ;;
    h) usage 0 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
COMMAND="$1"; shift

KUBECTL=(kubectl)
[ -n "$NAMESPACE" ] && KUBECTL+=(-n "$NAMESPACE")
SELECTOR="app.kubernetes.io/instance=${RELEASE},app.kubernetes.io/component=triton"

triton_deployment() {
  "${KUBECTL[@]}" get deployment -l "$SELECTOR" -o name | head -n 1
}

triton_pods() {
  "${KUBECTL[@]}" get pods -l "$SELECTOR" --field-selector=status.phase=Running \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}

deployment_field() {  # $1: jsonpath below .spec.template.spec
  "${KUBECTL[@]}" get "$DEPLOYMENT" -o jsonpath="{.spec.template.spec$1}"
}

control_mode() {
  local args
  args="$(deployment_field '.containers[?(@.name=="tritonserver")].args[*]')"
  case "$args" in
    *--model-control-mode=explicit*) echo explicit ;;
    *--model-control-mode=none*) echo none ;;
    *) echo poll ;;
  esac
}

# Run a Python snippet against Triton's HTTP API inside a Triton pod (no port-forward, not
# subject to NetworkPolicy). $1: pod, $2: method, $3: path; prints "<status> <body>".
triton_http() {
  "${KUBECTL[@]}" exec "$1" -c tritonserver -- python3 -c '
import sys, urllib.request, urllib.error
req = urllib.request.Request("http://127.0.0.1:8000" + sys.argv[2], method=sys.argv[1],
                             data=b"{}" if sys.argv[1] == "POST" else None)
try:
    with urllib.request.urlopen(req, timeout=120) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except OSError as e:
    print(0, e)
' "$2" "$3"
}

HELPER=""
cleanup() { if [ -n "$HELPER" ]; then "${KUBECTL[@]}" delete pod "$HELPER" --wait=false >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

start_helper() {
  local claim subpath modes affinity=""
  claim="$(deployment_field '.volumes[?(@.name=="model-repository")].persistentVolumeClaim.claimName')"
  [ -n "$claim" ] || die "release $RELEASE's Triton does not mount its model repository from a PVC (source image/fetch: see docs/kubernetes.md)"
  subpath="$(deployment_field '.containers[?(@.name=="tritonserver")].volumeMounts[?(@.name=="model-repository")].subPath')"
  modes="$("${KUBECTL[@]}" get pvc "$claim" -o jsonpath='{.status.accessModes[*]}')"
  if [[ " $modes " != *" ReadWriteMany "* ]]; then
    # ReadWriteOnce: the writer must share a node with the pod that has the claim mounted.
    affinity='"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
      {"labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "'"$RELEASE"'",
       "app.kubernetes.io/component": "triton"}}, "topologyKey": "kubernetes.io/hostname"}]}},'
  fi
  HELPER="${RELEASE}-model-refresh-$(date +%s)"
  log "starting helper pod $HELPER with claim $claim (access modes: ${modes:-unknown})"
  "${KUBECTL[@]}" apply -f - >/dev/null <<EOF
{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {"name": "$HELPER", "labels": {"app.kubernetes.io/instance": "$RELEASE",
               "app.kubernetes.io/component": "model-refresh"}},
  "spec": {
    $affinity
    "restartPolicy": "Never",
    "automountServiceAccountToken": false,
    "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{
      "name": "helper", "image": "$HELPER_IMAGE", "command": ["sleep", "3600"],
      "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                          "capabilities": {"drop": ["ALL"]}},
      "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
      "volumeMounts": [{"name": "models", "mountPath": "/models", "subPath": "$subpath"}]
    }],
    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "$claim"}}]
  }
}
EOF
  "${KUBECTL[@]}" wait --for=condition=Ready "pod/$HELPER" --timeout=300s >/dev/null
}

helper_sh() { "${KUBECTL[@]}" exec "$HELPER" -c helper -- sh -ec "$1"; }

versions_on_pvc() {
  helper_sh "cd /models/$MODEL && for d in *; do case \$d in *[!0-9]*) ;; *) [ -d \"\$d\" ] && echo \$d ;; esac; done | sort -n"
}

reload_explicit() {
  local pod
  for pod in $(triton_pods); do
    log "$pod: POST /v2/repository/models/$MODEL/load"
    read -r code body < <(triton_http "$pod" POST "/v2/repository/models/$MODEL/load")
    [ "$code" = 200 ] || die "$pod: load failed ($code): $body"
  done
}

# Wait until every Triton pod answers $2 (200 = ready, other = not) for version $1.
wait_version() {
  local version="$1" want="$2" deadline=$((SECONDS + TIMEOUT)) pod code pending
  while :; do
    pending=""
    for pod in $(triton_pods); do
      read -r code _ < <(triton_http "$pod" GET "/v2/models/$MODEL/versions/$version/ready")
      if { [ "$want" = ready ] && [ "$code" != 200 ]; } || { [ "$want" = gone ] && [ "$code" = 200 ]; }; then
        pending+=" $pod"
      fi
    done
    [ -z "$pending" ] && { log "version $version is $want on every Triton pod"; return 0; }
    [ $SECONDS -lt $deadline ] || die "timed out: version $version not $want on:$pending"
    sleep 5
  done
}

DEPLOYMENT="$(triton_deployment)"
[ -n "$DEPLOYMENT" ] || die "no Triton deployment with labels $SELECTOR${NAMESPACE:+ in namespace $NAMESPACE}"
MODE="$(control_mode)"

case "$COMMAND" in
  publish)
    [ $# -eq 1 ] || usage
    SRC="${1%/}"
    VERSION="$(basename "$SRC")"
    [[ "$VERSION" =~ ^[0-9]+$ ]] || die "$SRC: the directory name must be the version number"
    [ -d "$SRC" ] || die "$SRC is not a directory"
    [ "$MODE" != none ] || die "Triton runs with --model-control-mode=none: use poll or explicit (triton.modelControl.mode)"
    start_helper
    helper_sh "test -d /models/$MODEL" || die "no model $MODEL in the repository"
    helper_sh "test ! -e /models/$MODEL/$VERSION" || die "version $VERSION already exists on the PVC (export a new one)"
    latest="$(versions_on_pvc | tail -n 1)"
    [ -z "$latest" ] || [ "$VERSION" -gt "$latest" ] || die "version $VERSION is not above the newest one ($latest): Triton would not serve it"
    log "copying $SRC to /models/$MODEL/.incoming-$VERSION"
    helper_sh "rm -rf /models/$MODEL/.incoming-$VERSION"
    "${KUBECTL[@]}" cp "$SRC" "$HELPER:/models/$MODEL/.incoming-$VERSION" -c helper
    helper_sh "mv /models/$MODEL/.incoming-$VERSION /models/$MODEL/$VERSION && sync"
    log "published $MODEL version $VERSION (mode: $MODE)"
    [ "$MODE" = explicit ] && reload_explicit
    wait_version "$VERSION" ready
    ;;
  rollback)
    [ $# -le 1 ] || usage
    [ "$MODE" != none ] || die "Triton runs with --model-control-mode=none: use poll or explicit (triton.modelControl.mode)"
    start_helper
    mapfile -t versions < <(versions_on_pvc)
    [ "${#versions[@]}" -ge 2 ] || die "$MODEL has fewer than two versions on the PVC: nothing to roll back to"
    VERSION="${1:-${versions[-1]}}"
    helper_sh "test -d /models/$MODEL/$VERSION" || die "no version $VERSION of $MODEL on the PVC"
    log "withdrawing $MODEL version $VERSION"
    helper_sh "mv /models/$MODEL/$VERSION /models/$MODEL/.withdrawn-$VERSION-$(date +%Y%m%d%H%M%S)"
    newest="$(versions_on_pvc | tail -n 1)"
    [ "$MODE" = explicit ] && reload_explicit
    wait_version "$newest" ready
    wait_version "$VERSION" gone
    ;;
  status)
    log "deployment $DEPLOYMENT, model control mode $MODE"
    for pod in $(triton_pods); do
      read -r code body < <(triton_http "$pod" POST "/v2/repository/index")
      echo "$pod: $body"
    done
    if [ -n "$(deployment_field '.volumes[?(@.name=="model-repository")].persistentVolumeClaim.claimName')" ]; then
      start_helper
      echo "versions of $MODEL on the PVC: $(versions_on_pvc | tr '\n' ' ')"
    fi
    ;;
  load)
    [ "$MODE" = explicit ] || die "load is for --model-control-mode=explicit (this release: $MODE)"
    reload_explicit
    ;;
  *) usage ;;
esac
