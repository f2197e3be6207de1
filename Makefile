# image-cloner. `make demo` and `make test` work from a clean clone: they
# install the Debian components, build kube-apiserver once per machine (cached
# in ~/.cache/image-cloner) and create .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KUBECTL ?= kubectl

.PHONY: help deps test unit e2e lint format demo bench deploy deploy-secret undeploy image clean

help:
	@echo "make demo      run the controller against a local control plane, engine and registries"
	@echo "make test      lint, unit and end-to-end tests (real components on loopback)"
	@echo "make deploy    apply manifests/ to the current kubectl context; make undeploy removes them"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

deps: $(VENV)/.installed
	hack/install-deps.sh
	hack/build-kube.sh >/dev/null

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit -q

e2e: deps
	$(PY) -m pytest tests/e2e -q

test: deps lint
	$(PY) -m pytest tests -q -ra

demo: deps
	$(PY) hack/demo.py

# Hot-path figures, then the copy benchmark on real components (starts the
# e2e environment itself; 6-10 minutes at full size on a loaded 2-core machine).
bench: $(VENV)/.installed
	$(PY) bench/run.py
	$(PY) bench/copy.py

deploy:
	$(KUBECTL) apply -k manifests/

deploy-secret:
	$(KUBECTL) apply -k manifests/secret-credentials/

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
	$(KUBECTL) delete -k manifests/ --ignore-not-found

image:
	docker build -t image-cloner:dev .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
