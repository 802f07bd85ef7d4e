# unipod: the two commands a user needs are `make demo` and `make test`.
# Both install what they need on a fresh Debian 12 machine (as root).

SHELL := /bin/bash
GUEST := target/guest
UNIPOD := target/release/unipod
# The guest agent (the guest's /init) is a static musl binary.
AGENT_TARGET := x86_64-unknown-linux-musl
AGENT := target/$(AGENT_TARGET)/release/unipod-agent
# The CPU-state test program (guest-agent/examples/vecstress.rs), static
# like the agent, for the busybox test image.
VECSTRESS := target/$(AGENT_TARGET)/release/examples/vecstress
# The same agent with the test-hooks feature (it accepts the host's Debug
# requests), for the end-to-end tests only; its own target dir, so the two
# builds do not undo each other.
AGENT_TEST_HOOKS := target/test-hooks/$(AGENT_TARGET)/release/unipod-agent

.PHONY: all deps kernel agent images build demo test check ci clean-cache bench install uninstall fuzz fuzz-smoke soak

all: build kernel images

# Debian packages the build and tests need. Idempotent and quick when present.
# protobuf-compiler: the CRI client of tests/shim.rs (k8s-cri) is generated
# with protoc at build time. musl-tools: musl-gcc, which builds ring (the
# agent's TLS for HTTPS probes) for the static agent (.cargo/config.toml).
# docker-registry, skopeo, apache2-utils (htpasswd) and openssl: the real
# registry tests/registry.rs pulls from, pushes to it, its Basic auth users
# and its certificates (tests/common/registry.rs).
APT_PKGS := build-essential linux-source-6.1 bc flex bison libelf-dev busybox-static cpio nftables iproute2 erofs-utils protobuf-compiler musl-tools docker-registry skopeo apache2-utils openssl
deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "[deps] installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo >/dev/null || { echo "[deps] cargo not found: install Rust with rustup first"; exit 1; }
	@if command -v rustup >/dev/null && ! rustup component list --installed | grep -q '^clippy'; then rustup component add clippy rustfmt; fi
	@if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx '$(AGENT_TARGET)'; then \
	  echo "[deps] adding the $(AGENT_TARGET) target"; rustup target add $(AGENT_TARGET); fi

# The guest kernel, cached in ~/.cache/unipod/kernel by a hash of its inputs.
kernel: deps
	@bash kernel-config/build.sh

# The guest agent, static (musl) so it runs as /init with no loader.
agent: deps
	@echo "[agent] cargo build --release -p guest-agent --target $(AGENT_TARGET)"
	@cargo build --release --quiet -p guest-agent --target $(AGENT_TARGET) --bin unipod-agent
	@cargo build --release --quiet -p guest-agent --target $(AGENT_TARGET) --example vecstress
	@echo "[agent] the same with --features test-hooks, for the e2e tests"
	@cargo build --release --quiet -p guest-agent --target $(AGENT_TARGET) --bin unipod-agent \
	  --features test-hooks --target-dir target/test-hooks

# Guest initramfs images (cached in ~/.cache/unipod/initramfs), and the
# busybox OCI test image for 'unipod image import' (target/guest/oci), with
# the vecstress test program in it, and a stock Debian nginx image beside it
# (mmdebstrap + umoci, cached in ~/.cache/unipod/nginx; half a minute the
# first time), and a Debian python3 + grpcio image for the grpc and HTTPS
# probe test (cached in ~/.cache/unipod/python-grpc; about a minute the
# first time). initramfs-test-hooks.cpio is only for
# the tests that inject faults; it is never installed.
images: deps agent
	@bash images/build-initramfs.sh boot-test $(GUEST)/boot-test.cpio
	@bash images/build-initramfs.sh agent $(GUEST)/initramfs.cpio $(AGENT)
	@bash images/build-initramfs.sh agent $(GUEST)/initramfs-test-hooks.cpio $(AGENT_TEST_HOOKS)
	@bash images/build-oci.sh $(GUEST)/oci $(VECSTRESS)
	@bash images/build-nginx.sh $(GUEST)/oci
	@bash images/build-python-grpc.sh $(GUEST)/oci

build: deps
	@echo "[build] cargo build --release"
	@cargo build --release --workspace --quiet

