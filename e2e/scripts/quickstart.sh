#!/usr/bin/env bash
# Cairn on this machine, from a fresh clone: installs what is missing (Debian packages, the
# sandbox's Kubernetes control plane, helm), builds the workspace, brings up the sandbox, installs
# the operator with its Helm chart (the operator runs as pods under the chart's ServiceAccount),
# applies examples/minimal.yaml and waits, printing progress, until the KVCluster is Available;
# then writes and reads a key through the members and prints how to go on. Run as root (the
# sandbox gives pods namespaces and serves cluster DNS on port 53). Running it again reuses
# whatever is up.
#
# Settings (environment):
#   CAIRN_QUICKSTART_PREPARED=1   packages, control plane, helm and binaries are in place already:
#                                 skip installing and building (the test suite sets it)
#   CAIRN_BIN_DIR                 where the workspace's binaries are (default target/debug)
#   CAIRN_QUICKSTART_TIMEOUT      seconds to wait for the cluster to become Available (300)
#   CAIRN_SANDBOX_DIR, CAIRN_SANDBOX_API_PORT, CAIRN_SANDBOX_ETCD_PORT, CAIRN_SANDBOX_POD_OCTET
#                                 which sandbox (see `sandbox --help`)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${CAIRN_BIN_DIR:-$ROOT/${CARGO_TARGET_DIR:-target}/debug}
HELM_DIR=${CAIRN_HELM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn/helm-v3.17.2}
TIMEOUT=${CAIRN_QUICKSTART_TIMEOUT:-300}
NAMESPACE=default
CLUSTER=kv
RELEASE=cairn-operator
OPERATOR_NAMESPACE=cairn-system

started=$SECONDS
step() { printf '\n==> [%3ds] %s\n' $((SECONDS - started)) "$*" >&2; }
fail() {
  echo "quickstart: $*" >&2
  exit 1
}

if [ "${CAIRN_QUICKSTART_PREPARED:-0}" != 1 ]; then
  [ "$(id -u)" = 0 ] || fail "run as root: the sandbox needs namespaces and port 53 on a loopback address"
  step "installing Debian packages that are missing"
  e2e/scripts/install-packages.sh
  step "building the sandbox's Kubernetes control plane (cached; about 8 minutes the first time)"
  e2e/scripts/build-k8s.sh
  step "installing helm and kubectl (cached)"
  e2e/scripts/install-helm.sh
  step "building Cairn (cairn, cairnctl, cairn-operator, sandbox)"
  cargo build --workspace --locked
fi
for binary in sandbox cairn cairnctl cairn-operator; do
  [ -x "$BIN/$binary" ] || fail "$BIN/$binary is missing: build the workspace (cargo build --workspace) first"
done

KUBECTL=$(command -v kubectl || echo "$HELM_DIR/kubectl/kubectl")
HELM=$HELM_DIR/helm/helm
[ -x "$HELM" ] || fail "helm is missing at $HELM: run e2e/scripts/install-helm.sh"

