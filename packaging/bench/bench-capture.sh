#!/usr/bin/env bash
# Benchmark of `ircap-agent capture` against the raw tools a responder would
# otherwise run (ps + ss + cat of every /proc/PID/maps) and against psutil
# (how GRR's client reads processes), on a host loaded with N extra sleeping
# processes. Everything runs in one go on the same machine.
#
#   sudo bash packaging/bench/bench-capture.sh          # from the repo root
#
# Stdout: a Markdown table (and nothing else). Progress: stderr.
#
# Environment:
#   BENCH_PROCS=1000     extra `sleep` processes planted for the run
#   BENCH_RUNS=5         timed repetitions of each command (interleaved)
#   BENCH_WARMUP=1       untimed runs of each command first (warm caches)
#   BENCH_RSS_RUNS=3     runs under /usr/bin/time -v per command (max kept)
#   BENCH_OUT=FILE       also write the results as JSON there
#   BENCH_VENV=DIR       venv for psutil (default ~/.cache/ircap-bench/venv,
#                        reused across runs)
#   BENCH_TMPDIR=DIR     parent of the scratch directory (default
#                        ~/.cache/ircap-bench). Deliberately not /tmp: the
#                        agent walks and hashes /tmp, /var/tmp, /dev/shm and
#                        /run/user, so scratch files there (including its own
#                        output) would be measured too.
#   BENCH_PSUTIL_SPEC    pip requirement for psutil (default: psutil)
#   BENCH_AGENT_ARGS     extra agent arguments (word-split), e.g.
#                        "--no-lower-priority"
#   BENCH_SKIP_BUILD=1   use the existing target/release/ircap-agent
#   BENCH_STRICT=1       exit 3 when a target is missed
#   BENCH_SLEEP_SECS     lifetime of planted processes (default 3600). They are
#                        killed by the EXIT/INT/TERM trap and, where util-linux
#                        setpriv is present, also get SIGKILL from the kernel
#                        the moment this script dies (parent-death signal), so
#                        even a SIGKILLed run leaves nothing behind.
#
#   BENCH_SIZES="1000 5000 20000"
#                        run the whole benchmark once per size (BENCH_PROCS
#                        set to each), the tables one after the other
#   BENCH_AGENT_BIN=PATH agent binary to measure (default
#                        target/release/ircap-agent; e.g. the static
#                        target/x86_64-unknown-linux-musl/dist/ircap-agent,
#                        which implies BENCH_SKIP_BUILD=1)
#   BENCH_TARGET_RATIO   agent/raw-baseline median ratio to meet (default 2;
#                        1.2 for the triage profile)
#
# Targets: agent capture within BENCH_TARGET_RATIO of the raw baseline
# (median), agent peak RSS under 25 MiB.
#
# The scale benchmark of the README (triage profile against ps/ss/maps and
# psutil at three sizes):
#   BENCH_SIZES="1000 5000 20000" BENCH_AGENT_ARGS="--profile triage" \
#   BENCH_TARGET_RATIO=1.2 BENCH_RUNS=3 BENCH_RSS_RUNS=1 \
#   BENCH_AGENT_BIN=target/x86_64-unknown-linux-musl/dist/ircap-agent \
#   bash packaging/bench/bench-capture.sh
set -euo pipefail

if [[ -n ${BENCH_SIZES:-} ]]; then
    sizes_rc=0
    for size in $BENCH_SIZES; do
        [[ $size =~ ^[0-9]+$ ]] || { echo "BENCH_SIZES: '$size' is not a number" >&2; exit 1; }
        BENCH_SIZES='' BENCH_PROCS=$size bash "${BASH_SOURCE[0]}" || sizes_rc=$?
        echo
    done
    exit "$sizes_rc"
fi

