//! What changed between two captures of one host (a baseline and an
//! incident, or any two): each [`Section`] keys its records so that the
//! same thing in both captures has the same key, and lists keys only in
//! B (`added`) or only in A (`removed`). Processes are keyed by
//! executable SHA-256 and argv, not pid, so a restarted daemon is not a
//! change and a swapped binary behind the same path is.

use std::collections::BTreeMap;

use serde::Serialize;

use super::evidence::{Evidence, Row};
use super::finding::{Pointer, at};
use super::rules::listeners::endpoint;
use super::rules::logins::source;

/// One thing present in only one capture.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Item {
    /// What makes it the same thing in two captures.
    pub key: String,
    /// A readable line about it.
    pub detail: String,
    /// Where it is in the capture that has it.
    pub pointer: Pointer,
}

/// The changes of one kind.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Section {
    /// `processes`, `listeners`, ...
    pub name: &'static str,
    /// Only in B.
    pub added: Vec<Item>,
    /// Only in A.
    pub removed: Vec<Item>,
}

/// The difference of two captures.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// Capture id of A (the earlier, or the baseline).
    pub a: String,
    /// Capture id of B.
    pub b: String,
    /// Hostnames claimed by each; a diff of two hosts is allowed but
    /// flagged.
    pub same_host: bool,
    /// With `--baseline`: how A was chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<super::baseline::Choice>,
    /// One per kind, in a fixed order.
    pub sections: Vec<Section>,
}

/// Keyed items of one capture.
type Keyed = BTreeMap<String, Item>;

