# The README's two commands are `make demo` and `make test`.
.PHONY: demo test unit e2e soak soak-short node-smoke fuzz lint crds check-crds bundle cluster-up cluster-down

CARGO ?= cargo

demo:
	e2e/demo

test: unit e2e soak-short node-smoke fuzz

unit:
	$(CARGO) test --workspace --exclude sluice-e2e

e2e:
	e2e/run-tests

# The release engine under faults: `make test` runs the short form (16 releases over 4 Deployments).
soak:
	e2e/soak

soak-short:
	e2e/soak --short

# A real node (kubelet + containerd + runc) next to the kwok node: pods, TaskRuns, a Service and
# the example's Tasks run on it, Sluice judges them, and taking it down leaves nothing behind.
node-smoke:
	e2e/node/smoke

FUZZ_SECONDS ?= 15
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run

lint:
	$(CARGO) fmt --all --check
	@test -z "$$(gofmt -l e2e/checks)" || { echo "gofmt: e2e/checks needs formatting" >&2; exit 1; }
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The chart ships the same CRD files.
crds:
	$(CARGO) run --quiet -- crds --out-dir crds
	rm -f charts/sluice/crds/*.yaml && cp crds/*.yaml charts/sluice/crds/

check-crds:
	@tmp=$$(mktemp -d) && $(CARGO) run --quiet -- crds --out-dir $$tmp && \
	  if diff -ru crds $$tmp && diff -ru crds charts/sluice/crds; then echo "crds/ and charts/sluice/crds/ are up to date"; \
	  else echo "crds/ or charts/sluice/crds/ is stale: run make crds" >&2; exit 1; fi

# The OLM bundle, from the chart as rendered by the pinned helm (built with the e2e tools).
# The e2e suite fails when bundle/ differs from what this writes.
BUNDLE_EXAMPLES = --example examples/evip/pipeline.yaml --example examples/evip/release.yaml
bundle:
	helm="$$(e2e/tools/build.sh)/bin/helm" && \
	  "$$helm" template sluice charts/sluice --namespace sluice-system --kube-version 1.36.0 | \
	  $(CARGO) run --quiet -- olm-bundle --chart - $(BUNDLE_EXAMPLES) --out-dir bundle

cluster-up:
	e2e/cluster up

cluster-down:
	e2e/cluster down
