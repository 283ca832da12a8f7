# secure-guest: `make run` and `make test` are all a new user needs. Both first run the setup
# script, which installs what is missing (QEMU 10, dtc, the pinned Rust toolchain and targets).

SHELL := /bin/bash

ARCH     ?= ppc64le
ifeq ($(ARCH),ppc64le)
MACHINE  ?= pseries
else
MACHINE  ?= q35
endif
FIRMWARE ?= vof
ACCEL    ?= tcg
MEMORY   ?= 512M
SMP      ?= 1
CMDLINE  ?=
# make bench QUICK=1: the quick profile (under 2 minutes instead of 10).
QUICK    ?=
# QEMU=/path/to/qemu-system-... selects another QEMU binary (the harness reads it from the env).
export QEMU
export ACCEL

PPC_TARGET := powerpc64le-unknown-linux-gnu
X86_TARGET := x86_64-unknown-none
SYSROOT     = $(shell rustc --print sysroot)
OBJCOPY     = $(SYSROOT)/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-objcopy
CARGO_GUEST = cargo build --release --features guest --bin secure-guest --bin noop

IMAGES := build/secure-guest-ppc64le build/secure-guest-x86_64 build/noop-ppc64le build/noop-x86_64

.PHONY: all setup images run noop test unit integration lint clean matrix bench

all: images

setup:
	@scripts/setup.sh

# Cargo decides what is stale; the copies are only refreshed when the ELF changed.
images: setup
	@$(CARGO_GUEST) --target $(PPC_TARGET)
	@$(CARGO_GUEST) --target $(X86_TARGET)
	@mkdir -p build
	@for t in secure-guest noop; do \
	  $(OBJCOPY) --strip-all target/$(PPC_TARGET)/release/$$t build/$$t-ppc64le; \
	  $(OBJCOPY) --strip-all target/$(X86_TARGET)/release/$$t build/$$t-x86_64; \
	done
	@ls -l $(IMAGES) | awk '{ printf "image %-28s %7d bytes\n", $$9, $$5 }'

run: images
	cargo run -q -p harness -- run --arch $(ARCH) --machine $(MACHINE) \
	  $(if $(filter pseries,$(MACHINE)),--firmware $(FIRMWARE)) \
	  --accel $(ACCEL) --memory $(MEMORY) --smp $(SMP) --append "$(CMDLINE)"

# The no-op payload: what QEMU and the firmware cost alone.
noop: images
	cargo run -q -p harness -- noop --arch $(ARCH) --machine $(MACHINE) \
	  $(if $(filter pseries,$(MACHINE)),--firmware $(FIRMWARE)) \
	  --accel $(ACCEL) --memory $(MEMORY) --smp $(SMP)

# Every machine x firmware x virtio transport x ring, all devices in each run, the data checked on
# the host; one verdict line per combination. MATRIX_ARGS: e.g. --filter q35 --jobs 2
# --junit matrix.xml --all-slof (see `cargo run -p harness -- matrix --help`).
matrix: images
	cargo run -q -p harness -- matrix $(MATRIX_ARGS)

# Boot time and virtio-blk throughput of every machine x DMA path, with progress on stderr: a
# markdown table on stdout, bench.json, bench.csv and throughput.svg in target/bench/ (README,
# Performance). Under 10 minutes; QUICK=1 under 2. Not part of `make test`. BENCH_ARGS: e.g.
# --filter q35 --repeats 3 (see `cargo run -p harness -- bench --help`).
bench: images
	cargo run -q -p harness -- bench $(if $(QUICK),--quick) $(BENCH_ARGS)
	cargo run -q -p harness -- boot-ratio $(if $(QUICK),--quick)

# Host only: parsers, report writer, the harness against a fake QEMU. No images needed.
unit: setup
	cargo test --workspace --lib
	cargo test -p harness

# Boot every machine in QEMU and check the reports.
integration: images
	cargo test --test boot --test virtio --test secure --test iommu --test x86iommu --test trace \
	  --test bench

# Everything: lints, host unit tests (parsers against hostile input), then the integration
# tests that boot every machine in real QEMU.
test: images lint
	@set -o pipefail; cargo test --workspace 2>&1 | tee target/test-output.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f }' target/test-output.log

lint:
	cargo fmt --all --check
	cargo clippy -q --workspace --all-targets -- -D warnings
	cargo clippy -q --release --features guest --bins --target $(PPC_TARGET) -- -D warnings
	cargo clippy -q --release --features guest --bins --target $(X86_TARGET) -- -D warnings

clean:
	cargo clean
	rm -rf build