# Runs examples/pod.yaml (an init container, a web server and a client on
# busybox:latest) in the background, then shows get, describe, logs and exec
# on it, and removes it. The first run makes the warm-start snapshot for the
# pod's memory size (about a minute on nested-KVM hosts); later runs restore
# it in well under a second.
DEMO_POD := hello
demo: build kernel images
	@$(UNIPOD) image import $(GUEST)/oci/busybox >/dev/null
	@$(UNIPOD) rm -f $(DEMO_POD) >/dev/null 2>&1 || true
	$(UNIPOD) run --detach examples/pod.yaml
	@trap '$(UNIPOD) rm -f $(DEMO_POD) >/dev/null 2>&1' EXIT; \
	set -x; \
	$(UNIPOD) get; \
	$(UNIPOD) logs -f $(DEMO_POD) -c client; \
	$(UNIPOD) exec $(DEMO_POD) -c web -- cat /www/index.html; \
	$(UNIPOD) logs $(DEMO_POD) -c web; \
	$(UNIPOD) get -o wide; \
	$(UNIPOD) describe $(DEMO_POD); \
	$(UNIPOD) stop $(DEMO_POD); \
	$(UNIPOD) rm $(DEMO_POD)

# All tests: unit tests and the end-to-end tests that boot real guests.
test: build kernel images
	cargo test --release --workspace -- --nocapture --test-threads 4
	@$(MAKE) --no-print-directory fuzz-smoke

# The long load test: tests/load.rs with 100 create/run/remove cycles, four
# pods at a time, instead of the 20 of `make test` (see docs/SECURITY.md
# for how long it takes). SOAK_CYCLES=N for another count.
SOAK_CYCLES ?= 100
soak: build kernel images
	UNIPOD_LOAD_CYCLES=$(SOAK_CYCLES) cargo test --release -p vmm --test load -- --nocapture

# Fuzzing (fuzz/, cargo-fuzz on stable; see docs/SECURITY.md). The smoke run
# replays each target's committed corpus and fuzzes it for FUZZ_SECONDS
# (10 s: about 1.5 min for all targets once built); `make fuzz` is the long
# run, FUZZ_SECONDS per target (default 1 h), e.g. `make fuzz
# FUZZ_TARGETS=vsock_queues FUZZ_SECONDS=600`.
FUZZ_SECONDS ?= 10
fuzz-smoke: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh $(FUZZ_TARGETS)

fuzz: deps
	FUZZ_SECONDS=$(if $(filter command line,$(origin FUZZ_SECONDS)),$(FUZZ_SECONDS),3600) bash fuzz/run.sh $(FUZZ_TARGETS)

# Benchmarks (about an hour on nested-PVM hosts): writes docs/BENCHMARKS.md
# and docs/boot-timeline.svg. BENCH_ARGS="--only startup,warm --runs 3" for
# a part; see bench/bench.py --help.
BENCH_ARGS ?=
bench: build kernel images
	@command -v qemu-system-x86_64 >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null; }
	python3 bench/bench.py $(BENCH_ARGS)

# The static gates CI runs before `make test`.
check: deps
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --release -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet
	@if ! command -v cargo-deny >/dev/null; then echo "[check] installing cargo-deny"; cargo install --locked --quiet cargo-deny; fi
	cargo fetch --locked --quiet  # every platform's crates, which deny reads
	cargo deny --offline check licenses bans sources

ci: check test

# The containerd shim and what it needs: the binaries in
# $(PREFIX)/lib/unipod/bin (the shim runs the `unipod` next to it and finds
# the guest in ../guest), symlinks in $(PREFIX)/bin (containerd looks the
# shim up in its PATH), and the CRI runtime handler `unipod` in
# /etc/containerd/conf.d (see docs/CONTAINERD.md).
PREFIX ?= /usr/local
UNIPOD_LIB := $(DESTDIR)$(PREFIX)/lib/unipod
install: build kernel images
	install -d $(UNIPOD_LIB)/bin $(UNIPOD_LIB)/guest $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/containerd/conf.d
	install -m 0755 target/release/unipod target/release/containerd-shim-unipod-v2 $(UNIPOD_LIB)/bin/
	install -m 0644 $(GUEST)/vmlinux $(GUEST)/initramfs.cpio $(UNIPOD_LIB)/guest/
	ln -sf $(PREFIX)/lib/unipod/bin/unipod $(DESTDIR)$(PREFIX)/bin/unipod
	ln -sf $(PREFIX)/lib/unipod/bin/containerd-shim-unipod-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-unipod-v2
	install -m 0644 examples/containerd/unipod.toml $(DESTDIR)/etc/containerd/conf.d/unipod.toml
	@echo "[install] done; containerd's config must import /etc/containerd/conf.d/*.toml (docs/CONTAINERD.md)"

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/unipod $(DESTDIR)$(PREFIX)/bin/containerd-shim-unipod-v2 $(DESTDIR)/etc/containerd/conf.d/unipod.toml
	rm -rf $(UNIPOD_LIB)

clean-cache:
	rm -rf $${XDG_CACHE_HOME:-$$HOME/.cache}/unipod
