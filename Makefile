# tocsin's developer commands. `make run` and `make test` are the two the README promises.

CARGO ?= cargo
# Plugins' unit tests run natively (their logic is plain Rust; host imports are never called).
HOST_TARGET := $(shell rustc -vV | sed -n 's/^host: //p')

.PHONY: setup plugins build run test lint fmt bench clean-demo deb

## Install the one thing a fresh Rust toolchain lacks: the wasm32-wasip2 target.
setup:
	rustup target add wasm32-wasip2

## Build the shipped plugins (wasm32-wasip2 components) into plugins/target/wasm32-wasip2/release.
plugins: setup
	cd plugins && $(CARGO) build --release

## Build the `tocsin` binary, the shipped plugins inside it (built first). Only the `tocsin`
## package: the workspace's test and bench crates would turn on other features of shared
## dependencies, and a later `cargo run -p tocsin` would compile half the tree again.
build: plugins
	$(CARGO) build -p tocsin

## Build what it runs and run the example pipelines of pipelines/ (demo data inside the repo,
## output to stdout and pipelines/demo/out/alerts.jsonl). The demo backup is made three days
## old first, so the demo has something to say.
run: build
	touch -d '3 days ago' pipelines/demo/backups/*.tar.zst
	$(CARGO) run -p tocsin -- run

## The whole test suite: unit tests, integration tests (real plugins, real Synapse).
test: setup
	cd plugins && $(CARGO) build --release --workspace
	cd plugins && $(CARGO) test --target $(HOST_TARGET) --workspace
	$(CARGO) build --workspace
	$(CARGO) test --workspace

## The Debian package, target/debian/tocsin_VERSION_ARCH.deb: the release binary (its plugins
## inside), the systemd unit, disabled examples in /etc/tocsin/pipelines. Needs cargo-deb
## (installed here when missing).
deb: plugins
	command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked
	$(CARGO) build --release -p tocsin
	packaging/debian/build-deb target/release/tocsin target/debian

## Formatting and lints, as CI checks them.
lint:
	$(CARGO) fmt --all --check
	cd plugins && $(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd plugins && $(CARGO) clippy --release --workspace -- -D warnings

fmt:
	$(CARGO) fmt --all
	cd plugins && $(CARGO) fmt --all

## Benchmarks (release build): tocsin and Prometheus Alertmanager side by side; writes the
## markdown report to target/bench-report.md (and stdout). About 12 minutes; BENCH_ARGS=--quick
## for a smoke run, BENCH_ARGS="--only micro,ingest" for some sections.
bench: setup
	cd plugins && $(CARGO) build --release --workspace
	$(CARGO) build --release -p tocsin -p tocsin-bench
	./target/release/tocsin-bench --plugin-dir plugins/target/wasm32-wasip2/release --tocsin-bin target/release/tocsin --out target/bench-report.md $(BENCH_ARGS)

## Long fuzzing: only the property tests (every one is named `prop_*`), in both workspaces,
## with 100000 cases each (tests whose cases are megabytes take a fraction): about an hour on
## 2 cores. A failure is saved as a seed in a proptest-regressions file beside its test and
## replayed first by every later run (keep the file). See docs/fuzzing.md.
.PHONY: fuzz-long
fuzz-long:
	PROPTEST_CASES=100000 $(CARGO) test -p tocsin-config -p tocsin-message -p tocsin-queue prop_
	cd plugins && PROPTEST_CASES=100000 $(CARGO) test --target $(HOST_TARGET) \
		-p json -p github-webhook -p alertmanager-webhook -p pubsub-push -p janitor prop_
