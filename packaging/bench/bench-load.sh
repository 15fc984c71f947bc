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
# The load runs twice, each on a fresh collector (same binary, same PKI,
# empty store): first alone, then with BENCH_BOMBERS hostile agents
# alongside (own certificates `bomb-<j>`), each keeping BENCH_BOMB_STREAMS
# upload streams busy with gzip bombs (4 MiB chunks decoding to about
# 4 GiB each) until the normal agents are done. The ratio of the two
# captures/s is what a bomber costs everyone else (issue 13's target:
# with bombers >= 0.9x without); the collector must refuse every bomb
# and store none of it.
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
#   BENCH_BOMBERS=1          gzip-bomb agents in the second run (0: one
#                            run only, the bomber columns show "-")
#   BENCH_BOMB_STREAMS=3     upload streams at once per bomber (the
#                            collector allows 8 per identity)
#   BENCH_DEADLINE=300       seconds before the driver gives up (per run)
#   BENCH_PROFILE=release    cargo profile of the binaries
#   BENCH_SKIP_BUILD=1       use the binaries already built
#   BENCH_COLLECTOR=PATH     the collector binary to measure (default
#                            target/$BENCH_PROFILE/ircap-collector; implies
#                            BENCH_SKIP_BUILD=1), e.g. an older build to
#                            compare with
#   BENCH_TMPDIR=DIR         parent of the scratch directory (PKI, stores;
#                            default ~/.cache/ircap-bench); the store's
#                            file system is the one whose syncs are measured
#   BENCH_FRESH_FS=auto      the stores on a fresh journaled ext4 file
#                            system (a 4 GiB image, loop-mounted under the
#                            scratch directory, removed at the end): 1
#                            requires it, 0 uses the scratch directory's
#                            own, auto (default) uses one when running as
#                            root with mkfs.ext4 and loop devices. Why: on
#                            an ext4 *without* a journal (this VM's root
#                            file system) every file creation skips the
#                            inodes freed in the last 60-300 s, so a run
#                            after another run's cleanup (or the
#                            collector's own deletions) measured anywhere
#                            from 31 to 87 captures/s; a fresh journaled
#                            file system is what a collector's store
#                            should be on, and repeats
#   BENCH_VERIFY=5           captures checked with `ircap-collector verify`
#                            (per run)
#   BENCH_OUT=FILE           also write the driver's JSON reports there
#                            (one line per run)
#
# Reported, for the run without bombers: captures/s and MB/s (stored
# bytes) over the run, capture latency p50/p99 (open to commit answer),
# collector peak RSS (VmHWM) and CPU (user+system over the run, as a share
# of one core), errors, and whether every committed capture's manifest is
# in the store. For the run with bombers: the normal agents' committed,
# errors and verified, their captures/s and its ratio to the first run,
# the bombs refused by status code, bombs acknowledged (bytes the
# collector said it stored) and bomb bytes found in the store (both must
# be 0), and the collector's CPU and peak RSS. Last, the 1-minute load
# average at the end of each run (the machine may be shared).
#
# Exit status 0 when both runs had 0 errors, every committed capture's
# manifest stored and the checked captures verified, and the bombers'
# bombs were refused (at least one) with none acknowledged or stored. The
# ratio is reported, not enforced: a bench on a shared machine is noisy.
set -euo pipefail
cd "$(dirname "$0")/../.."

