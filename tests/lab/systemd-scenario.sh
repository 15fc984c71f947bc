#!/bin/sh
# The systemd lab scenario (tests/tests/e2e/lab_systemd.rs). Runs as root in a
# Debian 12 guest booted with systemd as PID 1 (ircap-lab.service, see
# tests/src/lab_debian.rs), no network but loopback. Inputs in /lab/in (the
# agent's .deb, the collector binary, unit, config, the SSM script), results
# in /lab/out: one log per step, `steps` ("name rc" lines), `values`
# ("key value" lines) and results.json built from both at the end. The test
# on the host asserts on them; this script only records.
set -u
IN=/lab/in
OUT=/lab/out
: >"$OUT/steps"
: >"$OUT/values"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# step NAME CMD...: runs CMD with its output in $OUT/NAME.log, records rc.
step() {
    name=$1
    shift
    "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name $rc" >>"$OUT/steps"
    echo "lab: step $name -> $rc"
    return $rc
}
value() { echo "$1 $2" >>"$OUT/values"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

PKI=/etc/ircap/pki
analyst() {
    cmd=$1
    shift
    ircap-collector "$cmd" --server https://127.0.0.1:7443 --ca $PKI/ca.pem \
        --cert $PKI/alice.pem --key $PKI/alice.key "$@"
}
# wait_for SECONDS CMD...: polls CMD every 0.5 s until it succeeds.
wait_for() {
    n=$(($1 * 2))
    shift
    while [ "$n" -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
        n=$((n - 1))
    done
    return 1
}
captures() { ls /var/lib/ircap/captures/labhost 2>/dev/null; }
# keep_new NAME: copies the capture directories not seen before to $OUT/NAME/.
SEEN=""
keep_new() {
    mkdir -p "$OUT/$1"
    for c in $(captures); do
        case " $SEEN " in *" $c "*) continue ;; esac
        cp -r "/var/lib/ircap/captures/labhost/$c" "$OUT/$1/"
        SEEN="$SEEN $c"
    done
}
# verify_dir NAME: `ircap-collector verify` of every capture in $OUT/NAME.
verify_dir() {
    for d in "$OUT/$1"/*/; do ircap-collector verify "$d" || return 1; done
}
agent_connected() { analyst agents --json | grep -q '"labhost"'; }
# Uploads under way or interrupted: the file store's staging directories.
staged() { ls /var/lib/ircap/staging 2>/dev/null | wc -l; }
more_staged() { [ "$(staged)" -gt "$1" ]; }

value boot_uptime "$(uptime_s)"
step boot systemctl is-system-running --wait
value debian "$(cat /etc/debian_version)"
value systemd "$(systemctl --version | head -1 | tr ' ' '_')"
value kernel "$(uname -r)"

# --- 1. the agent's .deb, the collector as the README installs it ---------
step deb_install dpkg -i $IN/ircap-agent.deb
install_collector() {
    install -D -m 0755 $IN/ircap-collector /usr/bin/ircap-collector &&
        install -d -m 0750 /etc/ircap &&
        install -m 0640 $IN/collector.toml /etc/ircap/collector.toml &&
        ircap-collector pki init --out $PKI --agent labhost --analyst alice --server-name collector.internal &&
        install -m 0644 $PKI/ca.pem $PKI/server.pem /etc/ircap/ &&
        install -m 0600 $PKI/server.key /etc/ircap/ &&
        install -m 0644 $IN/ircap-collector.service /etc/systemd/system/ &&
        systemctl daemon-reload && systemctl enable --now ircap-collector.service
}
step collector_install install_collector
# The agent's identity, as the README's first-boot user data writes it.
provision_agent() {
    (umask 077 && cp $PKI/labhost.pem /etc/ircap/agent.pem && cp $PKI/labhost.key /etc/ircap/agent.key) &&
        sed -i 's|^# collector = .*|collector = "https://127.0.0.1:7443"|' /etc/ircap/agent.toml &&
        systemctl enable ircap-agent.service && systemctl start ircap-agent.service
}
step agent_start provision_agent
step agent_connected wait_for 60 agent_connected
for u in ircap-agent ircap-collector; do
    systemctl show -p ActiveState -p SubState -p MainPID -p MemoryMax -p NRestarts $u.service >"$OUT/$u.show"
    systemd-analyze security --no-pager $u.service >"$OUT/security-$u.txt" 2>&1
    value "security_$u" "$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$OUT/security-$u.txt")"
done

# --- 2. activity to find --------------------------------------------------
activity() {
    useradd -m -s /bin/sh webadmin || return 1
    mkdir -p /root/.ssh
    ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/lab_key || return 1
    install -d -m 0700 -o webadmin -g webadmin /home/webadmin/.ssh
    install -m 0600 -o webadmin -g webadmin /root/.ssh/lab_key.pub /home/webadmin/.ssh/authorized_keys
    opts="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    # A key login that stays open during the captures (utmp, wtmp, lastlog:
    # sshd records only sessions with a terminal, hence -tt).
    ssh -tt $opts -o BatchMode=yes -i /root/.ssh/lab_key webadmin@127.0.0.1 'echo logged-in; exec sleep 1800' \
        </dev/null >"$OUT/ssh-session.out" 2>&1 &
    echo $! >/run/lab-ssh.pid
    wait_for 60 grep -q logged-in "$OUT/ssh-session.out" || return 1
    # Failed password attempts (btmp): a real user and an unknown one.
    for u in webadmin mallory; do
        sshpass -p wrong-password ssh $opts -o PubkeyAuthentication=no \
            -o PreferredAuthentications=password -o NumberOfPasswordPrompts=1 $u@127.0.0.1 true
        echo "sshpass $u -> $?"
    done
    # A message with a unique token, and a failing unit (journal).
    token="IRCAP-TOKEN-$(cat /proc/sys/kernel/random/uuid)"
    echo "$token" >"$OUT/token"
    logger -t ircap-lab "$token"
    # (A unit file, not systemd-run: that needs D-Bus, which this image
    # does not have.)
    printf '[Service]\nType=oneshot\nExecStart=/bin/sh -c "echo lab unit about to fail; exit 3"\n' \
        >/etc/systemd/system/ircap-lab-fails.service
    systemctl daemon-reload
    systemctl start ircap-lab-fails.service && return 1
    systemctl is-failed ircap-lab-fails.service >"$OUT/failing-unit.state"
    # An entry with a binary field, sent over journald's native protocol
    # (name, newline, 64-bit little-endian length, the bytes, newline).
    printf 'MESSAGE=IRCAP-BINARY-%s\nIRCAP_BIN\n\004\000\000\000\000\000\000\000\377\376\000a\n' "$token" |
        nc -uU -w1 /run/systemd/journal/socket
    # A planted process of another user, listening on loopback, with a
    # token in its environment.
    mkdir -p /tmp/.lab
    cp /bin/nc.openbsd /tmp/.lab/kworker-lab
    setpriv --reuid=webadmin --regid=webadmin --init-groups \
        env IRCAP_PLANT="$token" /tmp/.lab/kworker-lab -lk 127.0.0.1 31337 </dev/null >/dev/null 2>&1 &
    echo $! >"$OUT/planted.pid"
    wait_for 30 sh -c 'ss -ltn | grep -q 127.0.0.1:31337' || return 1
    ss -ltnp >"$OUT/ss.txt"
    journalctl --flush
}
step activity activity
# Entries older than this are outside the --logs-since of a later request.
sleep 1
value after_activity "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
sleep 1

# --- 3. a capture requested by the analyst --------------------------------
t0=$(uptime_s)
step request analyst request --all --wait --timeout 400
cp "$OUT/request.log" "$OUT/request.jsonl"
value request_secs "$t0-$(uptime_s)"
keep_new cap-request
step verify_request verify_dir cap-request
journalctl -o json --all --no-pager >"$OUT/journalctl.json" 2>"$OUT/journalctl.err"

# --- 4. a full capture and the agent's peak memory --------------------------
t0=$(uptime_s)
step request_full analyst request --all --wait --timeout 400 --profile full
value request_full_secs "$t0-$(uptime_s)"
keep_new cap-full
step verify_full verify_dir cap-full
cg=/sys/fs/cgroup/system.slice/ircap-agent.service
value agent_memory_peak "$(cat $cg/memory.peak 2>/dev/null || echo none)"
value agent_memory_max "$(cat $cg/memory.max 2>/dev/null || echo none)"
value agent_memory_events "$(tr ' \n' '=,' <$cg/memory.events 2>/dev/null)"

# --- 5. the SSM document's script, as aws:runShellScript runs it ------------
ssm() {
    d=/var/lib/amazon/ssm/i-0lab0000000000001/document/orchestration/lab-command-1/$(cat $IN/ssm/step)
    mkdir -p "$d" && install -m 0750 $IN/ssm/_script.sh "$d/_script.sh" || return 1
    (cd "$d" && AWS_SSM_INSTANCE_ID=i-0lab0000000000001 AWS_SSM_REGION_NAME=eu-west-1 \
        sh -c "$d/_script.sh" </dev/null >"$d/stdout" 2>"$d/stderr")
    rc=$?
    cp "$d/stdout" "$OUT/ssm.stdout"
    cp "$d/stderr" "$OUT/ssm.stderr"
    return $rc
}
step ssm ssm
keep_new cap-ssm

# --- 6. SIGKILL of the agent mid-capture: systemd restarts it --------------
before=$(systemctl show -p NRestarts --value ircap-agent.service)
staged0=$(staged)
# (--timeout 60: see the test; a killed agent never reports this request.)
analyst request --all --wait --timeout 60 >"$OUT/request-killed.jsonl" 2>"$OUT/request-killed.err" &
req=$!
# Mid-capture: the agent has started uploading (an uncommitted capture).
step kill_wait wait_for 120 more_staged "$staged0"
step kill systemctl kill -s SIGKILL ircap-agent.service
wait $req
echo "request_killed $?" >>"$OUT/steps"
step restarted wait_for 60 sh -c "[ \$(systemctl show -p NRestarts --value ircap-agent.service) -gt $before ]"
step reconnected wait_for 60 agent_connected
value nrestarts "$before-$(systemctl show -p NRestarts --value ircap-agent.service)"
keep_new cap-killed
# (16K of logs since after the activity: the journal table is cut at the
# budget and holds nothing older.)
step request_after_kill analyst request --all --wait --timeout 300 --logs-max-bytes 16K \
    --logs-since "$(sed -n 's/^after_activity //p' "$OUT/values")"
keep_new cap-after-kill
step verify_after_kill verify_dir cap-after-kill

# --- 7. the collector stopped during an upload -------------------------------
staged0=$(staged)
analyst request --all --wait --timeout 300 --profile full >"$OUT/request-stopped.jsonl" 2>"$OUT/request-stopped.err" &
req=$!
step stop_wait wait_for 120 more_staged "$staged0"
t0=$(uptime_s)
step collector_stop systemctl stop ircap-collector.service
value collector_stop_secs "$t0-$(uptime_s)"
systemctl show -p Result -p ExecMainCode -p ExecMainStatus ircap-collector.service >"$OUT/collector-stopped.show"
wait $req
echo "request_stopped $?" >>"$OUT/steps"
keep_new cap-stopped
step collector_restart systemctl start ircap-collector.service
step reconnected_after_stop wait_for 90 agent_connected
analyst list --json --incomplete >"$OUT/list-final.jsonl" 2>&1

# --- the end ----------------------------------------------------------------
kill "$(cat /run/lab-ssh.pid)" "$(cat "$OUT/planted.pid")" 2>/dev/null
journalctl -u ircap-agent.service -u ircap-collector.service --no-pager >"$OUT/units.journal" 2>&1
systemctl --failed --no-pager >"$OUT/failed-units.txt" 2>&1
{
    printf '{"steps":{'
    sep=
    while read -r n rc; do
        printf '%s"%s":%s' "$sep" "$n" "$rc"
        sep=,
    done <"$OUT/steps"
    printf '},"values":{'
    sep=
    while read -r k v; do
        printf '%s"%s":"%s"' "$sep" "$k" "$v"
        sep=,
    done <"$OUT/values"
    printf '}}\n'
} >"$OUT/results.json"
sync
