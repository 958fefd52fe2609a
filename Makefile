# LLM router: Triton-served classifier + OpenAI-compatible router service.
# `make help` lists the targets. Every target installs what it needs first.

SHELL := /bin/bash
MAKEFLAGS += --no-print-directory
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

ROUTING_DATA ?= ../shared/routing
MODEL_REPOSITORY ?= model_repository
CONFIG ?= config/router.yaml

# Helm CLI, built once from the Go module proxy and cached under the project.
HELM_VERSION ?= v3.16.4
HELM := tools/bin/helm-$(HELM_VERSION)
CHART := helm/llm-router
VALUES ?=

# The versions every install gets (`make lock` rewrites it); pyproject.toml keeps the ranges.
LOCK := constraints.txt
STAMP_BASE := $(VENV)/.installed-base
STAMP_ALL := $(VENV)/.installed-all

.PHONY: help install install-all lock run export export-from-log release k8s k8s-up podman-tools image-base router-image eval cv bench bench-compare bench-gpu gpu-bundle test helm prometheus chromium observe helm-lint helm-template clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade -c $(LOCK) pip wheel setuptools

# Serving stack: router service, Triton binary and python-backend model dependencies.
$(STAMP_BASE): pyproject.toml $(LOCK) | $(BIN)/pip
	@echo ">> installing the router service and the serving stack (llama.cpp builds once, then pip's cache serves it)"
	$(BIN)/pip install --progress-bar on -c $(LOCK) -e '.[serving]'
	@touch $@

# Everything: serving + export (PyTorch) + test tools.
$(STAMP_ALL): pyproject.toml $(LOCK) | $(BIN)/pip
	@echo ">> installing serving, export (PyTorch) and test dependencies"
	$(BIN)/pip install --progress-bar on -c $(LOCK) -e '.[serving,export,test]'
	@touch $@ $(STAMP_BASE)

install: $(STAMP_BASE) ## Install the serving stack into .venv

install-all: $(STAMP_ALL) ## Install serving, export and test dependencies into .venv

