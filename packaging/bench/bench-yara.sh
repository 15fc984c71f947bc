#!/usr/bin/env bash
# Benchmark of the YARA scan: `ircap-agent capture --yara` over one process
# of BENCH_BYTES (alternating 1 MiB blocks of random bytes and log-like
# text, one canary at the end) against Debian's `yara` (libyara) scanning
# the same pid with the same rules, interleaved in one run on the same
# machine. Also the agent's peak RSS while scanning.
#
#   sudo bash packaging/bench/bench-yara.sh          # from the repo root
#
# Stdout: a Markdown table (and nothing else). Progress: stderr.
#
# Environment:
#   BENCH_BYTES=1073741824  memory touched by the target process
#   BENCH_RUNS=3         timed repetitions of each command (interleaved)
#   BENCH_TMPDIR=DIR     parent of the scratch directory (default
#                        ~/.cache/ircap-bench; not /tmp, which the agent walks)
#   BENCH_SKIP_BUILD=1   use the existing binaries
#   BENCH_BIN_DIR=DIR    where the binaries are (default target/release)
#
# Needs: root, python3, GNU time, `apt-get install yara`.
set -euo pipefail

BENCH_BYTES=${BENCH_BYTES:-1073741824}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_TMPDIR=${BENCH_TMPDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ircap-bench}
BENCH_SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
MIB=1048576

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
for tool in python3 yara awk; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool (apt-get install yara for yara)"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is missing: apt-get install time"

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
cd "$repo_root"
BENCH_BIN_DIR=${BENCH_BIN_DIR:-$repo_root/target/release}
agent_bin=$BENCH_BIN_DIR/ircap-agent

mkdir -p "$BENCH_TMPDIR"
TMP=$(mktemp -d "$BENCH_TMPDIR/yara.$$.XXXXXX")
target_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $target_pid ]] && kill "$target_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $BENCH_SKIP_BUILD != 1 ]]; then
    log "Building: cargo build --release -p ircap-agent"
    cargo build --release -p ircap-agent >&2
fi
[[ -x $agent_bin ]] || die "release agent not found at $agent_bin"

# Rules of the usual kinds: literals (ascii/wide/nocase), hex with jumps
# and wildcards, a regex, xor and base64 strings, and the canary (as hex, so
# neither this script nor the rules file holds its bytes).
cat >"$TMP/rules.yar" <<'YAR'
rule bench_canary { strings: $c = { 49 52 43 41 50 5f 42 45 4e 43 48 5f 43 41 4e 41 52 59 } condition: $c }
rule hex_jump { strings: $h = { 4D 5A ?? ?? 50 45 [2-8] 00 00 } condition: $h }
rule cobalt_like { meta: author = "bench" strings: $s1 = "beacon.dll" nocase $s2 = "%s as %s\\%s: %d" $s3 = /[a-z]{4}\.exe\/[0-9]{3}/ condition: any of them }
rule mimikatz_like { strings: $a = "mimikatz" ascii wide $b = "sekurlsa" $c = "kerberos::" $d = "lsadump" $e = "privilege::debug" condition: 2 of them }
rule xor_url { strings: $x = "http://evil.example" xor condition: $x }
rule b64_ps { strings: $b = "powershell -enc" base64 condition: $b }
YAR
mkdir -p "$TMP/empty"

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
half = bytes.fromhex("49524341505f42454e4348")
m[size - 4096:size - 4096 + 11] = half
m[size - 4096 + 11:size - 4096 + 18] = bytes.fromhex("5f43414e415259")
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
total=0
while read -r lo hi; do total=$((total + 0x$hi - 0x$lo)); done < <(awk '$2 ~ /^r/ && $6 != "[vvar]" && $6 != "[vvar_vclock]" && $6 != "[vsyscall]" {
    split($1, a, "-"); print a[1], a[2] }' "/proc/$target_pid/maps")
log "Target pid $target_pid: $total readable bytes"

agent_args=(capture --no-imds --no-lower-priority --artifacts system -o "$TMP/out"
    --memory-regions "pid=$target_pid" --skip memory_regions
    --yara "$TMP/rules.yar" --yara-dir "$TMP/empty")
declare -a agent_s yara_s agent_rss agent_scan_s
for ((run = 1; run <= BENCH_RUNS; run++)); do
    log "Run $run/$BENCH_RUNS: ircap-agent --yara"
    rm -rf "$TMP/out"
    /usr/bin/time -f '%e %M' -o "$TMP/agent.time" "$agent_bin" "${agent_args[@]}" \
        >"$TMP/agent.out" 2>"$TMP/agent.err" || {
        rc=$?
        ((rc == 4)) || die "agent failed ($rc): $(tail -n 3 "$TMP/agent.err")"
    }
    grep -q '"yara_matches":[1-9]' "$TMP/agent.out" || die "the agent did not find the canary"
    read -r s kib <"$TMP/agent.time"
    agent_s+=("$s")
    agent_rss+=("$kib")
    scan_ms=$(grep -o 'wall_ms=[0-9]*' "$TMP/agent.err" | tail -n 1 | cut -d= -f2)
    agent_scan_s+=("$(awk -v ms="$scan_ms" 'BEGIN { printf "%.3f", ms / 1000 }')")
    log "Run $run/$BENCH_RUNS: yara $target_pid"
    /usr/bin/time -f '%e %M' -o "$TMP/yara.time" yara "$TMP/rules.yar" "$target_pid" \
        >"$TMP/yara.out" 2>"$TMP/yara.err" || die "yara failed: $(tail -n 3 "$TMP/yara.err")"
    grep -q '^bench_canary ' "$TMP/yara.out" || die "yara did not find the canary"
    read -r s _ <"$TMP/yara.time"
    yara_s+=("$s")
done

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mbs() { awk -v b="$total" -v s="$1" 'BEGIN { if (s > 0) printf "%.0f", b / 1048576 / s; else print "-" }'; }
a=$(median "${agent_s[@]}")
as=$(median "${agent_scan_s[@]}")
y=$(median "${yara_s[@]}")
r=$(median "${agent_rss[@]}")
echo "| command ($((total / MIB)) MiB process, median of $BENCH_RUNS) | wall s | MB/s |"
echo "|---|---:|---:|"
echo "| ircap-agent capture --yara (whole capture) | $a | $(mbs "$a") |"
echo "| ircap-agent: the scan step alone | $as | $(mbs "$as") |"
echo "| yara RULES PID (libyara $(yara --version)) | $y | $(mbs "$y") |"
echo
echo "Agent peak RSS: $((r / 1024)) MiB."
