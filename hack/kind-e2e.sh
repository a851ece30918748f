#!/usr/bin/env bash
# End to end on a laptop: a kind cluster, both images built and loaded, the operator installed with
# Helm, the CPU parameter-server MNIST example run to completion, its accuracy printed.
#
#   hack/kind-e2e.sh            # (or `make kind-e2e`) create/reuse the cluster and run everything
#   hack/kind-e2e.sh down       # delete the cluster
#   TEARDOWN=1 hack/kind-e2e.sh # run, then delete the cluster whatever happened
#   TENSORBOARD=1 hack/kind-e2e.sh  # also run examples/mnist-shared-storage.yaml and port-forward
#                                   # its TensorBoard to http://localhost:6006 (Ctrl-C to stop)
#
# Needs docker, kind, kubectl and helm on PATH, and internet access from the cluster (the trainer
# downloads MNIST, ~11 MB, and checks its SHA-256). Settings (environment):
#   CLUSTER=disttrain  NAMESPACE=disttrain-system  JOB_NAMESPACE=default  TIMEOUT=30m
#   OPERATOR_IMAGE=disttrain/operator:0.1.0  TRAINER_IMAGE=disttrain/trainer:0.1.0
#
# Every step here is also checked without Docker by the tests: the Dockerfile by hadolint, the
# chart by `helm lint`/`helm install` on a real API server, the example by a server-side dry run,
# the wait on condition=Succeeded by an operator run under the chart's ServiceAccount, and the
# accuracy extraction below by tests/unit/test_packaging_static.py.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${CLUSTER:-disttrain}
NAMESPACE=${NAMESPACE:-disttrain-system}
JOB_NAMESPACE=${JOB_NAMESPACE:-default}
TIMEOUT=${TIMEOUT:-30m}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-disttrain/operator:0.1.0}
TRAINER_IMAGE=${TRAINER_IMAGE:-disttrain/trainer:0.1.0}
EXAMPLE=${EXAMPLE:-examples/mnist-ps.yaml}
JOB=${JOB:-mnist-ps}
CONTEXT="kind-${CLUSTER}"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'kind-e2e: error: %s\n' "$*" >&2; exit 1; }

# The held-out accuracy from a trainer log: the `final {json}` line the chief prints last.
final_accuracy() {
  sed -n 's/^final .*"accuracy": \([0-9.]*\).*/\1/p' | tail -n 1
}

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH (see docs/packaging.md, kind quick start)"
  done
}

k() { kubectl --context "$CONTEXT" "$@"; }

cluster_up() {
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    log "reusing kind cluster $CLUSTER"
  else
    log "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --wait 120s
  fi
}

cluster_down() {
  log "deleting kind cluster $CLUSTER"
  kind delete cluster --name "$CLUSTER"
}

build_and_load() {
  log "building $OPERATOR_IMAGE and $TRAINER_IMAGE"
  docker build --target operator -t "$OPERATOR_IMAGE" "$ROOT"
  docker build --target trainer -t "$TRAINER_IMAGE" "$ROOT"
  log "loading the images into the kind nodes"
  kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"
}

install_operator() {
  log "installing the operator (helm release disttrain in $NAMESPACE)"
  helm upgrade --install disttrain "$ROOT/charts/disttrain" \
    --kube-context "$CONTEXT" --namespace "$NAMESPACE" --create-namespace \
    --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
    --set image.pullPolicy=Never \
    --wait --timeout 5m
  k -n "$NAMESPACE" rollout status deployment/disttrain --timeout=2m
}

run_example() {
  log "running $EXAMPLE (job $JOB in namespace $JOB_NAMESPACE)"
  k -n "$JOB_NAMESPACE" delete -f "$ROOT/$EXAMPLE" --ignore-not-found --wait=true
  k -n "$JOB_NAMESPACE" apply -f "$ROOT/$EXAMPLE"
  if ! k -n "$JOB_NAMESPACE" wait "disttrainjob/$JOB" --for=condition=Succeeded --timeout="$TIMEOUT"; then
    k -n "$JOB_NAMESPACE" describe "disttrainjob/$JOB" || true
    k -n "$JOB_NAMESPACE" get pods -l "disttrain.io/job-name=$JOB" -o wide || true
    k -n "$NAMESPACE" logs deployment/disttrain --tail=50 || true
    die "job $JOB did not succeed within $TIMEOUT"
  fi
  k -n "$JOB_NAMESPACE" get "disttrainjob/$JOB"
  local accuracy
  accuracy=$(k -n "$JOB_NAMESPACE" logs "$JOB-chief-0" -c tensorflow | final_accuracy)
  [[ -n "$accuracy" ]] || die "no 'final' line in the log of $JOB-chief-0"
  log "held-out accuracy of $JOB: $accuracy"
}

tensorboard() {
  log "running examples/mnist-shared-storage.yaml and serving its TensorBoard"
  k -n "$JOB_NAMESPACE" apply -f "$ROOT/examples/mnist-shared-storage.yaml"
  k -n "$JOB_NAMESPACE" wait disttrainjob/mnist-shared-storage --for=condition=Succeeded --timeout="$TIMEOUT"
  k -n "$JOB_NAMESPACE" rollout status deployment/mnist-tensorboard --timeout=5m
  log "TensorBoard on http://localhost:6006 (Ctrl-C to stop)"
  k -n "$JOB_NAMESPACE" port-forward service/mnist-tensorboard 6006:6006
}

main() {
  case "${1:-run}" in
    down)
      need kind
      cluster_down
      ;;
    run)
      need docker kind kubectl helm
      if [[ "${TEARDOWN:-0}" == 1 ]]; then
        trap cluster_down EXIT
      fi
      cluster_up
      build_and_load
      install_operator
      run_example
      if [[ "${TENSORBOARD:-0}" == 1 ]]; then
        tensorboard
      else
        log "TensorBoard: TENSORBOARD=1 $0 runs examples/mnist-shared-storage.yaml and then"
        printf '    kubectl --context %s -n %s port-forward service/mnist-tensorboard 6006:6006\n' \
          "$CONTEXT" "$JOB_NAMESPACE" >&2
      fi
      log "done; delete the cluster with: $0 down"
      ;;
    *)
      die "usage: $0 [run|down]"
      ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
