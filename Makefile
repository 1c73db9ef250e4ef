# The README's two commands are `make demo` and `make test`.
.PHONY: demo test unit e2e lint crds check-crds cluster-up cluster-down

CARGO ?= cargo

demo:
	e2e/demo

test: unit e2e

unit:
	$(CARGO) test --workspace --exclude sluice-e2e

e2e:
	e2e/run-tests

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

crds:
	$(CARGO) run --quiet -- crds --out-dir crds

check-crds:
	@tmp=$$(mktemp -d) && $(CARGO) run --quiet -- crds --out-dir $$tmp && \
	  if diff -ru crds $$tmp; then echo "crds/ is up to date"; else echo "crds/ is stale: run make crds" >&2; exit 1; fi

cluster-up:
	e2e/cluster up

cluster-down:
	e2e/cluster down
