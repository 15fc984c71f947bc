#!/usr/bin/env bash
# Idle cost of `ircap-agent serve` (daemon mode) connected to a collector on
# loopback with its production settings (30 s heartbeat, HTTP/2 keepalive
# every 30 s), against a baseline run at the same time: an idle
# `openssl s_client` holding one TLS connection to `openssl s_server` (the
# least a process holding an outbound TLS connection can cost), and `sleep`
# (the measuring floor). Samples CPU time (utime+stime of every thread),
# RSS and wakeups (context switches of every thread) at the start and end
# of the window.
#
#   bash packaging/bench/bench-idle.sh              # from the repo root
#
# Stdout: a Markdown table. Progress: stderr.
#
# Environment:
#   BENCH_IDLE_SECONDS=600  length of the idle window
#   BENCH_SKIP_BUILD=1      use the existing target/release binaries
#   BENCH_TMPDIR=DIR        parent of the scratch directory (default
#                           ~/.cache/ircap-bench; not /tmp, which the agent
#                           walks); deleted on exit
set -euo pipefail

SECONDS_IDLE=${BENCH_IDLE_SECONDS:-600}
BENCH_SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BENCH_TMPDIR=${BENCH_TMPDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ircap-bench}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

cd "$(dirname "$0")/../.."
if [[ $BENCH_SKIP_BUILD != 1 ]]; then
    log "building release binaries"
    cargo build --release -q -p ircap-agent -p ircap-collector
fi
AGENT=$PWD/target/release/ircap-agent
COLLECTOR=$PWD/target/release/ircap-collector

mkdir -p "$BENCH_TMPDIR"
WORK=$(mktemp -d "$BENCH_TMPDIR/idle.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$COLLECTOR" pki init --out "$WORK/pki" --agent web-1 --analyst alice >/dev/null
"$COLLECTOR" serve --listen 127.0.0.1:0 --store "file://$WORK/store" \
    --ca "$WORK/pki/ca.pem" --cert "$WORK/pki/server.pem" --key "$WORK/pki/server.key" \
    >"$WORK/collector.out" 2>"$WORK/collector.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $WORK/collector.out ]] && break; sleep 0.1; done
ADDR=$(sed -n 's/.*"listening":"\([^"]*\)".*/\1/p' "$WORK/collector.out")
URL=https://$ADDR
log "collector on $URL"

"$AGENT" serve --no-imds --collector "$URL" --ca "$WORK/pki/ca.pem" \
    --cert "$WORK/pki/web-1.pem" --key "$WORK/pki/web-1.key" --label bench=idle \
    2>"$WORK/agent.log" &
AGENT_PID=$!
PIDS+=($AGENT_PID)
export IRCAP_SERVER=$URL IRCAP_CA=$WORK/pki/ca.pem IRCAP_CERT=$WORK/pki/alice.pem IRCAP_KEY=$WORK/pki/alice.key
for _ in $(seq 100); do
    "$COLLECTOR" agents --json 2>/dev/null | grep -q '"web-1"' && break
    sleep 0.2
done
"$COLLECTOR" agents --json | grep -q '"web-1"' || { log "agent never connected"; exit 1; }

# Baseline: one idle TLS connection held by openssl.
PORT=$((20000 + RANDOM % 20000))
# Both ends get a stdin that stays open (openssl stops at end of input).
openssl s_server -quiet -accept "127.0.0.1:$PORT" -cert "$WORK/pki/server.pem" \
    -key "$WORK/pki/server.key" < <(sleep $((SECONDS_IDLE + 60))) >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5
openssl s_client -quiet -connect "127.0.0.1:$PORT" < <(sleep $((SECONDS_IDLE + 60))) >/dev/null 2>&1 &
OPENSSL_PID=$!
PIDS+=($OPENSSL_PID)
sleep $((SECONDS_IDLE + 60)) &
SLEEP_PID=$!
PIDS+=($SLEEP_PID)
sleep 2

TICK=$(getconf CLK_TCK)
# cpu_ticks PID: utime+stime of the process (all threads).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/ctxt_switches/ {n += $2} END {print n + 0}'
}

declare -A C0 R0 S0
for p in $AGENT_PID $OPENSSL_PID $SLEEP_PID; do
    C0[$p]=$(cpu_ticks "$p"); R0[$p]=$(rss_kib "$p"); S0[$p]=$(switches "$p")
done
log "idle for $SECONDS_IDLE s"
sleep "$SECONDS_IDLE"

echo "| process (idle ${SECONDS_IDLE} s) | RSS start MiB | RSS end MiB | CPU s | CPU % of one core | wakeups/min |"
echo "|---|---:|---:|---:|---:|---:|"
row() {
    local name=$1 p=$2
    local c1 r1 s1
    c1=$(cpu_ticks "$p"); r1=$(rss_kib "$p"); s1=$(switches "$p")
    awk -v n="$name" -v c0="${C0[$p]}" -v c1="$c1" -v r0="${R0[$p]}" -v r1="$r1" \
        -v s0="${S0[$p]}" -v s1="$s1" -v t="$SECONDS_IDLE" -v hz="$TICK" 'BEGIN {
        cpu = (c1 - c0) / hz
        printf "| %s | %.1f | %.1f | %.2f | %.3f | %.1f |\n", n, r0 / 1024, r1 / 1024, cpu, 100 * cpu / t, (s1 - s0) * 60 / t
    }'
}
row '`ircap-agent serve` (heartbeat 30 s, HTTP/2 keepalive 30 s)' "$AGENT_PID"
row 'baseline: idle `openssl s_client` TLS connection' "$OPENSSL_PID"
row 'floor: `sleep`' "$SLEEP_PID"
"$COLLECTOR" agents --json | grep -q '"web-1"' || { log "agent no longer connected at the end"; exit 1; }
log "agent still connected at the end"
