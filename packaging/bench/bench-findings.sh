#!/usr/bin/env bash
# Benchmark of `ircap-collector findings` over a synthetic capture of a big
# host: BENCH_PROCS processes (default 5,000), 40 memory regions each, two
# sockets each, 2,000 volatile files and 5,000 login records, with a few
# planted indicators so every rule has work. The capture is generated once
# into a scratch directory (not /tmp), then timed BENCH_RUNS times.
#
#   bash packaging/bench/bench-findings.sh          # from the repo root
#
# Stdout: one Markdown table row (and nothing else). Progress: stderr.
#
# Environment:
#   BENCH_PROCS=5000     processes in the synthetic capture
#   BENCH_RUNS=5         timed runs (the median is reported)
#   BENCH_BIN=PATH       the collector binary (default target/release/ircap-collector,
#                        built when missing)
#   BENCH_TMPDIR=DIR     parent of the scratch directory (default ~/.cache/ircap-bench)
#   BENCH_STRICT=1       exit 3 when the median is over 1 s
set -euo pipefail
cd "$(dirname "$0")/../.."

BENCH_PROCS=${BENCH_PROCS:-5000}
BENCH_RUNS=${BENCH_RUNS:-5}
BIN=${BENCH_BIN:-target/release/ircap-collector}
if [ ! -x "$BIN" ]; then
    echo "building $BIN" >&2
    cargo build --release -p ircap-collector >&2
fi
base=${BENCH_TMPDIR:-$HOME/.cache/ircap-bench}
mkdir -p "$base"
scratch=$(mktemp -d "$base/findings.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cap="$scratch/0190aaaa-bench"
mkdir -p "$cap"

echo "generating a capture of $BENCH_PROCS processes in $cap" >&2
python3 - "$cap" "$BENCH_PROCS" <<'PY'
import gzip, hashlib, json, os, sys
cap, n = sys.argv[1], int(sys.argv[2])
NS = 4026531840
def table(name, rows):
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    gz = gzip.compress(raw, 1)
    with open(os.path.join(cap, name + ".jsonl.gz"), "wb") as f:
        f.write(gz)
    return {"name": name + ".jsonl.gz", "kind": name, "content_type": "application/x-ndjson",
            "encoding": "gzip", "size_stored": len(gz), "size_uncompressed": len(raw),
            "sha256_stored": hashlib.sha256(gz).hexdigest(), "sha256_uncompressed": hashlib.sha256(raw).hexdigest(),
            "started_at": "2026-12-01T10:00:00Z", "ended_at": "2026-12-01T10:00:01Z",
            "record_count": len(rows), "error_count": 0, "errors": []}
procs, maps, conns = [], [], []
for pid in range(1, n + 1):
    exe = "/usr/sbin/worker" if pid % 500 else "/dev/shm/.x"
    procs.append({"pid": pid, "ppid": max(1, pid // 2), "comm": f"worker{pid}", "exe": exe,
                  "exe_deleted": pid % 997 == 0, "exe_sha256": "ab" * 32, "argv": [exe, "--serve", str(pid)],
                  "environ": [{"name": f"VAR{i}", "value": None} for i in range(30)]
                             + ([{"name": "LD_PRELOAD", "value": "/tmp/x.so"}] if pid % 1999 == 0 else []),
                  "uid": 33, "euid": 33, "user": "www-data", "start_ticks": 1000 + pid,
                  "namespaces": {"net": NS, "mnt": 4026531841, "pid": 4026531836},
                  "cap_effective_names": [], "tracer_pid": 0, "kernel_thread": False, "is_agent": False,
                  "open_files": [{"fd": i, "kind": "file", "target": f"/var/lib/app/{i}", "deleted": False} for i in range(20)]})
    for r in range(40):
        rwx = pid % 250 == 0 and r == 0
        maps.append({"pid": pid, "comm": f"worker{pid}", "start": f"{0x7f0000000000 + r * 4096:x}",
                     "end": f"{0x7f0000001000 + r * 4096:x}", "size": 4096, "perms": "rwxp" if rwx else "r-xp",
                     "offset": 0, "device": "fd:01", "inode": 0 if rwx else 1234, "path": None if rwx else "/usr/lib/libc.so.6",
                     "anonymous": rwx, "kernel_provided": False, "anon_exec": rwx, "write_exec": rwx,
                     "deleted_backed": False, "suspicious": rwx})
    conns.append({"netns": NS, "protocol": "tcp", "local_address": "10.0.0.1", "local_port": 10000 + pid % 50000,
                  "remote_address": f"10.1.{pid % 250}.{pid % 200}", "remote_port": 443, "state": "ESTABLISHED",
                  "uid": 33, "inode": pid, "pids": [pid], "process_names": [f"worker{pid}"]})
    if pid % 100 == 0:
        conns.append({"netns": NS, "protocol": "tcp", "local_address": "0.0.0.0", "local_port": 20000 + pid,
                      "state": "LISTEN", "uid": 1000 if pid % 1000 == 0 else 0, "inode": 10**6 + pid,
                      "pids": [pid], "process_names": [f"worker{pid}"]})
files = [{"path": f"/tmp/f{i}", "file_type": "file", "size": 10, "mode": "4755" if i == 7 else "0644",
          "setuid": i == 7, "uid": 0, "is_elf": i % 300 == 0} for i in range(2000)]
logins = [{"source": "btmp", "file": "/var/log/btmp", "type": "LOGIN_PROCESS", "user": "root",
           "host": f"203.0.113.{i % 40}", "time": f"2026-12-01T09:{(i // 100) % 60:02}:{i % 60:02}Z", "line": "ssh:notty"}
          for i in range(5000)]
arts = [table("processes", procs), table("memory_maps", maps), table("connections", conns),
        table("volatile_files", files), table("logins", logins),
        table("kernel", [{"tainted": 4096, "taint_letters": "O", "taint_flags": ["out-of-tree module"]}]),
        table("kernel_modules", [{"name": f"m{i}", "in_proc_modules": True, "in_sys_module": i != 3} for i in range(150)])]
manifest = {"format_version": 1, "capture_id": "0190aaaa-bench", "started_at": "2026-12-01T10:00:00Z",
            "ended_at": "2026-12-01T10:00:05Z", "status": "complete",
            "host": {"hostname": "bench", "kernel_release": "6.1"},
            "agent": {"version": "bench", "pid": 0, "uid": 0, "lowered_priority": True},
            "options": {}, "ssm_command_id": None, "artifacts": arts, "error_count": 0, "errors": []}
with open(os.path.join(cap, "manifest.json"), "w") as f:
    json.dump(manifest, f)
PY
du -sh "$cap" >&2

times=()
for i in $(seq "$BENCH_RUNS"); do
    start=$(date +%s%N)
    "$BIN" --log warn findings "$cap" --json > "$scratch/findings.out"
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000000 )))
    echo "run $i: ${times[-1]} ms, $(wc -l < "$scratch/findings.out") findings" >&2
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (BENCH_RUNS + 1) / 2 ))p")
echo "| findings over $BENCH_PROCS processes, $((BENCH_PROCS * 40)) regions | ${median} ms median of $BENCH_RUNS | $(wc -l < "$scratch/findings.out") findings |"
if [ "${BENCH_STRICT:-0}" = 1 ] && [ "$median" -gt 1000 ]; then
    exit 3
fi
