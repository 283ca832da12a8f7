#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: QEMU 10 from bookworm-backports, dtc, and the
# Rust toolchain pinned in rust-toolchain.toml with its targets. When everything is present it only
# runs a few cheap checks (well under 2 s). When it cannot install, it says exactly what to install.
set -eu
cd "$(dirname "$0")/.."

need_pkgs=()
have_qemu10() { # $1 = binary; true when it exists and is QEMU >= 10
  command -v "$1" >/dev/null 2>&1 || return 1
  local v; v=$("$1" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
  [ -n "$v" ] && [ "$v" -ge 10 ]
}
have_qemu10 qemu-system-ppc64 || need_pkgs+=(qemu-system-ppc)
have_qemu10 qemu-system-x86_64 || need_pkgs+=(qemu-system-x86)
command -v dtc >/dev/null 2>&1 || need_pkgs+=(device-tree-compiler)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    cat >&2 <<MSG
setup: missing: ${need_pkgs[*]}
setup: this script installs them only as root on Debian. Install by hand:
  echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list
  apt-get update && apt-get install -y -t bookworm-backports ${need_pkgs[*]}
MSG
    exit 1
  fi
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'setup: adding bookworm-backports to apt sources'
    echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list
  fi
  echo "setup: installing ${need_pkgs[*]} (QEMU from bookworm-backports)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -t bookworm-backports "${need_pkgs[@]}" >/dev/null
fi

# Rust: rustup reads rust-toolchain.toml; make sure the pinned toolchain, targets and components
# exist. Checking the sysroot directly is much cheaper than asking rustup to sync.
if ! command -v rustup >/dev/null 2>&1; then
  echo "setup: rustup is missing; install it from https://rustup.rs and rerun" >&2
  exit 1
fi
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
sysroot=$(rustc --print sysroot 2>/dev/null || true)
ok=1
for t in x86_64-unknown-none powerpc64le-unknown-linux-gnu; do
  [ -d "$sysroot/lib/rustlib/$t" ] || ok=0
done
[ -d "$sysroot/lib/rustlib/src/rust/library" ] || ok=0
# make lint and make images use rustfmt, clippy and llvm-objcopy (llvm-tools).
for tool in bin/rustfmt bin/cargo-clippy lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-objcopy; do
  [ -x "$sysroot/$tool" ] || ok=0
done
if [ $ok = 0 ] || [ -z "$sysroot" ]; then
  echo "setup: installing Rust $channel with targets and components"
  rustup toolchain install "$channel" --profile minimal \
    --component rust-src,llvm-tools,clippy,rustfmt \
    --target x86_64-unknown-none,powerpc64le-unknown-linux-gnu
fi