/// A section's name and how it keys one capture.
type Keyer = (&'static str, fn(&Evidence) -> Keyed);

fn item(key: String, detail: String, pointer: Pointer) -> (String, Item) {
    (
        key.clone(),
        Item {
            key,
            detail,
            pointer,
        },
    )
}

fn section(name: &'static str, a: Keyed, mut b: Keyed) -> Section {
    let mut removed = Vec::new();
    for (k, v) in a {
        if b.remove(&k).is_none() {
            removed.push(v);
        }
    }
    Section {
        name,
        added: b.into_values().collect(),
        removed,
    }
}

fn keyed<T>(rows: &[Row<T>], f: impl Fn(&Row<T>) -> Option<(String, Item)>) -> Keyed {
    rows.iter().filter_map(f).collect()
}

fn processes(e: &Evidence) -> Keyed {
    keyed(&e.tables.processes, |r| {
        let p = &r.rec;
        if p.kernel_thread || p.is_agent {
            return None;
        }
        let exe = p
            .exe_sha256
            .clone()
            .or_else(|| p.exe.clone())
            .unwrap_or_else(|| p.comm.clone());
        let argv = p.argv.join(" ");
        Some(item(
            format!("{exe} {argv}"),
            format!(
                "pid {} {} {} [{}]",
                p.pid,
                p.comm,
                p.exe.as_deref().unwrap_or("-"),
                argv
            ),
            at("processes", r.line).pid(p.pid),
        ))
    })
}

fn listeners(e: &Evidence) -> Keyed {
    let host = e.host_netns();
    keyed(&e.tables.connections, |r| {
        let c = &r.rec;
        let listening = c.protocol != "unix"
            && (c.state == "LISTEN" || (c.state == "UNCONN" && c.protocol.starts_with("udp")));
        if !listening {
            return None;
        }
        let ns = if host.is_none_or(|h| h == c.netns) {
            "host".to_owned()
        } else {
            format!("netns:{}", c.netns)
        };
        let mut names = c.process_names.clone();
        names.sort();
        let place = format!("{} {}", c.protocol, endpoint(c));
        Some(item(
            format!("{ns} {place} {}", names.join(",")),
            format!(
                "{place} in {ns} by {}",
                if names.is_empty() {
                    "-".into()
                } else {
                    names.join(", ")
                }
            ),
            at("connections", r.line).path(place),
        ))
    })
}

fn peers(e: &Evidence) -> Keyed {
    keyed(&e.tables.connections, |r| {
        let c = &r.rec;
        let remote = c.remote_address.as_deref()?;
        if c.protocol == "unix"
            || c.state == "LISTEN"
            || matches!(remote, "0.0.0.0" | "::" | "")
            || remote.starts_with("127.")
            || remote == "::1"
        {
            return None;
        }
        Some(item(
            remote.to_owned(),
            format!(
                "{remote} ({} {} port {} by {})",
                c.protocol,
                c.state,
                c.remote_port.unwrap_or(0),
                c.process_names.join(", ")
            ),
            at("connections", r.line).path(remote.to_owned()),
        ))
    })
}

fn users(e: &Evidence) -> Keyed {
    keyed(&e.tables.lastlog, |r| {
        let name = r.rec.user.clone().unwrap_or_default();
        Some(item(
            format!("{} {name}", r.rec.uid),
            format!("uid {} {name}", r.rec.uid),
            at("lastlog", r.line),
        ))
    })
}

fn logins(e: &Evidence) -> Keyed {
    keyed(&e.tables.logins, |r| {
        let l = &r.rec;
        if l.source == "utmp" {
            return None;
        }
        let src = source(l);
        let time = l.time.clone().unwrap_or_default();
        Some(item(
            format!(
                "{} {} {} {} {} {time}",
                l.source, l.entry_type, l.user, src, l.line
            ),
            format!(
                "{time} {} {} {} from {src} on {}",
                l.source, l.entry_type, l.user, l.line
            ),
            at("logins", r.line).path(l.file.clone()),
        ))
    })
}

fn modules(e: &Evidence) -> Keyed {
    keyed(&e.tables.kernel_modules, |r| {
        Some(item(
            r.rec.name.clone(),
            r.rec.name.clone(),
            at("kernel_modules", r.line).path(r.rec.name.clone()),
        ))
    })
}

fn mounts(e: &Evidence) -> Keyed {
    keyed(&e.tables.mounts, |r| {
        let m = &r.rec;
        Some(item(
            format!("{} {} {}", m.mount_point, m.fs_type, m.source),
            format!("{} ({} from {})", m.mount_point, m.fs_type, m.source),
            at("mounts", r.line).path(m.mount_point.clone()),
        ))
    })
}

fn setuid_files(e: &Evidence) -> Keyed {
    keyed(&e.tables.volatile_files, |r| {
        let f = &r.rec;
        if !(f.setuid || f.setgid) || f.file_type != "file" {
            return None;
        }
        Some(item(
            format!("{} {}", f.path, f.sha256.as_deref().unwrap_or("-")),
            format!("{} mode {} uid {}", f.path, f.mode, f.uid),
            at("volatile_files", r.line).path(f.path.clone()),
        ))
    })
}

fn network_config(e: &Evidence) -> Keyed {
    let mut k = keyed(&e.tables.network_config, |r| {
        let c = &r.rec;
        let sha = c.sha256.clone().unwrap_or_else(|| "absent".into());
        Some(item(
            format!("file {} {sha}", c.path),
            format!("{} (sha256 {sha})", c.path),
            at("network_config", r.line).path(c.path.clone()),
        ))
    });
    k.extend(keyed(&e.tables.network_interfaces, |r| {
        let i = &r.rec;
        let mut addrs = i.addresses.clone();
        addrs.sort();
        Some(item(
            format!(
                "interface {} {}{}",
                i.name,
                addrs.join(","),
                if i.promiscuous { " promisc" } else { "" }
            ),
            format!(
                "interface {} [{}]{}",
                i.name,
                addrs.join(", "),
                if i.promiscuous { " promiscuous" } else { "" }
            ),
            at("network_interfaces", r.line).path(i.name.clone()),
        ))
    }));
    k.extend(keyed(&e.tables.network_routes, |r| {
        let x = &r.rec;
        let text = format!(
            "route {} {} via {} dev {}",
            x.family, x.destination, x.gateway, x.interface
        );
        Some(item(text.clone(), text, at("network_routes", r.line)))
    }));
    k
}

fn findings_section(a: &Evidence, b: &Evidence) -> Section {
    let only_in = |e: &Evidence| -> Keyed {
        super::findings(e)
            .into_iter()
            .map(|f| {
                // The process row when there is one: it names the pid.
                let pointer = f
                    .pointers
                    .iter()
                    .find(|p| p.pid.is_some())
                    .or_else(|| f.pointers.first())
                    .cloned()
                    .unwrap_or_default();
                item(
                    f.id.clone(),
                    format!("[{}] {}", f.severity.as_str(), f.title),
                    pointer,
                )
            })
            .collect()
    };
    let mut s = section("findings", only_in(a), only_in(b));
    // A finding that went away is good news, not a change to chase.
    s.removed.clear();
    s
}

/// The difference from `a` to `b`.
#[must_use]
pub fn diff(a: &Evidence, b: &Evidence) -> Diff {
    let ha = &a.manifest.host;
    let hb = &b.manifest.host;
    let same_host = match (&ha.machine_id, &hb.machine_id) {
        (Some(x), Some(y)) => x == y,
        _ => ha.hostname == hb.hostname,
    };
    let pairs: [Keyer; 9] = [
        ("processes", processes),
        ("listeners", listeners),
        ("remote_peers", peers),
        ("users", users),
        ("logins", logins),
        ("kernel_modules", modules),
        ("mounts", mounts),
        ("setuid_files", setuid_files),
        ("network_config", network_config),
    ];
    let mut sections: Vec<Section> = pairs
        .iter()
        .map(|(name, f)| section(name, f(a), f(b)))
        .collect();
    sections.push(findings_section(a, b));
    Diff {
        a: a.manifest.capture_id.clone(),
        b: b.manifest.capture_id.clone(),
        same_host,
        baseline: None,
        sections,
    }
}

/// The diff as a table (every cell escaped).
#[must_use]
pub fn table(d: &Diff) -> String {
    let mut t = crate::render::Table::new(&["SECTION", "CHANGE", "WHAT", "WHERE"]);
    for s in &d.sections {
        for (sign, items) in [("+ new", &s.added), ("- gone", &s.removed)] {
            for i in items {
                let at = format!("{}:{}", i.pointer.artifact, i.pointer.line);
                t.row([s.name, sign, &i.detail, &at]);
            }
        }
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::rules::fixture::{evidence, process};
    use super::*;

    #[test]
    fn added_and_removed_are_keyed_by_content_not_pid() {
        let mut a = evidence(&[
            (
                "processes",
                vec![
                    process(1, "init", "/sbin/init"),
                    process(5, "cron", "/usr/sbin/cron"),
                ],
            ),
            ("kernel_modules", vec![json!({"name": "ext4"})]),
        ]);
        a.manifest.capture_id = "A".into();
        let b = evidence(&[
            (
                "processes",
                vec![
                    process(1, "init", "/sbin/init"),
                    process(9, "cron", "/usr/sbin/cron"),
                    process(10, "x", "/dev/shm/x"),
                ],
            ),
            (
                "kernel_modules",
                vec![json!({"name": "ext4"}), json!({"name": "rootkit"})],
            ),
        ]);
        let d = diff(&a, &b);
        let procs = &d.sections[0];
        assert_eq!(procs.added.len(), 1, "{procs:?}");
        assert_eq!(procs.added[0].pointer.pid, Some(10));
        assert!(procs.removed.is_empty());
        let mods = d
            .sections
            .iter()
            .find(|s| s.name == "kernel_modules")
            .unwrap_or(procs);
        assert_eq!(mods.added[0].key, "rootkit");
        let findings = d
            .sections
            .iter()
            .find(|s| s.name == "findings")
            .unwrap_or(procs);
        assert_eq!(findings.added.len(), 1, "{findings:?}");
        assert!(findings.added[0].key.starts_with("exe_origin:pid=10"));
    }

    /// Every change in `d` as (section, "+" or "-", key).
    fn changes(d: &Diff) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        for s in &d.sections {
            out.extend(s.added.iter().map(|i| (s.name, "+", i.key.clone())));
            out.extend(s.removed.iter().map(|i| (s.name, "-", i.key.clone())));
        }
        out
    }

    /// The diff from `a` to `b` lists exactly `want`, with B's pointers
    /// at `want_at` (artifact, line); `b` against itself lists nothing.
    fn planted(
        a: &[(&str, Vec<serde_json::Value>)],
        b: &[(&str, Vec<serde_json::Value>)],
        want: &[(&str, &str, &str)],
        want_at: &[(&str, u64)],
    ) -> Diff {
        let (ea, eb) = (evidence(a), evidence(b));
        let d = diff(&ea, &eb);
        let got = changes(&d);
        let want: Vec<(&str, &str, String)> = want
            .iter()
            .map(|&(s, sign, k)| (s, sign, k.to_owned()))
            .collect();
        assert_eq!(got, want, "{d:#?}");
        let pointers: Vec<(&str, u64)> = d
            .sections
            .iter()
            .flat_map(|s| &s.added)
            .map(|i| (i.pointer.artifact.as_str(), i.pointer.line))
            .collect();
        assert_eq!(pointers, want_at, "{d:#?}");
        assert_eq!(changes(&diff(&eb, &eb)), vec![], "identical captures");
        d
    }

    fn conn(proto: &str, state: &str, remote: &str, port: u16, name: &str) -> serde_json::Value {
        json!({"netns": 4026531840_u64, "protocol": proto, "local_address": "10.0.0.2",
               "local_port": 40000 + port, "remote_address": remote, "remote_port": port,
               "state": state, "pids": [7], "process_names": [name]})
    }

    #[test]
    fn a_new_remote_peer_is_listed_once_and_local_or_known_peers_are_not() {
        let base = vec![
            process(1, "init", "/sbin/init"),
            process(7, "curl", "/usr/bin/curl"),
        ];
        let a = vec![conn("tcp", "ESTABLISHED", "10.0.0.5", 443, "curl")];
        let b = vec![
            conn("tcp", "ESTABLISHED", "10.0.0.5", 443, "curl"),
            // A second connection to a known peer is not a new peer.
            conn("tcp", "ESTABLISHED", "10.0.0.5", 8443, "curl"),
            // Loopback is not a peer.
            conn("tcp", "ESTABLISHED", "127.0.0.1", 5432, "curl"),
            conn("tcp6", "ESTABLISHED", "::1", 5433, "curl"),
            conn("tcp", "ESTABLISHED", "203.0.113.9", 4444, "curl"),
        ];
        let d = planted(
            &[("processes", base.clone()), ("connections", a)],
            &[("processes", base), ("connections", b)],
            &[("remote_peers", "+", "203.0.113.9")],
            &[("connections.jsonl.gz", 5)],
        );
        let peers = d.sections.iter().find(|s| s.name == "remote_peers");
        let detail = peers
            .and_then(|s| s.added.first())
            .map(|i| i.detail.as_str());
        assert_eq!(
            detail,
            Some("203.0.113.9 (tcp ESTABLISHED port 4444 by curl)")
        );
    }

    #[test]
    fn a_new_account_is_listed_once() {
        let a = vec![
            json!({"uid": 0, "user": "root"}),
            json!({"uid": 1000, "user": "alice", "time": "2026-11-30T09:00:00Z", "host": "10.0.0.5"}),
        ];
        let mut b = a.clone();
        // A later login of a known account is not a new account.
        b[1]["time"] = json!("2026-12-01T09:00:00Z");
        b.push(json!({"uid": 1001, "user": "mallory"}));
        planted(
            &[("lastlog", a)],
            &[("lastlog", b)],
            &[("users", "+", "1001 mallory")],
            &[("lastlog.jsonl.gz", 3)],
        );
    }

    #[test]
    fn a_new_login_is_listed_once_and_utmp_sessions_are_not() {
        let login = |src: &str, user: &str, host: &str, time: &str| {
            json!({"source": src, "file": format!("/var/log/{src}"), "type": "USER_PROCESS",
                   "user": user, "host": host, "line": "pts/0", "time": time})
        };
        let a = vec![login("wtmp", "alice", "10.0.0.5", "2026-11-30T09:00:00Z")];
        let b = vec![
            login("wtmp", "alice", "10.0.0.5", "2026-11-30T09:00:00Z"),
            login("utmp", "mallory", "198.51.100.7", "2026-12-01T09:59:00Z"),
            login("wtmp", "mallory", "198.51.100.7", "2026-12-01T09:59:00Z"),
        ];
        let d = planted(
            &[("logins", a)],
            &[("logins", b)],
            &[(
                "logins",
                "+",
                "wtmp USER_PROCESS mallory 198.51.100.7 pts/0 2026-12-01T09:59:00Z",
            )],
            &[("logins.jsonl.gz", 3)],
        );
        let s = d.sections.iter().find(|s| s.name == "logins");
        let item = s.and_then(|s| s.added.first());
        assert_eq!(
            item.and_then(|i| i.pointer.path.as_deref()),
            Some("/var/log/wtmp")
        );
    }

    #[test]
    fn a_new_mount_is_listed_once() {
        let mount = |at: &str, fs: &str, src: &str| json!({"mount_point": at, "fs_type": fs, "source": src, "mount_options": ["rw"]});
        let a = vec![
            mount("/", "ext4", "/dev/nvme0n1p1"),
            mount("/proc", "proc", "proc"),
        ];
        let mut b = a.clone();
        // Options are not part of a mount's identity.
        b[0]["mount_options"] = json!(["rw", "noatime"]);
        b.push(mount("/mnt/.x", "tmpfs", "tmpfs"));
        planted(
            &[("mounts", a)],
            &[("mounts", b)],
            &[("mounts", "+", "/mnt/.x tmpfs tmpfs")],
            &[("mounts.jsonl.gz", 3)],
        );
    }

    #[test]
    fn network_config_lists_a_changed_file_a_promiscuous_interface_and_a_new_route() {
        let resolv = |sha: &str| json!({"path": "/etc/resolv.conf", "sha256": sha});
        let hosts = json!({"path": "/etc/hosts", "sha256": "bb"});
        let eth0 = |promisc: bool| json!({"name": "eth0", "addresses": ["10.0.0.2/24"], "promiscuous": promisc});
        let route = |dest: &str, gw: &str| json!({"family": "inet", "interface": "eth0", "destination": dest, "gateway": gw});
        let a = || {
            vec![
                ("network_config", vec![resolv("aa"), hosts.clone()]),
                ("network_interfaces", vec![eth0(false)]),
                ("network_routes", vec![route("0.0.0.0/0", "10.0.0.1")]),
            ]
        };
        let mut b = a();
        b[0].1[0] = resolv("cc");
        planted(
            &a(),
            &b,
            &[
                ("network_config", "+", "file /etc/resolv.conf cc"),
                ("network_config", "-", "file /etc/resolv.conf aa"),
            ],
            &[("network_config.jsonl.gz", 1)],
        );
        let mut b = a();
        b[1].1[0] = eth0(true);
        planted(
            &a(),
            &b,
            &[
                ("network_config", "+", "interface eth0 10.0.0.2/24 promisc"),
                ("network_config", "-", "interface eth0 10.0.0.2/24"),
            ],
            &[("network_interfaces.jsonl.gz", 1)],
        );
        let mut b = a();
        b[2].1.push(route("203.0.113.0/24", "10.0.0.66"));
        planted(
            &a(),
            &b,
            &[(
                "network_config",
                "+",
                "route inet 203.0.113.0/24 via 10.0.0.66 dev eth0",
            )],
            &[("network_routes.jsonl.gz", 2)],
        );
    }

    #[test]
    fn the_table_names_each_section_and_shows_hostile_text_inert() {
        let a = evidence(&[("processes", vec![process(1, "init", "/sbin/init")])]);
        let evil = process(
            66,
            "x\x1b]0;pwned\x07\nprocesses  - gone  fake row",
            "/dev/shm/evil\x1b[2J",
        );
        let b = evidence(&[
            ("processes", vec![process(1, "init", "/sbin/init"), evil]),
            ("kernel_modules", vec![json!({"name": "rootkit"})]),
        ]);
        let t = table(&diff(&a, &b));
        assert!(!t.contains('\x1b') && !t.contains('\x07'), "{t:?}");
        assert!(t.contains("x\\x1b]0;pwned\\x07\\x0aprocesses"), "{t:?}");
        let lines: Vec<&str> = t.lines().collect();
        // A heading and one line per change: the newline forged no row.
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[0].starts_with("SECTION") && lines[0].contains("WHERE"),
            "{t}"
        );
        let starts: Vec<&str> = lines[1..]
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(starts, ["processes", "kernel_modules", "findings"], "{t}");
        assert!(
            lines[1].contains("+ new") && lines[1].contains("processes.jsonl.gz:2"),
            "{t}"
        );
        assert!(
            lines[2].contains("rootkit") && lines[2].contains("kernel_modules.jsonl.gz:1"),
            "{t}"
        );
    }

    #[test]
    fn identical_captures_have_no_changes() {
        let rows = vec![
            process(1, "init", "/sbin/init"),
            process(10, "x", "/dev/shm/x"),
        ];
        let d = diff(
            &evidence(&[("processes", rows.clone())]),
            &evidence(&[("processes", rows)]),
        );
        assert!(
            d.sections
                .iter()
                .all(|s| s.added.is_empty() && s.removed.is_empty()),
            "{d:?}"
        );
    }
}