AGENTS=${BENCH_AGENTS:-500}
ARTIFACTS=${BENCH_ARTIFACTS:-16}
CONTENT=${BENCH_CONTENT_BYTES:-32000}
BOMBERS=${BENCH_BOMBERS:-1}
BOMB_STREAMS=${BENCH_BOMB_STREAMS:-3}
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
stores=$scratch
mounted=
cleanup() {
    if [ -n "$collector_pid" ]; then kill "$collector_pid" 2>/dev/null || true; fi
    if [ -n "$mounted" ]; then umount "$mounted" 2>/dev/null || umount -l "$mounted" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT INT TERM
fresh=${BENCH_FRESH_FS:-auto}
if [ "$fresh" = auto ]; then
    fresh=0
    if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null && [ -e /dev/loop-control ]; then fresh=1; fi
fi
if [ "$fresh" = 1 ]; then
    truncate -s 4G "$scratch/fs.img"
    mkfs.ext4 -q -F "$scratch/fs.img" || { echo "bench-load: mkfs.ext4 failed" >&2; exit 2; }
    mkdir "$scratch/fs"
    mount -o loop "$scratch/fs.img" "$scratch/fs" || { echo "bench-load: cannot loop-mount the store file system" >&2; exit 2; }
    mounted=$scratch/fs
    stores=$scratch/fs
    log "stores on a fresh journaled ext4 ($scratch/fs.img, loop-mounted)"
else
    log "stores in $scratch (BENCH_FRESH_FS=0, or not root / no mkfs.ext4 / no loop devices)"
fi
# One connection per agent, plus the store's files.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
[ -n "${BENCH_OUT:-}" ] && : >"$BENCH_OUT"

log "issuing $AGENTS agent and $BOMBERS bomber certificates"
args=()
for ((i = 0; i < AGENTS; i++)); do args+=(--agent "load-$i"); done
for ((j = 0; j < BOMBERS; j++)); do args+=(--agent "bomb-$j"); done
"$COLLECTOR" pki init --out "$scratch/pki" "${args[@]}" >/dev/null
clk=$(getconf CLK_TCK)
loadavg() { cut -d' ' -f1 /proc/loadavg; }

# run NAME BOMBERS: one load run on a fresh collector and store; sets
# NAME_<figure> variables.
run() {
    local name=$1 bombers=$2
    local store="$stores/store-$name" fifo="$scratch/listening-$name"
    log "starting the collector (file store in $store); load average $(loadavg)"
    mkfifo "$fifo"
    RUST_LOG=warn "$COLLECTOR" serve --listen 127.0.0.1:0 \
        --store "file://$store" \
        --ca "$scratch/pki/ca.pem" --cert "$scratch/pki/server.pem" --key "$scratch/pki/server.key" \
        >"$fifo" 2>"$scratch/collector-$name.log" &
    collector_pid=$!
    local line addr
    read -r -t 30 line <"$fifo"
    addr=$(sed -E 's/.*"listening":"([^"]+)".*/\1/' <<<"$line")
    cpu() { awk '{print $14 + $15}' "/proc/$collector_pid/stat"; }
    local cpu0 cpu1 hwm_kb report
    cpu0=$(cpu)

    log "$name: $AGENTS agents x $ARTIFACTS artifacts, $bombers bombers x $BOMB_STREAMS streams -> https://$addr (deadline ${DEADLINE}s)"
    report=$(timeout $((DEADLINE + 120)) "$BIN/ircap-load" \
        --bombers "$bombers" --bomb-streams "$BOMB_STREAMS" \
        "https://$addr" "$scratch/pki" "$AGENTS" "$ARTIFACTS" "$CONTENT" "$DEADLINE")
    cpu1=$(cpu)
    hwm_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$collector_pid/status")
    kill "$collector_pid"
    wait "$collector_pid" 2>/dev/null || true
    collector_pid=
    [ -n "${BENCH_OUT:-}" ] && printf '%s\n' "$report" >>"$BENCH_OUT"
    log "$name: driver: $report"
    log "$name: load average $(loadavg) ($(uptime))"

    field() { sed -E "s/.*\"$1\":\"?([^,}\"]*)\"?[,}].*/\1/" <<<"$report"; }
    local f
    for f in captures errors seconds captures_per_s mb_per_s p50_s p99_s \
        bombs_refused bombs_refused_codes bombs_acknowledged bomber_errors; do
        printf -v "${name}_$f" '%s' "$(field "$f")"
    done
    printf -v "${name}_cpu" '%s' "$(awk -v c="$((cpu1 - cpu0))" -v k="$clk" -v s="$(field seconds)" \
        'BEGIN { printf "%.0f", 100 * c / k / s }')"
    printf -v "${name}_rss" '%s' "$((hwm_kb / 1024))"
    printf -v "${name}_load" '%s' "$(loadavg)"
    printf -v "${name}_manifests" '%s' \
        "$(find "$store/captures" -name manifest.json 2>/dev/null | wc -l)"
    # Bomb artifacts are named bomb/<stream>-<round>.jsonl.gz: any byte of
    # one anywhere in the store (final, staging, temporary) counts.
    printf -v "${name}_bomb_bytes" '%s' \
        "$(find "$store" -path '*bomb/*' -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')"

    local verified=0 checked=0 dir
    for dir in $(find "$store/captures" -name manifest.json -printf '%h\n' 2>/dev/null | head -n "$VERIFY"); do
        checked=$((checked + 1))
        if "$COLLECTOR" verify "$dir" >/dev/null 2>&1; then verified=$((verified + 1)); fi
    done
    printf -v "${name}_verified" '%s' "$verified"
    printf -v "${name}_checked" '%s' "$checked"
    rm -rf "$store"
}

run plain 0
ok=0
[ "$plain_errors" = 0 ] && [ "$plain_manifests" = "$plain_captures" ] &&
    [ "$plain_verified" = "$plain_checked" ] || ok=1
row=$(printf '| %d agents x %d artifacts | %d/%d committed, %d errors, %d manifests stored, %d/%d verified | %.1f captures/s | %.2f MB/s | p50 %.1f s, p99 %.1f s | %d%% of a core | %d MB |' \
    "$AGENTS" "$ARTIFACTS" "$plain_captures" "$AGENTS" "$plain_errors" "$plain_manifests" \
    "$plain_verified" "$plain_checked" "$plain_captures_per_s" "$plain_mb_per_s" \
    "$plain_p50_s" "$plain_p99_s" "$plain_cpu" "$plain_rss")

if [ "$BOMBERS" -gt 0 ]; then
    run bombed "$BOMBERS"
    [ "$bombed_errors" = 0 ] && [ "$bombed_manifests" = "$bombed_captures" ] &&
        [ "$bombed_verified" = "$bombed_checked" ] && [ "$bombed_bombs_refused" -gt 0 ] &&
        [ "$bombed_bombs_acknowledged" = 0 ] && [ "$bombed_bomb_bytes" = 0 ] || ok=1
    row+=$(printf ' %d bombers x %d streams: %d/%d committed, %d errors, %d/%d verified | %.1f captures/s | **%.2fx** | %d bombs refused (%s), %d acknowledged, %d bytes stored, %d bomber errors | %d%% of a core, %d MB |' \
        "$BOMBERS" "$BOMB_STREAMS" "$bombed_captures" "$AGENTS" "$bombed_errors" \
        "$bombed_verified" "$bombed_checked" "$bombed_captures_per_s" \
        "$(awk -v a="$bombed_captures_per_s" -v b="$plain_captures_per_s" 'BEGIN { printf "%.4f", (b > 0) ? a / b : 0 }')" \
        "$bombed_bombs_refused" "${bombed_bombs_refused_codes:-none}" "$bombed_bombs_acknowledged" \
        "$bombed_bomb_bytes" "$bombed_bomber_errors" "$bombed_cpu" "$bombed_rss")
    row+=" load ${plain_load} / ${bombed_load} |"
else
    row+=" - | - | - | - | - | load ${plain_load} |"
fi
printf '%s\n' "$row"
exit "$ok"
