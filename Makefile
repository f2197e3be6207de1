# image-cloner. `make demo` and `make test` work from a clean clone: they
# install the Debian components, build kube-apiserver once per machine (cached
# in ~/.cache/image-cloner) and create .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KUBECTL ?= kubectl
# One controller image name for `make image` and `make deploy`.
IMAGE ?= image-cloner:latest
# Any Debian bookworm image with python3 3.11 and venv (Dockerfile BASE_IMAGE).
BASE_IMAGE ?= python:3.11-slim-bookworm
DOCKER ?= docker
# `make image DOCKER_BUILD_FLAGS=--network=host` when the engine has no bridge.
DOCKER_BUILD_FLAGS ?=
# The kustomize directory `make deploy` applies: manifests/ or an overlay of yours.
DEPLOY_DIR ?= manifests

.PHONY: help deps test unit e2e lint format demo demo-cluster bench deploy deploy-secret deploy-skopeo undeploy image clean

help:
	@echo "make demo      run the controller against a local control plane, engine and registries"
	@echo "make test      lint, unit and end-to-end tests (real components on loopback)"
	@echo "make demo-cluster  the same on a real single-node cluster: make image, make deploy, pods on owned copies"
	@echo "make image     build the controller image IMAGE (default image-cloner:latest)"
	@echo "make deploy    apply manifests/ (DEPLOY_DIR) with IMAGE to the current kubectl context; make undeploy removes them"

# The project itself goes in editable and without its own build environment
# (setuptools is pinned in requirements-dev.txt): cloner, devenv and bench are
# then importable by tests, `python -m bench.NAME` and hack/*.py.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

deps: $(VENV)/.installed
	hack/install-deps.sh
	hack/build-kube.sh >/dev/null
	hack/build-helm.sh >/dev/null
	hack/build-olareg.sh >/dev/null

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit -q

e2e: deps
	$(PY) -m pytest tests/e2e -q -m "not cosign"

test: deps lint
	$(PY) -m pytest tests -q -ra -m "not cosign"

# cosign itself signs sources and verifies the owned copies, offline
# (tests/e2e/test_cosign.py, marker cosign). Not in `make test`: the first
# cosign build (hack/build-cosign.sh, cached) takes about 8 minutes.
.PHONY: test-cosign
test-cosign: deps
	hack/build-cosign.sh >/dev/null
	$(PY) -m pytest tests/e2e/test_cosign.py -q -rA -m cosign

demo: deps
	$(PY) hack/demo.py

# A single-node cluster (containerd, kubelet, controller-manager, scheduler) on
# loopback; builds the images, deploys with `make deploy`, tears down at the end.
demo-cluster: deps
	$(PY) hack/demo_cluster.py

# Hot-path figures, the copy benchmark of both backends and the 10,000-workload
# scale benchmark, on real components (each starts the e2e environment itself;
# about 20 minutes in all at full size on a 2-core machine). Figures and JSON
# in bench/results/.
bench: deps
	$(PY) -m bench.run
	$(PY) -m bench.copies
	$(PY) -m bench.scale

# docs/deploy.md: configure manifests/base first (target, credentials).
deploy:
	KUBECTL="$(KUBECTL)" hack/deploy.sh apply $(DEPLOY_DIR) $(IMAGE)

deploy-secret:
	KUBECTL="$(KUBECTL)" hack/deploy.sh apply manifests/secret-credentials $(IMAGE)

# copyBackend skopeo: no docker-in-docker sidecar, nothing privileged (docs/copy-backends.md).
deploy-skopeo:
	KUBECTL="$(KUBECTL)" hack/deploy.sh apply manifests/skopeo $(IMAGE)

# Optional, after make deploy: the ServiceMonitor (Prometheus Operator CRDs
# needed) and the Grafana dashboard ConfigMap of manifests/monitoring/.
.PHONY: deploy-monitoring
deploy-monitoring:
	$(KUBECTL) apply -k manifests/monitoring/

# Run `python controller.py revert` first (README "Reverting"), e.g.
# kubectl -n image-cloner exec deploy/image-cloner -c controller -- python controller.py revert --config /etc/image-cloner/config/config.yaml
# with the loop paused (README step 5 "Remove"); otherwise patched workloads
# keep using the owned copies.
undeploy:
	KUBECTL="$(KUBECTL)" hack/deploy.sh delete $(DEPLOY_DIR) $(IMAGE)

image:
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
