# The README's two commands are `make demo` and `make test`.
.PHONY: demo test unit e2e soak soak-short node-smoke fuzz lint crds check-crds bundle cluster-up cluster-down sign-bench bench bench-webhook

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

# Generated files come from `cargo xtask` (xtask/): the CRDs (crds/ and the chart's copy) and the
# OLM bundle (from the chart as rendered by the pinned helm, built with the e2e tools). The e2e
# suite also fails when bundle/ differs from what `cargo xtask bundle` writes.
crds:
	$(CARGO) xtask crds

check-crds:
	$(CARGO) xtask crds --check

bundle:
	$(CARGO) xtask bundle

cluster-up:
	e2e/cluster up

# Signing latency per signer (cosign key, x509 chain, KMS, HSM), median and p90 of 20, against the
# running e2e cluster (`make cluster-up` first).
sign-bench:
	SOFTHSM2_CONF=$(CURDIR)/.e2e/softhsm2.conf SLUICE_E2E_DIR=$(CURDIR)/.e2e $(CARGO) run -q -p sluice-e2e --bin sign_bench

# The enforcement webhook: 200 pod creations in a gated namespace against 200 without enforcement,
# client-side p50/p99 and the webhook's own p99 (running e2e cluster and operator).
bench-webhook:
	SLUICE_E2E_DIR=$(CURDIR)/.e2e $(CARGO) test -p sluice-e2e --test enforcement two_hundred -- --nocapture

# Sluice against Tekton Chains (built from its Go module), A/B on the local cluster: sign latency
# steady and burst, throughput, CPU, RSS, API requests per image (audit log), a 2,000 backlog.
bench:
	e2e/bench

cluster-down:
	e2e/cluster down