step "starting the sandbox (etcd, kube-apiserver, kube-controller-manager, a local kubelet, cluster DNS)"
"$BIN/sandbox" up
export "$("$BIN/sandbox" env)"
# A discovery cache of the sandbox's own: one in ~/.kube from an earlier sandbox on the same address
# would not know the KVCluster kind.
kubectl() { "$KUBECTL" --cache-dir="${KUBECONFIG%/*}/kubectl-cache" "$@"; }
# helm keeps its caches and settings with the sandbox, not in the user's home.
export HELM_CACHE_HOME=${KUBECONFIG%/*}/helm HELM_CONFIG_HOME=${KUBECONFIG%/*}/helm HELM_DATA_HOME=${KUBECONFIG%/*}/helm

step "installing the operator: helm upgrade --install $RELEASE charts/cairn-operator (waits for its pods)"
"$HELM" upgrade --install "$RELEASE" charts/cairn-operator --namespace "$OPERATOR_NAMESPACE" \
  --create-namespace --wait --timeout 3m
kubectl get pods --namespace "$OPERATOR_NAMESPACE" -o wide

step "applying examples/minimal.yaml (KVCluster $CLUSTER, 3 members)"
kubectl apply --namespace "$NAMESPACE" -f examples/minimal.yaml

step "waiting for KVCluster $CLUSTER to become Available (up to ${TIMEOUT}s)"
deadline=$((SECONDS + TIMEOUT))
last=""
progress='phase {.status.phase}, {.status.readyReplicas}/{.spec.replicas} ready, leader {.status.leader}, Available {.status.conditions[?(@.type=="Available")].status}: {.status.conditions[?(@.type=="Available")].message}'
while :; do
  now=$(kubectl get kvc "$CLUSTER" --namespace "$NAMESPACE" -o jsonpath="$progress" 2>&1 || true)
  if [ "$now" != "$last" ]; then
    printf '  [%3ds] %s\n' $((SECONDS - started)) "$now" >&2
    last=$now
  fi
  ready=$(kubectl get kvc "$CLUSTER" --namespace "$NAMESPACE" \
    -o jsonpath='{.status.conditions[?(@.type=="Available")].status}/{.status.readyReplicas}' 2>/dev/null || true)
  [ "$ready" = "True/3" ] && break
  if [ $SECONDS -ge $deadline ]; then
    kubectl describe kvc "$CLUSTER" --namespace "$NAMESPACE" >&2 || true
    kubectl get pods --all-namespaces -o wide >&2 || true
    fail "KVCluster $CLUSTER did not become Available within ${TIMEOUT}s (state above; operator logs: $BIN/sandbox logs $OPERATOR_NAMESPACE/<pod>)"
  fi
  sleep 2
done
kubectl get kvc --namespace "$NAMESPACE"

# The sandbox has no kube-proxy behind Service IPs; members' pod IPs are on loopback.
ENDPOINTS=$(kubectl get pods --namespace "$NAMESPACE" -l "app.kubernetes.io/name=cairn,app.kubernetes.io/instance=$CLUSTER" \
  -o jsonpath='{range .items[*]}{.status.podIP}:2379{","}{end}')
ENDPOINTS=${ENDPOINTS%,}
step "writing with cairnctl and reading back with etcdctl through $ENDPOINTS"
"$BIN/cairnctl" --endpoints="$ENDPOINTS" put quickstart "hello from $(hostname)"
ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" get quickstart
ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" member list -w table

step "ready"
# The directories of the binaries the next steps use, each once.
path=$BIN
for dir in "${KUBECTL%/*}" "${HELM%/*}"; do
  case ":$path:$PATH:" in *":$dir:"*) ;; *) path=$path:$dir ;; esac
done
# Which sandbox, when it is not the default one.
sandbox_env=$(env | grep -E '^CAIRN_SANDBOX_(DIR|API_PORT|ETCD_PORT|POD_OCTET)=' | sort | tr '\n' ' ' || true)
cat <<EOF

Cairn is running: the operator (namespace $OPERATOR_NAMESPACE) and KVCluster $CLUSTER (namespace $NAMESPACE).
In a new shell:

  export KUBECONFIG=$KUBECONFIG PATH=$path:\$PATH
  export ETCDCTL_API=3 ENDPOINTS=$ENDPOINTS${sandbox_env:+ ${sandbox_env% }}

  kubectl get kvc                                  # replicas, ready, leader, Available, version
  kubectl describe kvc $CLUSTER                            # conditions, members, events
  kubectl scale kvc/$CLUSTER --replicas=5                  # one member at a time; follow with: kubectl get kvc -w
  cairnctl --endpoints=\$ENDPOINTS put greeting hello
  cairnctl --endpoints=\$ENDPOINTS endpoint status -w table
  etcdctl --endpoints=\$ENDPOINTS get greeting
  sandbox logs $NAMESPACE/$CLUSTER-0                  # a member's log
  sandbox down                                     # stops everything; run this script again to start over

EOF