# A throw-away virtualenv resolves pyproject.toml's ranges with no constraints; its freeze, under the
# file's comment header, is the lock.
lock: ## Rewrite constraints.txt with the newest versions pyproject.toml allows (a full install: about 10 min)
	@echo ">> resolving pyproject.toml's ranges in a throw-away virtualenv (.lock-venv)"
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --progress-bar on --upgrade pip wheel setuptools
	.lock-venv/bin/pip install --progress-bar on -e '.[serving,export,test]'
	{ sed -n '/^#/p;/^#/!q' $(LOCK); .lock-venv/bin/pip freeze --all --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .lock-venv
	@echo ">> $(LOCK) rewritten ($$(grep -vc '^#' $(LOCK)) pins): run make test, which reinstalls .venv from it"

run: $(STAMP_BASE) ## Start Triton + the router on 127.0.0.1 (exports the router model first if none exists)
	@if ! $(PY) -m export.repository --has-version $(MODEL_REPOSITORY)/router_classifier; then \
		echo ">> no router model version in $(MODEL_REPOSITORY)/router_classifier: running make export first"; \
		$(MAKE) export; \
	fi
	$(PY) -m local_stack.stack --model-repository $(MODEL_REPOSITORY) --config $(CONFIG)

export: $(STAMP_ALL) ## Train the router model (kNN vote + prompt length on MMLU and LLMRouter data, 15–20 min on 2 cores), export to ONNX (fp32 + int8), write a new version
	$(PY) -m export --data-dir $(ROUTING_DATA) --model-repository $(MODEL_REPOSITORY) $(EXPORT_ARGS)

# Train on your own traffic (README): the decision log's graded prompts as routing data, split by
# time, then a new version trained on them; MIX adds training files (e.g. the shipped
# $(ROUTING_DATA)/mmlu-train.jsonl, scored with its own models.json). The new version serves only
# once promoted: python -m export.promote.
LOG_DB ?= .eval/decisions.sqlite
FROM_LOG ?= .eval/from-log
MIX ?=
export-from-log: $(STAMP_ALL) ## Routing data from the decision log (LOG_DB) and a new router version trained on it (MIX= more training files)
	$(PY) -m export.from_log --db $(LOG_DB) --config $(CONFIG) --out-dir $(FROM_LOG)
	$(PY) -m export --train $(FROM_LOG)/train.jsonl --val $(FROM_LOG)/val.jsonl --models-json $(FROM_LOG)/models.json \
		--model-repository $(MODEL_REPOSITORY) $(if $(MIX),--extra-train $(MIX)) $(EXPORT_ARGS)

RELEASE ?= status
release: $(STAMP_BASE) ## The router-model release: RELEASE="status | shadow N | canary N --share 0.1 | report --data DIR | promote --data DIR | rollback | abort"
	ROUTER_STORE_URL=$${ROUTER_STORE_URL:-redis://127.0.0.1:$${VALKEY_PORT:-6379}/0} \
	ROUTER_DECISION_LOG=$${ROUTER_DECISION_LOG:-$(LOG_DB)} $(PY) -m export.promote --config $(CONFIG) $(RELEASE)

DATA ?= $(ROUTING_DATA)/mmlu-val.jsonl
SCORES ?= .eval/scores.jsonl
eval: $(STAMP_ALL) ## Score DATA with the served router model; writes SCORES, a plot and prints metrics
	$(PY) -m export.evaluate --data $(DATA) --scores $(SCORES) --model-repository $(MODEL_REPOSITORY) $(EVAL_ARGS)

cv: $(STAMP_ALL) ## Cross-validate the router-model candidates on the training files (random and held-out-subject/task folds), then score the validation files once; CV_ARGS for options
	$(PY) -m export.cv --data-dir $(ROUTING_DATA) $(CV_ARGS)

# `go install` skips helm's own Makefile, which stamps the version and the Kubernetes version that
# `helm template`/`lint` assume (else v1.20): HELM_KUBE_MINOR is the k8s.io/client-go minor that
# HELM_VERSION builds against (v3.16.x: v0.31).
HELM_KUBE_MINOR ?= 31
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach p,pkg/chartutil pkg/lint/rules,-X helm.sh/helm/v3/$(p).k8sVersionMajor=1 -X helm.sh/helm/v3/$(p).k8sVersionMinor=$(HELM_KUBE_MINOR))
$(HELM):
	@echo ">> building helm $(HELM_VERSION) from the Go module proxy (once; cached in tools/bin)"
	@mkdir -p tools/bin
	CGO_ENABLED=0 GOBIN=$(CURDIR)/tools/gobin-tmp go install -trimpath -ldflags '$(HELM_LDFLAGS)' helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv tools/gobin-tmp/helm $(HELM) && rmdir tools/gobin-tmp

helm: $(HELM) ## Build the pinned helm CLI

# vegeta, the fixed-rate (open-loop) load generator of `make bench`, built once from the Go module
# proxy like helm: Debian has no wrk2, and wrk alone only holds a concurrency.
VEGETA_VERSION ?= v12.13.0
VEGETA := tools/bin/vegeta-$(VEGETA_VERSION)

$(VEGETA):
	@echo ">> building vegeta $(VEGETA_VERSION) from the Go module proxy (once; cached in tools/bin)"
	@mkdir -p tools/bin
	CGO_ENABLED=0 GOBIN=$(CURDIR)/tools/gobin-tmp go install -trimpath github.com/tsenart/vegeta/v12@$(VEGETA_VERSION)
	mv tools/gobin-tmp/vegeta $(VEGETA) && rmdir tools/gobin-tmp

# LiteLLM's proxy, the peer `make bench` measures side by side, in a virtualenv of its own (never a
# project dependency). 1.108.0: 1.110's [proxy] extra needs a litellm-proxy package no index here serves.
LITELLM_VERSION ?= 1.108.0
LITELLM_VENV := tools/litellm-$(LITELLM_VERSION)
LITELLM := $(LITELLM_VENV)/bin/litellm

$(LITELLM):
	@echo ">> installing LiteLLM $(LITELLM_VERSION) with its proxy into $(LITELLM_VENV) (bench only; once)"
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --progress-bar on "litellm[proxy]==$(LITELLM_VERSION)"

# Prometheus and promtool for the observability tests and `make observe`: Debian's build, pinned
# by version and checksum, unpacked (no root, no apt state) into tools/ once.
PROMETHEUS_DEB := prometheus_2.42.0+ds-5+deb12u1_amd64.deb
PROMETHEUS_SHA256 := 81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55
PROMETHEUS_DIR := tools/prometheus-2.42.0
PROMETHEUS := $(PROMETHEUS_DIR)/prometheus

$(PROMETHEUS):
	@echo ">> fetching Prometheus 2.42.0 (Debian's package; once, cached in $(PROMETHEUS_DIR))"
	@mkdir -p tools/deb-tmp
	curl -fsSL --retry 3 -o tools/deb-tmp/$(PROMETHEUS_DEB) \
		http://deb.debian.org/debian/pool/main/p/prometheus/$(subst +,%2B,$(PROMETHEUS_DEB))
	echo "$(PROMETHEUS_SHA256)  tools/deb-tmp/$(PROMETHEUS_DEB)" | sha256sum -c --quiet
	dpkg-deb -x tools/deb-tmp/$(PROMETHEUS_DEB) tools/deb-tmp/root
	@mkdir -p $(PROMETHEUS_DIR)
	mv tools/deb-tmp/root/usr/bin/promtool tools/deb-tmp/root/usr/bin/prometheus $(PROMETHEUS_DIR)/
	rm -rf tools/deb-tmp

prometheus: $(PROMETHEUS) ## Fetch the pinned Prometheus server and promtool

# wrk, the load generator of `make bench`'s fixed-concurrency runs: Debian's build and the LuaJIT
# library it links, pinned by checksum, unpacked into tools/ once.
WRK_DIR := tools/wrk-4.1.0
WRK := $(WRK_DIR)/wrk
WRK_DEBS := w/wrk/wrk_4.1.0-3+b2_amd64.deb=b0206dc74df85365a248ddac2433c0ee3f210579fc5ed83758e73354bb1bbefb \
	l/luajit/libluajit-5.1-2_2.1.0~beta3+git20220320+dfsg-4.1+deb12u1_amd64.deb=1f0ea919d09d47420993aca0102ec0aed46338b2bf7e072a4b4566c5616f09d2

$(WRK):
	@echo ">> fetching wrk 4.1.0 (Debian's package; once, cached in $(WRK_DIR))"
	@mkdir -p tools/deb-tmp/root $(WRK_DIR)
	@for entry in $(WRK_DEBS); do \
		path=$${entry%%=*}; sum=$${entry##*=}; deb=tools/deb-tmp/$${path##*/}; \
		curl -fsSL --retry 3 -o "$$deb" "http://deb.debian.org/debian/pool/main/$$(echo $$path | sed 's/+/%2B/g; s/~/%7E/g')" && \
		echo "$$sum  $$deb" | sha256sum -c --quiet && dpkg-deb -x "$$deb" tools/deb-tmp/root || exit 1; \
	done
	cp tools/deb-tmp/root/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2* $(WRK_DIR)/
	mv tools/deb-tmp/root/usr/bin/wrk $(WRK)
	rm -rf tools/deb-tmp

# After the tools they need: a rule's prerequisites are expanded when make reads the rule.
observe: $(STAMP_ALL) $(HELM) $(PROMETHEUS) ## The stack + a real Prometheus under traffic; draws the chart's dashboard (docs/dashboard.png)
	HELM_BIN=$(CURDIR)/$(HELM) PROMETHEUS_BIN=$(CURDIR)/$(PROMETHEUS) $(PY) -m local_stack.observe --model-repository $(MODEL_REPOSITORY) $(OBSERVE_ARGS)

bench: $(STAMP_ALL) $(WRK) $(VEGETA) $(LITELLM) ## Benchmarks: overhead, wrk and fixed-rate load beside LiteLLM, classifier, LLM tokens/s, 1,000 streams
	$(PY) -m bench --model-repository $(MODEL_REPOSITORY) --wrk $(WRK) --vegeta $(VEGETA) --litellm $(LITELLM) $(BENCH_ARGS)

# Router-model versions side by side: one Triton per version, runs alternating (e.g. the default
# against an `--encoder-layers 3` export); BENCH_ARGS go to every run.
VERSIONS ?=
RUNS ?= 2
bench-compare: $(STAMP_ALL) $(WRK) $(VEGETA) ## Alternate make bench over router-model versions: VERSIONS="6 7" RUNS=2 (no LiteLLM, no streams)
	@test -n "$(VERSIONS)" || { echo 'give VERSIONS="A B": router_classifier versions to compare'; exit 2; }
	$(PY) -m bench.compare --model-repository $(MODEL_REPOSITORY) --versions $(VERSIONS) --runs $(RUNS) -- \
		--wrk $(WRK) --vegeta $(VEGETA) --rates 50 --streams 0 $(BENCH_ARGS)

# The classifier through Triton on a GPU (issue 20; a CPU dry run where there is none). A GPU machine
# without network gets what it needs from `make gpu-bundle`: parts under .gpu/, one per transfer of
# at most 64 MiB, joined there by bench/gpu_device.sh (docs/benchmarks.md, "The classifier on a GPU").
bench-gpu: $(STAMP_ALL) ## The classifier through Triton on a GPU, or a CPU dry run: parity, prompts/s, p50/p99, where the time goes
	$(PY) -m bench.gpu --model-repository $(MODEL_REPOSITORY) --data $(ROUTING_DATA)/mmlu-val.jsonl $(BENCH_GPU_ARGS)

gpu-bundle: $(STAMP_ALL) ## Pack Triton, numpy<2, the newest version (fp32) and prompts into .gpu/ parts for a GPU machine
	$(PY) -m bench.gpu_bundle --model-repository $(MODEL_REPOSITORY) --data $(ROUTING_DATA)/mmlu-val.jsonl

# Chromium and its WebDriver for the playground's browser tests: Debian's packages and the few
# libraries this machine lacks, unpacked (no root, no apt state) into tools/ once. Not pinned by
# checksum like Prometheus: Debian's security archive replaces Chromium every few weeks and drops
# the old build; `apt-get download` checks each package against the signed archive index instead.
CHROMIUM_DIR := tools/chromium
CHROMEDRIVER := $(CHROMIUM_DIR)/chromedriver
# The unpacked libraries are found through LD_LIBRARY_PATH, set by two wrapper scripts.
CHROMIUM_LIBS = \$$here/root/usr/lib/x86_64-linux-gnu:\$$here/root/usr/lib/x86_64-linux-gnu/pulseaudio

$(CHROMEDRIVER):
	@echo ">> fetching Chromium and chromedriver (Debian's packages and the libraries they need; once, cached in $(CHROMIUM_DIR))"
	@rm -rf $(CHROMIUM_DIR) tools/deb-tmp && mkdir -p tools/deb-tmp
	@pkgs=$$(apt-get install -s --no-install-recommends chromium chromium-driver | awk '/^Inst /{print $$2}'); \
		test -n "$$pkgs" || { echo "apt-get lists no chromium package to fetch (is the apt index there? apt-get update)"; exit 1; }; \
		echo ">> $$(echo $$pkgs | wc -w) packages: $$pkgs"; \
		cd tools/deb-tmp && apt-get download -q $$pkgs
	@for deb in tools/deb-tmp/*.deb; do dpkg-deb -x "$$deb" tools/deb-tmp/root || exit 1; done
	@mkdir -p $(CHROMIUM_DIR) && mv tools/deb-tmp/root $(CHROMIUM_DIR)/root && rm -rf tools/deb-tmp
	@for exe in chromium:usr/lib/chromium/chromium chromedriver:usr/bin/chromedriver; do \
		printf '#!/bin/sh\nhere=$$(dirname "$$(readlink -f "$$0")")\nLD_LIBRARY_PATH="%s$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" exec "$$here/root/%s" "$$@"\n' \
			"$(CHROMIUM_LIBS)" "$${exe#*:}" > $(CHROMIUM_DIR)/$${exe%%:*}.tmp && chmod +x $(CHROMIUM_DIR)/$${exe%%:*}.tmp; \
	done
	$(CHROMIUM_DIR)/chromium.tmp --version && $(CHROMIUM_DIR)/chromedriver.tmp --version
	mv $(CHROMIUM_DIR)/chromium.tmp $(CHROMIUM_DIR)/chromium && mv $(CHROMIUM_DIR)/chromedriver.tmp $(CHROMEDRIVER)

chromium: $(CHROMEDRIVER) ## Fetch Chromium and chromedriver for the playground's browser tests

# A real Kubernetes control plane for the cluster tests and `make k8s-up`
# (../shared/notes/kubernetes-offline.md): kube-apiserver, kube-controller-manager and
# kube-scheduler built from the Go module proxy through the wrapper module in local_stack/k8s
# (k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces its staging modules), etcd from
# Debian's package, kwok for a node whose pods go Running and Ready without containers. Built
# once, cached under tools/.
K8S_VERSION ?= v1.34.3
K8S_DIR := tools/k8s-$(K8S_VERSION)
K8S_APISERVER := $(K8S_DIR)/kube-apiserver
K8S_LDFLAGS := -s -w $(foreach v,gitVersion=$(K8S_VERSION) gitMajor=1 gitMinor=34 gitTreeState=clean \
	buildDate=2025-12-09T00:00:00Z,-X k8s.io/component-base/version.$(v))
$(K8S_APISERVER): local_stack/k8s/go.mod local_stack/k8s/go.sum
	@echo ">> building the Kubernetes $(K8S_VERSION) control plane from the Go module proxy (once, about 11 min on 2 cold cores; cached in $(K8S_DIR))"
	@rm -rf $(K8S_DIR).tmp && mkdir -p $(K8S_DIR).tmp
	cd local_stack/k8s && CGO_ENABLED=0 bash -o pipefail -c "go build -v -trimpath -ldflags '$(K8S_LDFLAGS)' \
		-o $(CURDIR)/$(K8S_DIR).tmp/ k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler 2>&1 | awk 'NR % 200 == 0 { print \">> k8s build: \" NR \" packages\"; fflush() }'"
	rm -rf $(K8S_DIR) && mv $(K8S_DIR).tmp $(K8S_DIR)

KWOK_VERSION ?= v0.8.0
KWOK := tools/bin/kwok-$(KWOK_VERSION)
$(KWOK):
	@echo ">> building kwok $(KWOK_VERSION) from the Go module proxy (once, about 3 min; cached in tools/bin)"
	@mkdir -p tools/bin
	CGO_ENABLED=0 GOBIN=$(CURDIR)/tools/gobin-tmp go install -trimpath -ldflags '-s -w' sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)
	@# The standalone kwok takes its stages from --config: kwok's own "fast" ones, from its module source.
	@src=$$(go env GOMODCACHE)/sigs.k8s.io/kwok@$(KWOK_VERSION)/kustomize/stage; \
		for f in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-complete \
			pod/fast/pod-delete; do cat $$src/$$f.yaml && echo "---" || exit 1; done > tools/gobin-tmp/stages.yaml
	mv tools/gobin-tmp/stages.yaml $(KWOK)-stages.yaml
	mv tools/gobin-tmp/kwok $(KWOK) && rmdir tools/gobin-tmp

ETCD_DEB := etcd-server_3.4.23-4+b4_amd64.deb
ETCD_SHA256 := 3a9445d4560ad6de1c375756b2a17d97713df44cbd20a658c871fe108af7ef5d
ETCD := tools/etcd-3.4.23/etcd
$(ETCD):
	@echo ">> fetching etcd 3.4.23 (Debian's package; once, cached in $(dir $(ETCD)))"
	@mkdir -p tools/deb-tmp $(dir $(ETCD))
	curl -fsSL --retry 3 -o tools/deb-tmp/$(ETCD_DEB) http://deb.debian.org/debian/pool/main/e/etcd/$(subst +,%2B,$(ETCD_DEB))
	echo "$(ETCD_SHA256)  tools/deb-tmp/$(ETCD_DEB)" | sha256sum -c --quiet
	dpkg-deb -x tools/deb-tmp/$(ETCD_DEB) tools/deb-tmp/root
	mv tools/deb-tmp/root/usr/bin/etcd $(ETCD)
	rm -rf tools/deb-tmp

K8S_TOOLS := $(K8S_APISERVER) $(KWOK) $(ETCD)
K8S_ENV = K8S_BIN_DIR=$(CURDIR)/$(K8S_DIR) KWOK_BIN=$(CURDIR)/$(KWOK) ETCD_BIN=$(CURDIR)/$(ETCD)
k8s: $(K8S_TOOLS) ## Build the Kubernetes control plane (apiserver, controller-manager, scheduler), kwok and etcd once

K8S_STATE ?= .eval/k8s
k8s-up: $(STAMP_BASE) $(K8S_TOOLS) ## Start the control plane + a kwok node on 127.0.0.1 (kubeconfig in K8S_STATE); Ctrl-C stops it
	$(K8S_ENV) $(PY) -m local_stack.k8s_cluster --state-dir $(K8S_STATE)

# The router image, built for real with podman (tests/test_router_image.py). No image registry is
# reachable here, so its base is made from Debian's own packages: a minimal bookworm with Debian's
# python3 (3.11) and pip, by mmdebstrap (cached in tools/), `podman import`ed. Podman, runc and
# mmdebstrap are Debian packages (installed with apt-get when missing: needs root).
PODMAN_PKGS := podman runc mmdebstrap uidmap
BASE_ROOTFS := tools/debian-bookworm-python3.tar
ROUTER_BASE_IMAGE ?= localhost/llm-router/debian-python3:bookworm
ROUTER_IMAGE ?= localhost/llm-router/router:dev
# Where the host trusts an HTTPS proxy's CA for package indexes, the image build trusts it too.
HOST_CA := $(wildcard /etc/ssl/certs/ca-certificates.crt)
PODMAN_RUN_FLAGS := --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024

podman-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null || { \
		echo ">> installing $(PODMAN_PKGS) (Debian packages)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(PODMAN_PKGS); }

$(BASE_ROOTFS):
	@echo ">> building a minimal Debian bookworm with python3 and pip from Debian's packages (once, about 1 min; cached in $@)"
	@mkdir -p tools
	mmdebstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates bookworm \
		tools/debian-bookworm-python3.partial.tar http://deb.debian.org/debian
	mv tools/debian-bookworm-python3.partial.tar $@

image-base: podman-tools $(BASE_ROOTFS) ## Import the Debian base of the router image into podman (no registry needed)
	@podman image exists $(ROUTER_BASE_IMAGE) || { echo ">> importing $(BASE_ROOTFS) as $(ROUTER_BASE_IMAGE)"; \
		podman import --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' --change 'CMD ["python3"]' $(BASE_ROOTFS) $(ROUTER_BASE_IMAGE); }

router-image: image-base ## Build docker/router.Dockerfile with podman on that base (ROUTER_IMAGE)
	podman build $(PODMAN_RUN_FLAGS) --network host $(if $(HOST_CA),-v $(HOST_CA):/etc/ssl/certs/ca-certificates.crt:ro) \
		--build-arg PYTHON_IMAGE=$(ROUTER_BASE_IMAGE) -f docker/router.Dockerfile -t $(ROUTER_IMAGE) .

# The chart refuses to render without a master-key Secret (or router.auth.enabled=false): the
# default values are checked with this Secret name.
HELM_SET ?= --set router.auth.masterKeySecret.name=llm-router-master-key

helm-lint: $(HELM) ## helm lint --strict with the default and every example values file
	$(HELM) lint --strict $(CHART) $(HELM_SET)
	@for f in $(CHART)/examples/*.yaml; do echo ">> $$f"; $(HELM) lint --strict $(CHART) -f $$f || exit 1; done

helm-template: $(HELM) ## Print the rendered manifests (VALUES=<file> for an example)
	@$(HELM) template llm-router $(CHART) $(if $(VALUES),-f $(VALUES),$(HELM_SET))

test: $(STAMP_ALL) $(HELM) $(PROMETHEUS) $(CHROMEDRIVER) $(K8S_TOOLS) image-base ## Install everything and run the whole test suite
	HELM_BIN=$(CURDIR)/$(HELM) PROMETHEUS_BIN=$(CURDIR)/$(PROMETHEUS) CHROMIUM_DIR=$(CURDIR)/$(CHROMIUM_DIR) $(K8S_ENV) \
		ROUTER_BASE_IMAGE=$(ROUTER_BASE_IMAGE) ROUTING_DATA=$(ROUTING_DATA) $(BIN)/pytest $(PYTEST_ARGS)

clean: ## Remove caches (keeps .venv and exported model versions)
	rm -rf .pytest_cache .eval tools/gobin-tmp tools/deb-tmp
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
