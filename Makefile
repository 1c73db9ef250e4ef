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

# The chart ships the same CRD files.
crds:
	$(CARGO) run --quiet -- crds --out-dir crds
	rm -f charts/sluice/crds/*.yaml && cp crds/*.yaml charts/sluice/crds/

check-crds:
	@tmp=$$(mktemp -d) && $(CARGO) run --quiet -- crds --out-dir $$tmp && \
	  if diff -ru crds $$tmp && diff -ru crds charts/sluice/crds; then echo "crds/ and charts/sluice/crds/ are up to date"; \
	  else echo "crds/ or charts/sluice/crds/ is stale: run make crds" >&2; exit 1; fi

cluster-up:
	e2e/cluster up

cluster-down:
	e2e/cluster down
