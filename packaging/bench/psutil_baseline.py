#!/usr/bin/env python3
"""psutil baseline for bench-capture.sh: the way GRR's client reads a host.

Walks every process with psutil.process_iter (pid, ppid, name, exe, cmdline,
username, create_time, status), reads each process's memory_maps(), then
psutil.net_connections(kind='all'). Prints one JSON line of counts on stdout
so the caller can compare what was seen with the agent's record counts.

The caller times the whole interpreter run (startup + `import psutil`
included), as a responder would pay it.

Note: psutil's memory_maps() (grouped=True, its default) reads
/proc/PID/smaps, which makes the kernel walk page tables for per-mapping
RSS/PSS; the agent and the raw baseline read the cheaper /proc/PID/maps.
--ungrouped keeps grouped=False (still smaps) for one record per region.
"""

import argparse
import json
import sys

import psutil

ATTRS = ["pid", "ppid", "name", "exe", "cmdline", "username", "create_time", "status"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ungrouped",
        action="store_true",
        help="memory_maps(grouped=False): one entry per region instead of per path",
    )
    args = parser.parse_args()

    processes = 0
    maps = 0
    maps_denied = 0
    maps_gone = 0
    for proc in psutil.process_iter(attrs=ATTRS, ad_value=None):
        processes += 1
        try:
            maps += len(proc.memory_maps(grouped=not args.ungrouped))
        except psutil.AccessDenied:
            maps_denied += 1
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            maps_gone += 1

    try:
        connections = len(psutil.net_connections(kind="all"))
        connections_error = None
    except psutil.AccessDenied as err:  # not root
        connections = 0
        connections_error = str(err)

    json.dump(
        {
            "psutil_version": psutil.__version__,
            "python": sys.version.split()[0],
            "processes": processes,
            "memory_maps": maps,
            "memory_maps_grouped": not args.ungrouped,
            "memory_maps_access_denied": maps_denied,
            "memory_maps_gone": maps_gone,
            "connections": connections,
            "connections_error": connections_error,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
