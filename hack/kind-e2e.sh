#!/usr/bin/env bash
# End to end on a kind cluster: the same steps and checks as `make e2e` (tests/e2e, hack/e2e.py),
# only the cluster differs. Builds both images from the Dockerfile (on the real python base image),
# loads them into kind, `helm install`s the chart, and runs every e2e test: examples/mnist-ps.yaml
# with a worker SIGKILLed, mnist-mwms, mnist-single and mnist-shared-storage with TensorBoard
# through `kubectl port-forward`, each to condition=Succeeded with accuracy >= 97% in status.results.
#
#   hack/kind-e2e.sh            # (or `make kind-e2e`) create/reuse the kind cluster and run the tests
#   hack/kind-e2e.sh down       # delete the cluster
#   TEARDOWN=1 hack/kind-e2e.sh # run, then delete the cluster whatever happened
#   hack/kind-e2e.sh tensorboard  # after a run: serve the shared-storage job's TensorBoard on :6006
#
# Needs docker, kind, kubectl and helm on PATH, the project venv (make venv) and the MNIST files in
# MNIST_DIR (mounted into the kind node; pods need no internet). Settings (environment):
#   CLUSTER=disttrain  OPERATOR_IMAGE=disttrain/operator:0.1.0  TRAINER_IMAGE=disttrain/trainer:0.1.0
#   PYTHON_IMAGE=python:3.11.13-slim-bookworm  E2E_STEPS (shorter training)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${CLUSTER:-disttrain}
PY=${PY:-$ROOT/.venv/bin/python}

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'kind-e2e: error: %s\n' "$*" >&2; exit 1; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH (see docs/packaging.md, kind quick start)"
  done
}

cluster_down() {
  log "deleting kind cluster $CLUSTER"
  kind delete cluster --name "$CLUSTER"
}

run_tests() {
  [[ -x "$PY" ]] || die "no project venv at $PY: run make venv"
  [[ -n "${MNIST_DIR:-}" ]] || die "MNIST_DIR is not set: the MNIST IDX files are mounted into the kind node"
  log "e2e tests on kind cluster $CLUSTER (hack/e2e.py KindCluster)"
  cd "$ROOT"
  DISTTRAIN_E2E_CLUSTER=kind "$PY" -m pytest -m e2e tests/e2e
}

tensorboard() {
  log "TensorBoard on http://localhost:6006 (Ctrl-C to stop)"
  kubectl --kubeconfig "${DISTTRAIN_CACHE:-$HOME/.cache/disttrain}/e2e/kind/kubeconfig" \
    port-forward service/mnist-tensorboard 6006:6006
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
      run_tests
      log "done; delete the cluster with: $0 down"
      ;;
    tensorboard)
      need kubectl
      tensorboard
      ;;
    *)
      die "usage: $0 [run|down|tensorboard]"
      ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