BENCH_PROCS=${BENCH_PROCS:-1000}
BENCH_RUNS=${BENCH_RUNS:-5}
BENCH_WARMUP=${BENCH_WARMUP:-1}
BENCH_RSS_RUNS=${BENCH_RSS_RUNS:-3}
BENCH_OUT=${BENCH_OUT:-}
BENCH_VENV=${BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ircap-bench/venv}
BENCH_TMPDIR=${BENCH_TMPDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ircap-bench}
BENCH_PSUTIL_SPEC=${BENCH_PSUTIL_SPEC:-psutil}
BENCH_AGENT_ARGS=${BENCH_AGENT_ARGS:-}
BENCH_SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_SLEEP_SECS=${BENCH_SLEEP_SECS:-3600}

TARGET_RATIO=${BENCH_TARGET_RATIO:-2}
TARGET_RSS_MIB=25

# The raw baseline, verbatim.
BASELINE_CMD='ps -eo pid,ppid,user,lstart,args >/dev/null; ss -tanupe >/dev/null; cat /proc/[0-9]*/maps >/dev/null 2>&1'

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

for var in BENCH_PROCS BENCH_RUNS BENCH_WARMUP BENCH_RSS_RUNS BENCH_SLEEP_SECS; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer (got '${!var}')"
done
((BENCH_RUNS >= 1)) || die "BENCH_RUNS must be at least 1"
((BENCH_RSS_RUNS >= 1)) || die "BENCH_RSS_RUNS must be at least 1"

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
cd "$repo_root"
agent_bin=${BENCH_AGENT_BIN:-$repo_root/target/release/ircap-agent}
[[ $agent_bin == /* ]] || agent_bin=$repo_root/$agent_bin
[[ -z ${BENCH_AGENT_BIN:-} ]] || BENCH_SKIP_BUILD=1
read -r -a agent_extra <<<"$BENCH_AGENT_ARGS" || true

# --- preflight -------------------------------------------------------------
[[ $EUID -eq 0 ]] || die "run as root (e.g. sudo -E bash $0): the agent and both baselines must see every process"
missing=()
for tool in ps ss python3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (Debian: apt-get install procps iproute2 python3 python3-venv)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is missing: apt-get install time"
if [[ $BENCH_SKIP_BUILD != 1 ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (or set BENCH_SKIP_BUILD=1)"
fi
nproc_limit=$(ulimit -u)
if [[ $nproc_limit != unlimited ]] && ((nproc_limit < BENCH_PROCS + 200)); then
    die "ulimit -u is $nproc_limit, too low to plant $BENCH_PROCS processes"
fi

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

# --- scratch space and the planted processes, always cleaned up ---------------
mkdir -p "$BENCH_TMPDIR"
# Scratch of earlier runs that were SIGKILLed (run.<pid>.*, pid gone).
for stale in "$BENCH_TMPDIR"/run.*.*; do
    [[ -d $stale ]] || continue
    stale_pid=${stale##*/run.}
    stale_pid=${stale_pid%%.*}
    [[ $stale_pid =~ ^[0-9]+$ ]] && ! kill -0 "$stale_pid" 2>/dev/null && rm -rf "$stale"
done
TMP=$(mktemp -d "$BENCH_TMPDIR/run.$$.XXXXXX")
planted=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#planted[@]} > 0)); then
        log "Killing ${#planted[@]} planted processes"
        kill "${planted[@]}" 2>/dev/null || true
        wait "${planted[@]}" 2>/dev/null || true
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
    log "Building: cargo build --release -p ircap-agent"
    build_t0=$SECONDS
    cargo build --release -p ircap-agent >&2
    log "Build done in $((SECONDS - build_t0)) s"
fi
[[ -x $agent_bin ]] || die "$agent_bin not found"
binary_bytes=$(stat -c %s "$agent_bin")
git_rev=$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$repo_root" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    git_rev+="-dirty"
fi
log "Binary: $agent_bin, $binary_bytes bytes (tree $git_rev)"

# --- psutil venv ------------------------------------------------------------
venv_py=$BENCH_VENV/bin/python
if ! [[ -x $venv_py ]] || ! "$venv_py" -c 'import psutil' 2>/dev/null; then
    log "Preparing the psutil venv in $BENCH_VENV"
    mkdir -p "$(dirname "$BENCH_VENV")"
    python3 -m venv "$BENCH_VENV" >&2 ||
        die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv_py" -m pip install --quiet --disable-pip-version-check "$BENCH_PSUTIL_SPEC" >&2
fi
psutil_version=$("$venv_py" -c 'import psutil; print(psutil.__version__)')
log "psutil $psutil_version in $BENCH_VENV ($("$venv_py" -c 'import sys; print(sys.version.split()[0])'))"

# --- 2. plant the processes ---------------------------------------------------
count_procs() {
    local p
    shopt -s nullglob
    p=(/proc/[0-9]*)
    shopt -u nullglob
    REPLY=${#p[@]}
}
count_procs
procs_before_plant=$REPLY
# The kernel kills them when this shell dies, however it dies.
plant_cmd=(sleep "$BENCH_SLEEP_SECS")
if setpriv --pdeathsig KILL -- true 2>/dev/null; then
    plant_cmd=(setpriv --pdeathsig KILL -- sleep "$BENCH_SLEEP_SECS")
fi
log "Planting $BENCH_PROCS sleeping processes (host has $procs_before_plant)"
for ((i = 0; i < BENCH_PROCS; i++)); do
    # Own stdio, so a pipe on this script's output is not held open by them.
    "${plant_cmd[@]}" </dev/null >/dev/null 2>&1 &
    planted+=("$!")
done
alive_planted() {
    local n=0 pid
    for pid in "${planted[@]}"; do
        kill -0 "$pid" 2>/dev/null && n=$((n + 1))
    done
    REPLY=$n
}
alive_planted
((REPLY == BENCH_PROCS)) || die "only $REPLY of $BENCH_PROCS planted processes are alive"

# --- 3. the three commands ------------------------------------------------------
ELAPSED_US=0
run_agent() { # $1: file for the JSON summary
    rm -rf "$TMP/out"
    local rc=0 t0
    stamp_us
    t0=$REPLY
    "$agent_bin" capture --output "$TMP/out" --no-logs --no-imds "${agent_extra[@]}" \
        >"$1" 2>"$TMP/agent.stderr" || rc=$?
    stamp_us
    ELAPSED_US=$((REPLY - t0))
    if ((rc != 0)); then
        tail -n 20 "$TMP/agent.stderr" >&2
        die "the agent exited with $rc"
    fi
    rm -rf "$TMP/out"
}
run_baseline() {
    local t0
    stamp_us
    t0=$REPLY
    # cat fails on unreadable maps (vanished or protected processes): ignored.
    sh -c "$BASELINE_CMD" || true
    stamp_us
    ELAPSED_US=$((REPLY - t0))
}
run_psutil() { # $1: file for its JSON counts
    local rc=0 t0
    stamp_us
    t0=$REPLY
    "$venv_py" "$script_dir/psutil_baseline.py" >"$1" 2>"$TMP/psutil.stderr" || rc=$?
    stamp_us
    ELAPSED_US=$((REPLY - t0))
    if ((rc != 0)); then
        tail -n 20 "$TMP/psutil.stderr" >&2
        die "the psutil script exited with $rc"
    fi
}

if ((BENCH_WARMUP > 0)); then
    log "Warm-up: $BENCH_WARMUP untimed run(s) of each command"
    for ((i = 0; i < BENCH_WARMUP; i++)); do
        run_agent "$TMP/agent-warmup.json"
        run_baseline
        run_psutil "$TMP/psutil-warmup.json"
    done
fi

read -r load_before _ </proc/loadavg
count_procs
procs_during_min=$REPLY
procs_during_max=$REPLY
agent_us=()
baseline_us=()
psutil_us=()
names=(agent baseline psutil)
log "Timing: $BENCH_RUNS interleaved runs of each (clock: $clock_source, load average $load_before)"
for ((run = 1; run <= BENCH_RUNS; run++)); do
    # Rotate the order so no command always follows the same one.
    for ((k = 0; k < 3; k++)); do
        which=${names[$(((run + k) % 3))]}
        case $which in
        agent)
            run_agent "$TMP/agent-$run.json"
            agent_us+=("$ELAPSED_US")
            ;;
        baseline)
            run_baseline
            baseline_us+=("$ELAPSED_US")
            ;;
        psutil)
            run_psutil "$TMP/psutil-$run.json"
            psutil_us+=("$ELAPSED_US")
            ;;
        esac
    done
    count_procs
    ((REPLY < procs_during_min)) && procs_during_min=$REPLY
    ((REPLY > procs_during_max)) && procs_during_max=$REPLY
    log "  run $run/$BENCH_RUNS: agent $((agent_us[-1] / 1000)) ms, baseline $((baseline_us[-1] / 1000)) ms, psutil $((psutil_us[-1] / 1000)) ms"
