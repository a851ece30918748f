# disttrain — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
export MNIST_DIR ?= $(if $(wildcard ../shared/data/mnist),$(abspath ../shared/data/mnist),)

.PHONY: help venv demo test test-unit lint control-plane cluster-up cluster-down crd crd-files api-docs bench kind-e2e clean

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

lint: venv ## ruff
	$(PY) -m ruff check .

control-plane: ## Build (or reuse cached) kube-apiserver, etcd, scheduler, controller-manager, kwok, kubectl, helm
	@bash hack/build-control-plane.sh

cluster-up: venv control-plane ## Start the local control plane in the background; prints `export KUBECONFIG=...`
	@$(PY) hack/controlplane.py up

cluster-down: venv ## Stop every process cluster-up started
	@$(PY) hack/controlplane.py down

crd: venv ## Print the generated CustomResourceDefinition
	@$(VENV)/bin/disttrain crd

crd-files: venv ## Regenerate the CRD copies under deploy/ and charts/ from the API models
	$(VENV)/bin/disttrain crd > deploy/crd/disttrain.io_disttrainjobs.yaml
	$(VENV)/bin/disttrain crd > charts/disttrain/crds/disttrain.io_disttrainjobs.yaml

api-docs: venv ## Regenerate docs/api.md from the API models
	$(VENV)/bin/disttrain api-docs > docs/api.md

bench: venv ## Benchmarks (JSON and PNG under bench/results/)
	$(PY) bench/trainer.py

kind-e2e: ## kind end to end: build both images, helm install, run examples/mnist-ps.yaml to Succeeded (needs docker, kind, helm)
	@bash hack/kind-e2e.sh

clean: ## Remove the venv and local outputs
	rm -rf $(VENV) runs out .pytest_cache
