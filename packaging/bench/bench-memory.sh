#!/usr/bin/env bash
# Benchmark of process memory dumping: `ircap-agent capture --memory-regions
# pid=N` of one large process (BENCH_BYTES touched, alternating 1 MiB blocks
# of random bytes and text) into a local directory and to a mutual-TLS
# `ircap-collector` on loopback, against the raw tools a responder would use:
# `dd if=/proc/PID/mem` (skip/count per readable region) | gzip -1 |
# sha256sum. Also the agent's peak RSS while dumping 1 GiB. Everything runs
# in one go on the same machine.
#
#   sudo bash packaging/bench/bench-memory.sh          # from the repo root
#
# Stdout: a Markdown table (and nothing else). Progress: stderr.
#
# Environment:
#   BENCH_BYTES=2147483648  memory touched by the target process
#   BENCH_RUNS=3         timed repetitions of each command (interleaved)
#   BENCH_TMPDIR=DIR     parent of the scratch directory (default
#                        ~/.cache/ircap-bench; not /tmp, which the agent walks)
#   BENCH_SKIP_BUILD=1   use the existing binaries
#   BENCH_BIN_DIR=DIR    where the binaries are (default target/release)
#
# Target: agent peak RSS under 64 MiB during a 1 GiB dump; throughput of the
# agent to a local directory at least that of the dd | gzip -1 | sha256sum
# pipeline (ratio >= 1).
set -euo pipefail

BENCH_BYTES=${BENCH_BYTES:-2147483648}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_TMPDIR=${BENCH_TMPDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ircap-bench}
BENCH_SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
MIB=1048576
AGENT_NAME=bench-memory

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
for var in BENCH_BYTES BENCH_RUNS; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer (got '${!var}')"
done
((BENCH_RUNS >= 1)) || die "BENCH_RUNS must be at least 1"
((BENCH_BYTES >= 2 * MIB)) || die "BENCH_BYTES must be at least 2 MiB"
[[ $EUID -eq 0 ]] || die "run as root: reading another process's memory needs it"
for tool in python3 gzip sha256sum dd awk; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is missing: apt-get install time"

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
cd "$repo_root"
BENCH_BIN_DIR=${BENCH_BIN_DIR:-$repo_root/target/release}
agent_bin=$BENCH_BIN_DIR/ircap-agent
collector_bin=$BENCH_BIN_DIR/ircap-collector

mkdir -p "$BENCH_TMPDIR"
TMP=$(mktemp -d "$BENCH_TMPDIR/memory.$$.XXXXXX")
target_pid=
collector_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $target_pid ]] && kill "$target_pid" 2>/dev/null || true
    [[ -n $collector_pid ]] && kill -TERM "$collector_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $BENCH_SKIP_BUILD != 1 ]]; then
    log "Building: cargo build --release -p ircap-agent -p ircap-collector"
    cargo build --release -p ircap-agent -p ircap-collector >&2
fi
[[ -x $agent_bin && -x $collector_bin ]] || die "release binaries not found"

# --- the target process --------------------------------------------------------
log "Starting a process touching $BENCH_BYTES bytes"
python3 - "$BENCH_BYTES" >"$TMP/target.out" <<'PY' &
import mmap, os, sys, time
size = int(sys.argv[1])
MIB = 1 << 20
text = (b"Nov 23 12:00:00 web-1 sshd[1234]: Accepted publickey for deploy from 10.0.0.1 port 50000 ssh2\n" * 12000)[:MIB]
rand = os.urandom(MIB)
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(size // MIB):
    m[i * MIB:(i + 1) * MIB] = rand if i % 2 else text
print("ready", flush=True)
time.sleep(3600)
PY
target_pid=$!
for ((i = 0; i < 600; i++)); do
    [[ -s $TMP/target.out ]] && break
    kill -0 "$target_pid" 2>/dev/null || die "the target process died"
    sleep 0.1
done
[[ -s $TMP/target.out ]] || die "the target process did not get ready"
# Readable regions of the target: "start end" in hex, for the baseline.
awk '$2 ~ /^r/ && $6 != "[vvar]" && $6 != "[vvar_vclock]" && $6 != "[vsyscall]" {
    split($1, a, "-"); print a[1], a[2] }' "/proc/$target_pid/maps" >"$TMP/regions"
total=0
while read -r lo hi; do total=$((total + 0x$hi - 0x$lo)); done <"$TMP/regions"
log "Target pid $target_pid: $(wc -l <"$TMP/regions") readable regions, $total bytes"