done
read -r load_after _ </proc/loadavg

# --- 4. peak RSS --------------------------------------------------------------
max_rss_kib() { # command...; prints nothing, sets REPLY to the max over BENCH_RSS_RUNS
    local best=0 kib r
    for ((r = 0; r < BENCH_RSS_RUNS; r++)); do
        rm -rf "$TMP/out"
        /usr/bin/time -v -o "$TMP/time-v.txt" "$@" >/dev/null 2>"$TMP/rss.stderr" || true
        kib=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): *\([0-9]*\).*/\1/p' "$TMP/time-v.txt")
        [[ -n $kib ]] || die "no 'Maximum resident set size' from /usr/bin/time -v: $(cat "$TMP/time-v.txt")"
        ((kib > best)) && best=$kib
    done
    rm -rf "$TMP/out"
    REPLY=$best
}
log "Peak RSS: $BENCH_RSS_RUNS run(s) of each under /usr/bin/time -v"
max_rss_kib "$agent_bin" capture --output "$TMP/out" --no-logs --no-imds "${agent_extra[@]}"
agent_rss_kib=$REPLY
max_rss_kib sh -c "$BASELINE_CMD"
baseline_rss_kib=$REPLY
max_rss_kib "$venv_py" "$script_dir/psutil_baseline.py"
psutil_rss_kib=$REPLY

