#!/usr/bin/env bash
# Load benchmark of the collector: BENCH_AGENTS simulated agents, each with
# its own certificate (issued by `ircap-collector pki init`) and its own
# TLS connection, all starting at once, each uploading one capture of
# BENCH_ARTIFACTS small gzip artifacts to one file-store collector on
# loopback (`ircap-load`, tests/src/bin/ircap-load.rs, does the agents'
# side of the protocol). A bench, not a test: bounded in agents and time
# (the driver stops at BENCH_DEADLINE and counts what did not finish as
# errors), and it cleans up after itself.
#
#   bash packaging/bench/bench-load.sh              # from the repo root
#
# Stdout: one Markdown table row (and nothing else). Progress: stderr.
#
# Environment:
#   BENCH_AGENTS=500         simulated agents (one capture each)
#   BENCH_ARTIFACTS=16       artifacts per capture
#   BENCH_CONTENT_BYTES=32000  content bytes per artifact (gzip -1 of
#                            log-like text: about 10 KB stored, so 16
#                            artifacts make a ~166 KB capture)
#   BENCH_DEADLINE=300       seconds before the driver gives up
#   BENCH_PROFILE=release    cargo profile of the binaries
#   BENCH_SKIP_BUILD=1       use the binaries already built
#   BENCH_COLLECTOR=PATH     the collector binary to measure (default
#                            target/$BENCH_PROFILE/ircap-collector; implies
#                            BENCH_SKIP_BUILD=1), e.g. an older build to
#                            compare with
#   BENCH_TMPDIR=DIR         parent of the scratch directory (PKI, store;
#                            default ~/.cache/ircap-bench); the store's
#                            file system is the one whose syncs are measured
#   BENCH_VERIFY=5           captures checked with `ircap-collector verify`
#   BENCH_OUT=FILE           also write the driver's JSON report there
#
# Reported: captures/s and MB/s (stored bytes) over the run, capture
# latency p50/p99 (open to commit answer), collector peak RSS (VmHWM) and
# CPU (user+system over the run, as a share of one core), errors, and
# whether every committed capture's manifest is in the store.
set -euo pipefail
cd "$(dirname "$0")/../.."

AGENTS=${BENCH_AGENTS:-500}
ARTIFACTS=${BENCH_ARTIFACTS:-16}
CONTENT=${BENCH_CONTENT_BYTES:-32000}
DEADLINE=${BENCH_DEADLINE:-300}
PROFILE=${BENCH_PROFILE:-release}
VERIFY=${BENCH_VERIFY:-5}
TARGET=${CARGO_TARGET_DIR:-target}
BIN="$TARGET/$PROFILE"
COLLECTOR=${BENCH_COLLECTOR:-$BIN/ircap-collector}
[ -n "${BENCH_COLLECTOR:-}" ] && BENCH_SKIP_BUILD=1

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building ircap-collector and ircap-load ($PROFILE)"
    flag=(--profile "$PROFILE")
    cargo build "${flag[@]}" -p ircap-collector --bin ircap-collector >&2
    cargo build "${flag[@]}" -p ircap-e2e --bin ircap-load >&2
fi
for b in "$COLLECTOR" "$BIN/ircap-load"; do
    [ -x "$b" ] || { echo "bench-load: $b is missing" >&2; exit 2; }
done

base=${BENCH_TMPDIR:-$HOME/.cache/ircap-bench}
mkdir -p "$base"
scratch=$(mktemp -d "$base/load.XXXXXX")
collector_pid=
cleanup() {
    if [ -n "$collector_pid" ]; then kill "$collector_pid" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT INT TERM
# One connection per agent, plus the store's files.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

log "issuing $AGENTS agent certificates"
args=()
for ((i = 0; i < AGENTS; i++)); do args+=(--agent "load-$i"); done
"$COLLECTOR" pki init --out "$scratch/pki" "${args[@]}" >/dev/null

log "starting the collector (file store in $scratch/store)"
fifo="$scratch/listening"
mkfifo "$fifo"
RUST_LOG=warn "$COLLECTOR" serve --listen 127.0.0.1:0 \
    --store "file://$scratch/store" \
    --ca "$scratch/pki/ca.pem" --cert "$scratch/pki/server.pem" --key "$scratch/pki/server.key" \
    >"$fifo" 2>"$scratch/collector.log" &
collector_pid=$!
read -r -t 30 line <"$fifo"
addr=$(sed -E 's/.*"listening":"([^"]+)".*/\1/' <<<"$line")
clk=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$collector_pid/stat"; }
cpu0=$(cpu)

log "$AGENTS agents x $ARTIFACTS artifacts -> https://$addr (deadline ${DEADLINE}s)"
report=$(timeout $((DEADLINE + 60)) "$BIN/ircap-load" "https://$addr" "$scratch/pki" \
    "$AGENTS" "$ARTIFACTS" "$CONTENT" "$DEADLINE")
cpu1=$(cpu)
hwm_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$collector_pid/status")
[ -n "${BENCH_OUT:-}" ] && printf '%s\n' "$report" >"$BENCH_OUT"
log "driver: $report"

field() { sed -E "s/.*\"$1\":([^,}]+).*/\1/" <<<"$report"; }
captures=$(field captures)
errors=$(field errors)
secs=$(field seconds)
manifests=$(find "$scratch/store/captures" -name manifest.json 2>/dev/null | wc -l)

verified=0
checked=0
for dir in $(find "$scratch/store/captures" -name manifest.json -printf '%h\n' 2>/dev/null | head -n "$VERIFY"); do
    checked=$((checked + 1))
    if "$COLLECTOR" verify "$dir" >/dev/null 2>&1; then verified=$((verified + 1)); fi
done

awk -v n="$AGENTS" -v a="$ARTIFACTS" -v c="$captures" -v e="$errors" -v s="$secs" \
    -v cps="$(field captures_per_s)" -v mbs="$(field mb_per_s)" \
    -v p50="$(field p50_s)" -v p99="$(field p99_s)" \
    -v cpu="$((cpu1 - cpu0))" -v clk="$clk" -v hwm="$hwm_kb" \
    -v m="$manifests" -v vf="$verified" -v ck="$checked" 'BEGIN {
    printf "| %d agents x %d artifacts | %d/%d committed, %d errors, %d manifests stored, %d/%d verified | %.1f captures/s | %.2f MB/s | p50 %.1f s, p99 %.1f s | %.0f%% of a core | %.0f MB |\n",
        n, a, c, n, e, m, vf, ck, cps, mbs, p50, p99, 100 * cpu / clk / s, hwm / 1024
}'
[ "$errors" = 0 ] && [ "$manifests" = "$captures" ] && [ "$verified" = "$checked" ]