# --- the collector --------------------------------------------------------------
"$collector_bin" pki init --out "$TMP/pki" --agent "$AGENT_NAME" >/dev/null 2>"$TMP/pki.err" ||
    die "pki init failed: $(tail -n 3 "$TMP/pki.err")"
"$collector_bin" serve --listen 127.0.0.1:0 --store "file://$TMP/store" \
    --ca "$TMP/pki/ca.pem" --cert "$TMP/pki/server.pem" --key "$TMP/pki/server.key" \
    </dev/null >"$TMP/collector.out" 2>"$TMP/collector.err" &
collector_pid=$!
port=
for ((i = 0; i < 300; i++)); do
    if [[ -s $TMP/collector.out ]] && [[ $(head -n 1 "$TMP/collector.out") =~ \"listening\":\"127\.0\.0\.1:([0-9]+)\" ]]; then
        port=${BASH_REMATCH[1]}
        break
    fi
    sleep 0.1
done
[[ -n $port ]] || die "the collector did not start: $(tail -n 3 "$TMP/collector.err")"

# --- timed commands -----------------------------------------------------------------
agent_args=(capture --no-imds --no-logs --no-lower-priority
    --memory-regions "pid=$target_pid" --memory-budget 1T --memory-process-budget 1T)
baseline() {
    while read -r lo hi; do
        dd if="/proc/$target_pid/mem" bs=1M iflag=skip_bytes,count_bytes \
            skip=$((0x$lo)) count=$((0x$hi - 0x$lo)) status=none 2>/dev/null || true
    done <"$TMP/regions" | gzip -1 | sha256sum >/dev/null
}
declare -A wall rss
# timed NAME CMD...: wall seconds and peak RSS (KiB) of CMD.
timed() {
    local name=$1
    shift
    /usr/bin/time -f '%e %M' -o "$TMP/$name.time" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" ||
        die "$name failed: $(tail -n 3 "$TMP/$name.err")"
    read -r w r <"$TMP/$name.time"
    wall[$name]+="$w "
    rss[$name]+="$r "
}
export -f baseline
export target_pid TMP
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for ((run = 1; run <= BENCH_RUNS; run++)); do
    log "Round $run/$BENCH_RUNS"
    rm -rf "$TMP/local" "$TMP/store/captures"
    timed agent_local "$agent_bin" "${agent_args[@]}" --output "$TMP/local"
    timed agent_collector "$agent_bin" "${agent_args[@]}" --collector "https://127.0.0.1:$port" \
        --ca "$TMP/pki/ca.pem" --cert "$TMP/pki/$AGENT_NAME.pem" --key "$TMP/pki/$AGENT_NAME.key"
    timed baseline bash -c baseline
    rm -rf "$TMP/nomem"
    timed agent_no_memory "$agent_bin" capture --no-imds --no-logs --no-lower-priority --output "$TMP/nomem"
    rm -rf "$TMP/local1g"
    timed agent_1gib "$agent_bin" capture --no-imds --no-logs --no-lower-priority \
        --memory-regions "pid=$target_pid" --memory-budget 1G --output "$TMP/local1g"
done
stored=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_stored"])' <"$TMP/agent_local.out")

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
max() { tr ' ' '\n' | grep -v '^$' | sort -g | tail -n 1; }
base=$(median <<<"${wall[baseline]}")
echo "| command | median wall (s) | MB/s | speed vs dd\|gzip -1\|sha256sum | peak RSS (MiB) |"
echo "|---|---|---|---|---|"
fixed=$(median <<<"${wall[agent_no_memory]}")
one_gib=$((1 << 30))
((one_gib < total)) || one_gib=$total
for name in baseline agent_local agent_collector agent_1gib; do
    w=$(median <<<"${wall[$name]}")
    bytes=$total
    [[ $name == agent_1gib ]] && bytes=$one_gib
    r=$(max <<<"${rss[$name]}")
    awk -v n="$name" -v w="$w" -v b="$bytes" -v base="$base" -v r="$r" -v tot="$total" 'BEGIN {
        ratio = (n == "agent_1gib") ? "-" : sprintf("%.2f", base / w)
        printf "| %s | %.2f | %.0f | %s | %.1f |\n", n, w, b / w / 1e6, ratio, r / 1024 }'
done
echo
echo "Process bytes: $total ($(wc -l <"$TMP/regions") readable regions); the agent's capture without memory (--no-logs, the fixed cost included in every agent row) took $fixed s; agent stored $stored bytes (gzip); runs: $BENCH_RUNS; load average before: $load0."