# --- where the agent's time goes: one more run with --log debug; the artifact
# files' mtimes (written one after another) give the per-collector split.
log "Phase breakdown: one --log debug run"
rm -rf "$TMP/out"
stamp_us
phase_t0=$REPLY
"$agent_bin" --log debug capture --output "$TMP/out" --no-logs --no-imds "${agent_extra[@]}" \
    >"$TMP/phase.json" 2>"$TMP/phase.log" || die "the --log debug agent run failed"
stamp_us
phase_t1=$REPLY
stat -c '%.9Y %n' "$TMP"/out/*/* >"$TMP/phase.mtimes"
rm -rf "$TMP/out"

# What the agent's volatile_files collector walks, as it stands now.
volatile_entries=0
for d in /tmp /var/tmp /dev/shm /run/user; do
    [[ -d $d ]] || continue
    n=$(find "$d" -xdev 2>/dev/null | wc -l) || true
    volatile_entries=$((volatile_entries + n))
done

alive_planted
planted_alive_end=$REPLY
((planted_alive_end == BENCH_PROCS)) || log "WARNING: only $planted_alive_end of $BENCH_PROCS planted processes survived the run"

# --- 5. report ------------------------------------------------------------------
log "Whole script so far: $((SECONDS - script_t0)) s"
export R_AGENT_US="${agent_us[*]}" R_BASELINE_US="${baseline_us[*]}" R_PSUTIL_US="${psutil_us[*]}"
export R_AGENT_RSS_KIB=$agent_rss_kib R_BASELINE_RSS_KIB=$baseline_rss_kib R_PSUTIL_RSS_KIB=$psutil_rss_kib
export R_BINARY_BYTES=$binary_bytes R_GIT_REV=$git_rev R_PSUTIL_VERSION=$psutil_version
export R_PROCS_PLANTED=$BENCH_PROCS R_PROCS_BEFORE_PLANT=$procs_before_plant
export R_PROCS_MIN=$procs_during_min R_PROCS_MAX=$procs_during_max R_PLANTED_ALIVE=$planted_alive_end
export R_RUNS=$BENCH_RUNS R_WARMUP=$BENCH_WARMUP R_RSS_RUNS=$BENCH_RSS_RUNS
export R_LOAD_BEFORE=$load_before R_LOAD_AFTER=$load_after R_CLOCK=$clock_source
export R_BASELINE_CMD=$BASELINE_CMD R_AGENT_ARGS=$BENCH_AGENT_ARGS
export R_TMP=$TMP R_TARGET_RATIO=$TARGET_RATIO R_TARGET_RSS_MIB=$TARGET_RSS_MIB
export R_ELAPSED_S=$((SECONDS - script_t0)) BENCH_OUT
export R_PHASE_T0_US=$phase_t0 R_PHASE_T1_US=$phase_t1 R_VOLATILE_ENTRIES=$volatile_entries
rc=0
python3 - <<'PY' || rc=$?
import json, os, platform, statistics, sys

env = os.environ
MIB = 1024 * 1024

def samples(name):
    return [int(x) / 1000.0 for x in env[name].split()]

def load_json(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

runs = int(env["R_RUNS"])
agent_summaries = [s for s in (load_json(f"{env['R_TMP']}/agent-{i}.json") for i in range(1, runs + 1)) if s]
psutil_counts = [s for s in (load_json(f"{env['R_TMP']}/psutil-{i}.json") for i in range(1, runs + 1)) if s]
last_agent = agent_summaries[-1] if agent_summaries else {}
last_psutil = psutil_counts[-1] if psutil_counts else {}
records = last_agent.get("records", {})

def phases():
    """Per-collector split of the --log debug run, in ms from exec."""
    import datetime
    t0 = int(env["R_PHASE_T0_US"]) / 1e6
    t1 = int(env["R_PHASE_T1_US"]) / 1e6
    marks = {}
    try:
        for line in open(f"{env['R_TMP']}/phase.log", errors="replace"):
            stamp = line.split(" ", 1)[0]
            for key, text in (("started", "Capture started"), ("sockets", "Read socket tables"), ("scan", "Read processes")):
                if text in line and key not in marks:
                    ts = datetime.datetime.strptime(stamp.rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f")
                    marks[key] = ts.replace(tzinfo=datetime.timezone.utc).timestamp()
        files = []
        for line in open(f"{env['R_TMP']}/phase.mtimes"):
            mtime, path = line.rstrip("\n").split(" ", 1)
            files.append((float(mtime), os.path.basename(path)))
    except (OSError, ValueError):
        return None
    if not {"started", "sockets", "scan"} <= marks.keys() or not files:
        return None
    group_of = {
        "connections": "write connections", "processes": "write processes",
        "memory_maps": "memory_maps (read every maps file + gzip)",
        "network_interfaces": "network_state", "network_routes": "network_state",
        "network_neighbors": "network_state", "listening_sockets": "network_state",
        "network_config": "network_state", "logins": "users", "lastlog": "users",
        "kernel": "kernel", "kernel_modules": "kernel", "mounts": "kernel",
        "volatile_files": "volatile_files (walk + hash /tmp, /var/tmp, /dev/shm, /run/user)",
        "system": "system", "manifest": "manifest",
    }
    # The agent's write order (capture.rs): breaks ties between files closed
    # within one tick of the coarse file-time clock.
    order = list(group_of)
    out = [("exec + startup", marks["started"] - t0),
           ("socket tables", marks["sockets"] - marks["started"]),
           ("process scan (/proc/PID/*, fds, exe hashes)", marks["scan"] - marks["sockets"])]
    prev = marks["scan"]
    def key(item):
        stem = item[1].split(".", 1)[0]
        return (item[0], order.index(stem) if stem in order else len(order))
    for mtime, name in sorted(files, key=key):
        group = group_of.get(name.split(".", 1)[0], name)
        delta = max(0.0, mtime - prev)
        prev = max(prev, mtime)
        if out and out[-1][0] == group:
            out[-1] = (group, out[-1][1] + delta)
        else:
            out.append((group, delta))
    out.append(("commit (fsync + rename) + exit", max(0.0, t1 - prev)))
    return {"total_ms": round((t1 - t0) * 1000, 1),
            "phases_ms": {k: round(v * 1000, 1) for k, v in out}}

phase = phases()

timings = {
    "agent": samples("R_AGENT_US"),
    "raw baseline": samples("R_BASELINE_US"),
    "psutil": samples("R_PSUTIL_US"),
}
rss_kib = {
    "agent": int(env["R_AGENT_RSS_KIB"]),
    "raw baseline": int(env["R_BASELINE_RSS_KIB"]),
    "psutil": int(env["R_PSUTIL_RSS_KIB"]),
}
base_median = statistics.median(timings["raw baseline"])
rows = {}
for name, xs in timings.items():
    med = statistics.median(xs)
    rows[name] = {
        "median_ms": round(med, 1),
        "min_ms": round(min(xs), 1),
        "max_ms": round(max(xs), 1),
        "ratio_vs_raw_baseline": round(med / base_median, 2) if base_median else None,
        "samples_ms": [round(x, 2) for x in xs],
        "peak_rss_mib": round(rss_kib[name] / 1024, 1),
    }

ratio = rows["agent"]["ratio_vs_raw_baseline"]
agent_rss_mib = rss_kib["agent"] / 1024
binary_bytes = int(env["R_BINARY_BYTES"])
ratio_ok = ratio is not None and ratio <= float(env["R_TARGET_RATIO"])
rss_ok = agent_rss_mib < float(env["R_TARGET_RSS_MIB"])
agent_internal = [s.get("duration_ms") for s in agent_summaries if s.get("duration_ms") is not None]
spread = {n: (r["max_ms"] - r["min_ms"]) / r["median_ms"] if r["median_ms"] else 0 for n, r in rows.items()}
noisy = [n for n, s in spread.items() if s > 0.25]

out = []
out.append(f"## ircap-agent capture benchmark ({platform.node()}, {os.cpu_count()} CPUs, tree {env['R_GIT_REV']})")
out.append("")
out.append(f"{runs} timed runs each, interleaved, after {env['R_WARMUP']} warm-up run(s); wall clock of the whole command as a subprocess; {env['R_PROCS_PLANTED']} extra `sleep` processes planted.")
out.append("")
out.append("| command | median ms | min ms | max ms | ratio vs raw baseline | peak RSS MiB |")
out.append("|---|---:|---:|---:|---:|---:|")
for name, r in rows.items():
    out.append(f"| {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} | {r['ratio_vs_raw_baseline']:.2f}x | {r['peak_rss_mib']:.1f} |")
out.append("")
out.append("- agent: `target/release/ircap-agent capture --output $TMP/out --no-logs --no-imds" + (" " + env["R_AGENT_ARGS"] if env["R_AGENT_ARGS"] else "") + "` (runs as root; by default it lowers itself to nice 10 and best-effort I/O level 7)")
out.append(f"- raw baseline: `sh -c '{env['R_BASELINE_CMD']}'`")
out.append("- psutil: `python psutil_baseline.py`: process_iter(pid, ppid, name, exe, cmdline, username, create_time, status) + memory_maps() each + net_connections(kind='all'); **includes Python startup and `import psutil`**")
out.append(f"- Agent peak RSS: {agent_rss_mib:.1f} MiB (max of {env['R_RSS_RUNS']} run(s) under `/usr/bin/time -v`)")
out.append(f"- Agent binary size: {binary_bytes} bytes = {binary_bytes / MIB:.2f} MiB (target/release/ircap-agent)")
out.append(f"- Processes on the host during the run: {env['R_PROCS_MIN']}–{env['R_PROCS_MAX']} (/proc/[0-9]*; {env['R_PROCS_BEFORE_PLANT']} before planting + {env['R_PROCS_PLANTED']} planted)")
out.append(
    f"- Agent records (last run): processes {records.get('processes', '?')}, connections {records.get('connections', '?')}, "
    f"memory_maps {records.get('memory_maps', '?')}; errors {last_agent.get('error_count', '?')} "
    f"{json.dumps(last_agent.get('errors_by_artifact', {}))}"
)
if agent_internal:
    out.append(f"- Agent's own duration_ms (median of runs): {statistics.median(agent_internal)}")
if last_psutil:
    out.append(
        f"- psutil {env['R_PSUTIL_VERSION']} saw: processes {last_psutil.get('processes')}, memory_maps {last_psutil.get('memory_maps')} "
        f"(grouped by path, read from smaps; access denied {last_psutil.get('memory_maps_access_denied')}), connections {last_psutil.get('connections')}"
    )
if phase:
    out.append(f"- Agent phases in ms (one extra `--log debug` run, {phase['total_ms']:.0f} ms in all; from log stamps and artifact mtimes, ~4 ms resolution): "
               + ", ".join(f"{k} {v:.0f}" for k, v in phase["phases_ms"].items() if v >= 1))
out.append(f"- volatile_files: {records.get('volatile_files', '?')} records; {env['R_VOLATILE_ENTRIES']} entries under /tmp, /var/tmp, /dev/shm, /run/user (the agent walks and hashes these; the baselines do not)")
out.append(f"- Load average: {env['R_LOAD_BEFORE']} before timing, {env['R_LOAD_AFTER']} after" + (f"; NOISY (max-min > 25% of median): {', '.join(noisy)}" if noisy else ""))
out.append("")
out.append(f"Targets: capture within {env['R_TARGET_RATIO']}x of the raw baseline: **{'PASS' if ratio_ok else 'FAIL'}** ({ratio:.2f}x); "
           f"peak RSS under {env['R_TARGET_RSS_MIB']} MiB: **{'PASS' if rss_ok else 'FAIL'}** ({agent_rss_mib:.1f} MiB)")
print("\n".join(out))

result = {
    "host": {"hostname": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
             "load_before": float(env["R_LOAD_BEFORE"]), "load_after": float(env["R_LOAD_AFTER"])},
    "tree": env["R_GIT_REV"],
    "runs": runs, "warmup_runs": int(env["R_WARMUP"]), "rss_runs": int(env["R_RSS_RUNS"]),
    "clock": env["R_CLOCK"],
    "commands": {
        "agent": f"target/release/ircap-agent capture --output $TMP/out --no-logs --no-imds {env['R_AGENT_ARGS']}".strip(),
        "raw baseline": f"sh -c '{env['R_BASELINE_CMD']}'",
        "psutil": "python packaging/bench/psutil_baseline.py (interpreter startup included)",
    },
    "results": rows,
    "agent_peak_rss_kib": rss_kib["agent"],
    "agent_peak_rss_mib": round(agent_rss_mib, 2),
    "binary_bytes": binary_bytes,
    "binary_mib": round(binary_bytes / MIB, 2),
    "processes_on_host": {"min": int(env["R_PROCS_MIN"]), "max": int(env["R_PROCS_MAX"]),
                          "before_planting": int(env["R_PROCS_BEFORE_PLANT"]), "planted": int(env["R_PROCS_PLANTED"]),
                          "planted_alive_at_end": int(env["R_PLANTED_ALIVE"])},
    "agent_records": records,
    "agent_phases": phase,
    "volatile_dir_entries": int(env["R_VOLATILE_ENTRIES"]),
    "agent_error_count": last_agent.get("error_count"),
    "agent_errors_by_artifact": last_agent.get("errors_by_artifact"),
    "agent_internal_duration_ms": agent_internal,
    "psutil": last_psutil,
    "noisy": noisy,
    "targets": {"ratio_max": float(env["R_TARGET_RATIO"]), "ratio": ratio, "ratio_ok": ratio_ok,
                "rss_max_mib": float(env["R_TARGET_RSS_MIB"]), "rss_ok": rss_ok},
    "script_elapsed_s_before_report": int(env["R_ELAPSED_S"]),
}
if env.get("BENCH_OUT"):
    with open(env["BENCH_OUT"], "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"[bench] JSON written to {env['BENCH_OUT']}", file=sys.stderr)
sys.exit(0 if (ratio_ok and rss_ok) else 10)
PY
case $rc in
0) ;;
10)
    log "A target was missed"
    [[ $BENCH_STRICT == 1 ]] && exit 3
    ;;
*) die "the report step failed ($rc)" ;;
esac
log "Done in $((SECONDS - script_t0)) s"
