# disttrain — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
export MNIST_DIR ?= $(if $(wildcard ../shared/data/mnist),$(abspath ../shared/data/mnist),)

.PHONY: help venv demo test test-unit lint control-plane node-binaries test-chaos e2e e2e-up e2e-down cluster-up cluster-down crd crd-files api-docs bench bench-operator kind-e2e clean

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-16s %s\n", $$1, $$2}'

venv: ## Create .venv with the operator, the trainer (TensorFlow CPU) and test tools
	@bash hack/venv.sh

demo: venv ## The main job: distributed MNIST (chief + 2 ps + 2 workers) as local processes
	$(VENV)/bin/disttrain run examples/mnist-ps.yaml

test: venv control-plane ## Every test: unit, real control plane, multi-process TensorFlow
	$(PY) -m ruff check .
	$(PY) -m pytest

test-unit: venv ## Fast tests only (no control plane, no TensorFlow clusters)
	$(PY) -m pytest tests/unit

test-chaos: venv control-plane ## Chaos: 50 jobs while operators are SIGKILLed, doubled, cut off (DISTTRAIN_CHAOS_SEED replays)
	$(PY) -m pytest -m chaos -s -v tests/chaos

lint: venv ## ruff
	$(PY) -m ruff check .

control-plane: ## Build (or reuse cached) kube-apiserver, etcd, scheduler, controller-manager, kwok, kubectl, helm
	@bash hack/build-control-plane.sh

node-binaries: ## control-plane + what a real node needs: kubelet, kube-proxy, minimal CoreDNS, static pause
	@bash hack/build-control-plane.sh --node

e2e: venv ## Real pods on a real kubelet node: build images and node, helm install, train the examples (root; docs/e2e.md)
	$(PY) hack/e2e.py prepare
	$(PY) -m pytest -m e2e tests/e2e

e2e-up: venv ## The e2e cluster by hand (control plane + real node + operator); prints `export KUBECONFIG=...`
	$(PY) hack/e2e.py prepare
	$(PY) hack/e2e.py up

e2e-down: venv ## Stop the e2e cluster and restore the host (also after a crash)
	$(PY) hack/e2e.py down

cluster-up: venv control-plane ## Start the local control plane in the background; prints `export KUBECONFIG=...`
	@PYTHONPATH=hack $(PY) -m controlplane up

cluster-down: venv ## Stop every process cluster-up started
	@PYTHONPATH=hack $(PY) -m controlplane down

crd: venv ## Print the generated CustomResourceDefinition
	@$(VENV)/bin/disttrain crd

crd-files: venv ## Regenerate the CRD and template-policy copies under deploy/ and charts/ from the API models
	$(VENV)/bin/disttrain crd > deploy/crd/disttrain.io_disttrainjobs.yaml
	$(VENV)/bin/disttrain crd > charts/disttrain/crds/disttrain.io_disttrainjobs.yaml
	$(VENV)/bin/disttrain template-policy > deploy/template-policy.yaml
	mkdir -p charts/disttrain/files
	$(VENV)/bin/disttrain template-policy --validations host-access > charts/disttrain/files/host-access.yaml
	$(VENV)/bin/disttrain template-policy --validations service-accounts > charts/disttrain/files/service-accounts.yaml

api-docs: venv ## Regenerate docs/api.md from the API models
	$(VENV)/bin/disttrain api-docs > docs/api.md

bench: venv ## Benchmarks (JSON and PNG under bench/results/)
	$(PY) -m bench.trainer $(ARGS)

bench-operator: venv control-plane ## Operator vs a raw client on the local control plane (bench/results/operator.*; ARGS=--quick)
	$(PY) bench/operator.py $(ARGS)

kind-e2e: venv ## The e2e tests of `make e2e` on a kind cluster instead (needs docker, kind, kubectl, helm)
	@bash hack/kind-e2e.sh

clean: ## Remove the venv and local outputs
	rm -rf $(VENV) runs out .pytest_cache
