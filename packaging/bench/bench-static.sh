#!/usr/bin/env bash
# Picks the opt-level of the static agent's `dist` profile with numbers:
# builds the musl agent at each opt-level (s, z, 3 by default; everything
# else as in [profile.dist]) and, interleaved in the same run, times
#   - a capture of this host without logs (processes, maps, sockets, ...)
#   - a capture with a BENCH_LOG_MB MiB log file (gzip + two SHA-256: the
#     agent's bulk path)
# against the raw baseline `gzip -1 | sha256sum` of that log file.
#
#   sudo bash packaging/bench/bench-static.sh        # from the repo root
#
# Stdout: a Markdown table. Progress: stderr. Leaves target/ built at the
# last level; run packaging/build-static.sh afterwards to restore dist/.
#
# Environment: BENCH_LEVELS="s z 3", BENCH_RUNS=5, BENCH_LOG_MB=256,
# BENCH_TMPDIR (default ~/.cache/ircap-bench; not /tmp, which the agent walks).
set -euo pipefail
cd "$(dirname "$0")/../.."

LEVELS=${BENCH_LEVELS:-"s z 3"}
RUNS=${BENCH_RUNS:-5}
LOG_MB=${BENCH_LOG_MB:-256}
BASE=${BENCH_TMPDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ircap-bench}
TRIPLE=x86_64-unknown-linux-musl

log() { printf '[bench-static %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
mkdir -p "$BASE"
work=$(mktemp -d "$BASE/static.XXXXXX")
trap 'rm -rf "$work"' EXIT

for level in $LEVELS; do
    log "building opt-level=$level"
    CARGO_PROFILE_DIST_OPT_LEVEL=$level cargo build --locked -q -p ircap-agent \
        --profile dist --target "$TRIPLE" >&2
    cp "target/$TRIPLE/dist/ircap-agent" "$work/agent-$level"
done

log "writing a ${LOG_MB} MiB log (half random, half text)"
mkdir -p "$work/logs"
half=$((LOG_MB * 1024 * 1024 / 2))
head -c "$half" /dev/urandom >"$work/logs/big.log"
# (process substitution: `yes` ends on SIGPIPE, which pipefail would report)
head -c "$half" < <(yes 'Nov 23 10:00:01 web-1 sshd[4242]: Accepted publickey for deploy from 10.0.3.7 port 52144 ssh2') \
    >>"$work/logs/big.log"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# time_ms CMD...: wall milliseconds of CMD (output discarded).
time_ms() {
    local t0 t1
    t0=$(now_ms)
    "$@" >/dev/null 2>&1
    t1=$(now_ms)
    echo $((t1 - t0))
}
capture() { # agent, with-logs(0/1)
    local out="$work/out"
    rm -rf "$out"
    if [ "$2" = 1 ]; then
        "$1" capture --output "$out" --no-imds --logs-dir "$work/logs" --logs-since 1h
    else
        "$1" capture --output "$out" --no-imds --no-logs
    fi
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A nolog withlog
base_runs=""
for i in $(seq 0 "$RUNS"); do
    log "run $i/$RUNS"
    b=$(time_ms sh -c "gzip -1 <'$work/logs/big.log' | sha256sum")
    [ "$i" -gt 0 ] && base_runs="$base_runs $b"
    for level in $LEVELS; do
        a=$(time_ms capture "$work/agent-$level" 0)
        c=$(time_ms capture "$work/agent-$level" 1)
        if [ "$i" -gt 0 ]; then # run 0 warms the caches
            nolog[$level]="${nolog[$level]:-} $a"
            withlog[$level]="${withlog[$level]:-} $c"
        fi
    done
done
base=$(echo $base_runs | tr ' ' '\n' | median)

echo "| opt-level | size (bytes) | capture, no logs (median ms) | capture + ${LOG_MB} MiB log (median ms) | ratio vs \`gzip -1 \\| sha256sum\` (${base} ms) |"
echo "|---|---:|---:|---:|---:|"
for level in $LEVELS; do
    size=$(stat -c %s "$work/agent-$level")
    a=$(echo ${nolog[$level]} | tr ' ' '\n' | median)
    c=$(echo ${withlog[$level]} | tr ' ' '\n' | median)
    ratio=$(awk -v c="$c" -v b="$base" 'BEGIN {printf "%.2fx", c / b}')
    echo "| $level | $size | $a | $c | $ratio |"
done
