#!/usr/bin/env bash
# Builds the static ircap-agent that is shipped to hosts (SSM one-shot, .deb,
# golden AMIs): musl libc linked in, no shared library needed, stripped, with
# a SHA-256 file next to it.
#
#   bash packaging/build-static.sh                 # x86_64 (default)
#   IRCAP_TARGETS="x86_64 aarch64" bash packaging/build-static.sh
#
# Writes dist/ircap-agent-<arch>-linux-musl and dist/ircap-agent-<arch>-linux-musl.sha256
# (the .sha256 holds `<hex>  <file name>`, the format `sha256sum -c` reads).
# Needs: rustup, and Debian's musl-tools (ring compiles C with
# x86_64-linux-musl-gcc). aarch64 needs Debian's gcc-aarch64-linux-gnu
# (see the README's "Deploy" section).
set -euo pipefail
cd "$(dirname "$0")/.."

targets=${IRCAP_TARGETS:-x86_64}
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p dist

for arch in $targets; do
    triple="${arch}-unknown-linux-musl"
    if command -v rustup >/dev/null 2>&1; then
        rustup target add "$triple" >&2
    fi
    if [ "$arch" = "x86_64" ] && ! command -v x86_64-linux-musl-gcc >/dev/null 2>&1; then
        echo "x86_64-linux-musl-gcc not found: apt-get install musl-tools" >&2
        exit 1
    fi
    if [ "$arch" = "aarch64" ] && ! command -v aarch64-linux-musl-gcc >/dev/null 2>&1; then
        # Debian has no aarch64 musl cross compiler; its glibc cross gcc
        # compiles ring's (libc-free) C and drives the link, while Rust's
        # self-contained musl crt and libc.a are what get linked.
        if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
            echo "aarch64-linux-gnu-gcc not found: apt-get install gcc-aarch64-linux-gnu" >&2
            exit 1
        fi
        export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-aarch64-linux-gnu-gcc}
    fi
    cargo build --locked -p ircap-agent --profile dist --target "$triple" >&2
    name="ircap-agent-${arch}-linux-musl"
    install -m 0755 "${target_dir}/${triple}/dist/ircap-agent" "dist/${name}"
    (cd dist && sha256sum "$name" >"${name}.sha256")
    echo "dist/${name} $(stat -c %s "dist/${name}") bytes sha256 $(cut -d' ' -f1 "dist/${name}.sha256")"
done
