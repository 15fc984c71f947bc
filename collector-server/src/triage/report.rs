//! `report`: one self-contained HTML page a responder opens from a pulled
//! capture. No script, no external resource (a strict Content Security
//! Policy in the page forbids any), styles inline. Every piece of host
//! text goes through [`h`]: control characters made visible by
//! [`crate::render::escape`], then `& < > " '` as entities, so a process
//! named `<script>` is text on the page.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::evidence::{Evidence, Process, Row};
use super::finding::{Finding, Severity};
use super::rules::listeners::endpoint;
use super::rules::logins::source;

/// Most rows of one table section; the page says when more were left out.
const MAX_ROWS: usize = 5_000;
/// Deepest process-tree indentation shown.
const MAX_DEPTH: usize = 48;

/// Host text as HTML text (see the module docs).
#[must_use]
pub fn h(text: &str) -> String {
    let visible = crate::render::escape(text);
    let mut out = String::with_capacity(visible.len());
    for c in visible.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:2px 6px;\
text-align:left;vertical-align:top}th{background:#f3f3f3}code,td.m{font-family:monospace}\
.high{background:#fdd}.medium{background:#fed}.low{background:#ffd}.info{background:#eef}\
.flag{display:inline-block;padding:0 4px;margin-left:4px;border-radius:3px;background:#c00;\
color:#fff;font-size:.8em}.note{color:#555}";

fn th(out: &mut String, headings: &[&str]) {
    out.push_str("<table><tr>");
    for c in headings {
        let _ = write!(out, "<th>{}</th>", h(c));
    }
    out.push_str("</tr>");
}

fn tr<I: IntoIterator<Item = String>>(out: &mut String, class: &str, cells: I) {
    let _ = write!(out, "<tr class=\"{class}\">");
    for c in cells {
        let _ = write!(out, "<td>{c}</td>");
    }
    out.push_str("</tr>");
}

fn more(out: &mut String, total: usize) {
    if total > MAX_ROWS {
        let _ = write!(
            out,
            "<p class=\"note\">{} more rows not shown; open the table itself.</p>",
            total - MAX_ROWS
        );
    }
}

fn custody(out: &mut String, e: &Evidence, manifest_sha256: &str) {
    let m = &e.manifest;
    let r = m.collector_receipt.clone().unwrap_or_default();
    let s = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_owned()
    };
    let rows: Vec<(&str, String)> = vec![
        ("capture id", m.capture_id.clone()),
        ("status", format!("{:?}", m.status).to_lowercase()),
        ("hostname (claimed)", m.host.hostname.clone()),
        ("machine id", m.host.machine_id.clone().unwrap_or_default()),
        ("boot id", m.host.boot_id.clone().unwrap_or_default()),
        ("kernel", m.host.kernel_release.clone()),
        (
            "instance (claimed)",
            m.host.instance_id.clone().unwrap_or_default(),
        ),
        ("started", m.started_at.clone()),
        ("ended", m.ended_at.clone()),
        (
            "agent",
            format!(
                "{} pid {} uid {}",
                m.agent.version, m.agent.pid, m.agent.uid
            ),
        ),
        (
            "agent certificate identity",
            m.agent
                .identity
                .clone()
                .unwrap_or_else(|| "- (local capture)".into()),
        ),
        ("collector received from", s(&r, "peer_identity")),
        ("peer certificate SHA-256", s(&r, "peer_certificate_sha256")),
        ("committed at", s(&r, "committed_at")),
        ("collector verification", s(&r, "verified")),
        ("manifest.json SHA-256", manifest_sha256.to_owned()),
    ];
    out.push_str("<h2 id=\"custody\">Host and chain of custody</h2>");
    th(out, &["", ""]);
    for (k, v) in rows {
        tr(out, "", [h(k), format!("<code>{}</code>", h(&v))]);
    }
    out.push_str("</table>");
}

fn findings_section(out: &mut String, findings: &[Finding]) {
    let _ = write!(
        out,
        "<h2 id=\"findings\">Findings ({})</h2>",
        findings.len()
    );
    if findings.is_empty() {
        out.push_str("<p>No rule fired.</p>");
        return;
    }
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    th(out, &["severity", "ATT&CK", "finding", "why", "evidence"]);
    for f in sorted {
        let pointers: Vec<String> = f
            .pointers
            .iter()
            .map(|p| {
                let mut t = format!("{}:{}", p.artifact, p.line);
                if let Some(pid) = p.pid {
                    let _ = write!(t, " pid {pid}");
                }
                if let Some(path) = &p.path {
                    let _ = write!(t, " {path}");
                }
                h(&t)
            })
            .collect();
        tr(
            out,
            f.severity.as_str(),
            [
                h(f.severity.as_str()),
                h(&f.mitre),
                format!(
                    "<span class=\"finding\" data-id=\"{}\">{}</span>",
                    h(&f.id),
                    h(&f.title)
                ),
                h(&f.why),
                format!("<code>{}</code>", pointers.join("<br>")),
            ],
        );
    }
    out.push_str("</table>");
}

/// Pids a finding names, with the most urgent severity.
fn flagged_pids(findings: &[Finding]) -> HashMap<i32, (Severity, Vec<String>)> {
    let mut by: HashMap<i32, (Severity, Vec<String>)> = HashMap::new();
    for f in findings {
        for pid in f
            .pointers
            .iter()
            .filter_map(|p| p.pid)
            .collect::<HashSet<_>>()
        {
            let e = by.entry(pid).or_insert((f.severity, Vec::new()));
            e.0 = e.0.max(f.severity);
            if !e.1.contains(&f.rule) {
                e.1.push(f.rule.clone());
            }
        }
    }
    by
}

fn process_tree(out: &mut String, e: &Evidence, findings: &[Finding]) {
    let procs = &e.tables.processes;
    let _ = write!(
        out,
        "<h2 id=\"processes\">Process tree ({} processes)</h2>",
        procs.len()
    );
    let flags = flagged_pids(findings);
    let by_pid: HashMap<i32, &Row<Process>> = procs.iter().map(|p| (p.rec.pid, p)).collect();
    let mut children: BTreeMap<i32, Vec<&Row<Process>>> = BTreeMap::new();
    let mut roots = Vec::new();
    for p in procs {
        match p
            .rec
            .ppid
            .filter(|pp| *pp != p.rec.pid && by_pid.contains_key(pp))
        {
            Some(pp) => children.entry(pp).or_default().push(p),
            None => roots.push(p),
        }
    }
    // Depth-first without recursion; `seen` breaks ppid cycles a hostile
    // capture may hold (those processes are then listed as roots).
    let mut order: Vec<(usize, &Row<Process>)> = Vec::new();
    let mut seen: HashSet<i32> = HashSet::new();
    let mut stack: Vec<(usize, &Row<Process>)> = roots.iter().rev().map(|p| (0, *p)).collect();
    loop {
        while let Some((depth, p)) = stack.pop() {
            if !seen.insert(p.rec.pid) {
                continue;
            }
            order.push((depth, p));
            if let Some(kids) = children.get(&p.rec.pid) {
                stack.extend(kids.iter().rev().map(|k| (depth + 1, *k)));
            }
        }
        match procs.iter().find(|p| !seen.contains(&p.rec.pid)) {
            Some(p) => stack.push((0, p)),
            None => break,
        }
    }
    th(out, &["pid", "process", "user", "exe", "argv", "flags"]);
    for (depth, p) in order.iter().take(MAX_ROWS) {
        let r = &p.rec;
        let (class, rules) = flags.get(&r.pid).map_or(("", String::new()), |(s, rules)| {
            (
                s.as_str(),
                rules
                    .iter()
                    .map(|x| format!("<span class=\"flag\">{}</span>", h(x)))
                    .collect(),
            )
        });
        let indent = "&nbsp;&nbsp;".repeat((*depth).min(MAX_DEPTH));
        let mut marks = rules;
        if r.exe_deleted {
            marks.push_str("<span class=\"flag\">deleted exe</span>");
        }
        if r.is_agent {
            marks.push_str(" (ircap agent)");
        }
        tr(
            out,
            class,
            [
                r.pid.to_string(),
                format!("{indent}{}", h(&r.comm)),
                h(r.user.as_deref().unwrap_or("")),
                format!("<code>{}</code>", h(r.exe.as_deref().unwrap_or(""))),
                format!(
                    "<code>{}</code>",
                    h(&r.argv.join(" ").chars().take(300).collect::<String>())
                ),
                marks,
            ],
        );
    }
    out.push_str("</table>");
    more(out, order.len());
}

fn sockets(out: &mut String, e: &Evidence) {
    let host = e.host_netns();
    let conns: Vec<_> = e
        .tables
        .connections
        .iter()
        .filter(|c| c.rec.protocol != "unix")
        .collect();
    let _ = write!(
        out,
        "<h2 id=\"network\">Listeners and connections ({})</h2>",
        conns.len()
    );
    th(
        out,
        &["proto", "local", "remote", "state", "netns", "processes"],
    );
    let mut sorted = conns.clone();
    sorted.sort_by_key(|c| (c.rec.state != "LISTEN", c.line));
    for c in sorted.iter().take(MAX_ROWS) {
        let r = &c.rec;
        let procs: Vec<String> = r
            .pids
            .iter()
            .map(|pid| match e.process(*pid) {
                Some(p) => format!(
                    "{pid} {} {}",
                    p.rec.comm,
                    p.rec.exe.as_deref().unwrap_or("")
                ),
                None => pid.to_string(),
            })
            .collect();
        let remote = match (&r.remote_address, r.remote_port) {
            (Some(a), Some(p)) => format!("{a}:{p}"),
            _ => String::new(),
        };
        let ns = if host.is_none_or(|x| x == r.netns) {
            "host".to_owned()
        } else {
            r.netns.to_string()
        };
        tr(
            out,
            if ns == "host" { "" } else { "low" },
            [
                h(&r.protocol),
                h(&endpoint(r)),
                h(&remote),
                h(&r.state),
                h(&ns),
                h(&procs.join("; ")),
            ],
        );
    }
    out.push_str("</table>");
    more(out, conns.len());
}

fn logins(out: &mut String, e: &Evidence) {
    let mut rows: Vec<_> = e
        .tables
        .logins
        .iter()
        .filter(|l| l.rec.source != "utmp")
        .collect();
    rows.sort_by(|a, b| b.rec.time.cmp(&a.rec.time));
    let _ = write!(
        out,
        "<h2 id=\"logins\">Logins timeline ({}, newest first)</h2>",
        rows.len()
    );
    th(out, &["time", "file", "type", "user", "from", "line"]);
    for l in rows.iter().take(MAX_ROWS) {
        let r = &l.rec;
        tr(
            out,
            if r.source == "btmp" { "low" } else { "" },
            [
                h(r.time.as_deref().unwrap_or("")),
                h(&r.file),
                h(&r.entry_type),
                h(&r.user),
                h(&source(r)),
                h(&r.line),
            ],
        );
    }
    out.push_str("</table>");
    more(out, rows.len());
}

fn memory(out: &mut String, e: &Evidence) {
    out.push_str("<h2 id=\"memory\">Memory artifacts</h2>");
    let flagged = e
        .tables
        .memory_maps
        .iter()
        .filter(|r| (r.rec.anon_exec && !r.rec.kernel_provided) || r.rec.write_exec)
        .count();
    let _ = write!(
        out,
        "<p>{} mapped regions recorded, {} anonymous-executable or writable+executable.</p>",
        e.tables.memory_maps_total, flagged
    );
    th(
        out,
        &["artifact", "kind", "bytes stored", "SHA-256 (stored)"],
    );
    let mut any = false;
    for a in e.manifest.artifacts.iter().filter(|a| {
        a.name.starts_with("memory/")
            || a.name.starts_with("kernel_symbols/")
            || a.kind.contains("memory")
    }) {
        any = true;
        tr(
            out,
            "",
            [
                h(&a.name),
                h(&a.kind),
                a.size_stored.to_string(),
                format!("<code>{}</code>", h(&a.sha256_stored)),
            ],
        );
    }
    out.push_str("</table>");
    if !any {
        out.push_str("<p class=\"note\">No memory bytes were captured (no --memory-regions or --physical-memory).</p>");
    }
}

fn not_captured(out: &mut String, e: &Evidence) {
    out.push_str("<h2 id=\"gaps\">What was not captured, and why</h2>");
    th(out, &["where", "why"]);
    let mut n = 0;
    for err in &e.manifest.errors {
        n += 1;
        tr(out, "", [h(&err.source), h(&err.message)]);
    }
    for a in e.manifest.artifacts.iter().filter(|a| a.error_count > 0) {
        for msg in a.errors.iter().take(10) {
            n += 1;
            tr(out, "", [h(&a.name), h(msg)]);
        }
        if a.error_count > 10 {
            tr(
                out,
                "",
                [h(&a.name), h(&format!("{} errors in all", a.error_count))],
            );
        }
    }
    for p in &e.problems {
        n += 1;
        tr(out, "", [h("report"), h(p)]);
    }
    // Collectors the options did not ask for (the agent's own names).
    let asked: Vec<&str> = e
        .manifest
        .options
        .get("artifacts")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    if !asked.is_empty() {
        for optional in [
            "connections",
            "processes",
            "memory_maps",
            "network_state",
            "users",
            "kernel",
            "volatile_files",
            "logs",
            "memory_regions",
            "physical_memory",
        ] {
            if !asked.contains(&optional) {
                n += 1;
                tr(
                    out,
                    "",
                    [
                        h(optional),
                        h("not requested (profile, --artifacts or --skip)"),
                    ],
                );
            }
        }
    }
    out.push_str("</table>");
    if n == 0 {
        out.push_str("<p>Nothing: every artifact was collected without error.</p>");
    }
}

fn artifacts(out: &mut String, e: &Evidence) {
    out.push_str("<h2 id=\"artifacts\">Artifacts</h2>");
    th(
        out,
        &[
            "name",
            "records",
            "bytes stored",
            "SHA-256 (stored)",
            "SHA-256 (content)",
        ],
    );
    for a in &e.manifest.artifacts {
        tr(
            out,
            "",
            [
                h(&a.name),
                a.record_count.map(|n| n.to_string()).unwrap_or_default(),
                a.size_stored.to_string(),
                format!("<code>{}</code>", h(&a.sha256_stored)),
                format!("<code>{}</code>", h(&a.sha256_uncompressed)),
            ],
        );
    }
    out.push_str("</table>");
}

/// The page for `e` and its `findings`; `manifest_sha256` is the digest of
/// the manifest file the page was made from.
#[must_use]
pub fn render(e: &Evidence, findings: &[Finding], manifest_sha256: &str) -> String {
    let mut out = String::with_capacity(64 << 10);
    let title = format!(
        "ircap capture {} of {}",
        e.manifest.capture_id, e.manifest.host.hostname
    );
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
<title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>\
<p class=\"note\">Made by ircap-collector {} from the capture directory; host text is shown escaped.</p>",
        h(&title),
        h(&title),
        env!("CARGO_PKG_VERSION")
    );
    findings_section(&mut out, findings);
    custody(&mut out, e, manifest_sha256);
    process_tree(&mut out, e, findings);
    sockets(&mut out, e);
    logins(&mut out, e);
    memory(&mut out, e);
    not_captured(&mut out, e);
    artifacts(&mut out, e);
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use ircap_proto::manifest::ArtifactEntry;

    use super::super::rules::fixture::{evidence, process};
    use super::*;

    #[test]
    fn hostile_text_is_inert_html() {
        assert_eq!(
            h("<script>alert('x')</script>&\"\x1b[31m"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\\x1b[31m"
        );
        let mut p = process(
            66,
            "<script>alert(1)</script>",
            "/tmp/\"><img src=x onerror=alert(1)>",
        );
        p["argv"] = serde_json::json!(["a\u{202e}b", "</td></tr></table><b>bold"]);
        let e = evidence(&[("processes", vec![process(1, "init", "/sbin/init"), p])]);
        let f = super::super::findings(&e);
        let page = render(&e, &f, "00");
        assert!(!page.contains("<script"), "script tag survived");
        assert!(!page.contains("<img"), "img tag survived");
        assert!(!page.contains("<b>bold"), "a cell was closed by host text");
        assert!(!page.contains('\u{202e}'));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn artifacts_left_out_by_the_options_are_named() {
        let mut e = evidence(&[("processes", vec![process(1, "init", "/sbin/init")])]);
        e.manifest.options = serde_json::json!({"artifacts": ["processes", "connections", "logs"]});
        let page = render(&e, &[], "00");
        let gaps = page.split("id=\"gaps\"").nth(1).unwrap_or("");
        assert!(
            gaps.contains("<td>memory_maps</td><td>not requested"),
            "{gaps}"
        );
        assert!(!gaps.contains("<td>logs</td><td>not requested"), "{gaps}");
    }

    /// The part of `page` from the heading with `id` to the next heading.
    fn part<'p>(page: &'p str, id: &str) -> &'p str {
        let from = page
            .split(&format!("<h2 id=\"{id}\">"))
            .nth(1)
            .unwrap_or("");
        from.split("<h2").next().unwrap_or("")
    }

    /// A manifest artifact entry.
    fn entry(name: &str, kind: &str, errors: &[&str], error_count: u64) -> ArtifactEntry {
        serde_json::from_value(serde_json::json!({
            "name": name, "kind": kind, "content_type": "application/octet-stream",
            "encoding": "gzip", "size_stored": 4096, "size_uncompressed": 8192,
            "sha256_stored": "ab".repeat(32), "sha256_uncompressed": "cd".repeat(32),
            "started_at": "2026-12-01T10:00:00Z", "ended_at": "2026-12-01T10:00:01Z",
            "record_count": null, "error_count": error_count, "errors": errors,
        }))
        .unwrap()
    }

    #[test]
    fn sockets_are_joined_to_their_processes_listeners_first() {
        let conn = |proto: &str, state: &str, port: u16, pids: &[i32]| {
            serde_json::json!({"netns": 4026531840_u64, "protocol": proto,
                "local_address": "0.0.0.0", "local_port": port, "state": state, "pids": pids})
        };
        let mut out = conn("tcp", "ESTABLISHED", 50000, &[7]);
        out["remote_address"] = "203.0.113.9".into();
        out["remote_port"] = 443.into();
        let mut unix = conn("unix", "LISTEN", 0, &[7]);
        unix["path"] = "/run/secret.sock".into();
        let e = evidence(&[
            (
                "processes",
                vec![
                    process(1, "init", "/sbin/init"),
                    process(7, "nginx", "/usr/sbin/nginx"),
                ],
            ),
            (
                "connections",
                vec![
                    out,
                    unix,
                    conn("tcp", "LISTEN", 80, &[7]),
                    conn("udp", "UNCONN", 53, &[4242]),
                ],
            ),
        ]);
        let page = render(&e, &[], "00");
        let net = part(&page, "network");
        assert!(net.starts_with("Listeners and connections (3)"), "{net}");
        let rows: Vec<&str> = net.split("<tr class=").skip(1).collect();
        assert_eq!(rows.len(), 3, "{net}");
        assert_eq!(
            rows[0],
            "\"\"><td>tcp</td><td>0.0.0.0:80</td><td></td><td>LISTEN</td><td>host</td>\
<td>7 nginx /usr/sbin/nginx</td></tr>",
            "{net}"
        );
        assert!(
            rows[1].contains("<td>203.0.113.9:443</td><td>ESTABLISHED</td><td>host</td><td>7 nginx /usr/sbin/nginx</td>"),
            "{net}"
        );
        // A pid with no process record is still named.
        assert!(
            rows[2].contains("<td>UNCONN</td><td>host</td><td>4242</td>"),
            "{net}"
        );
        assert!(
            !net.contains("secret.sock"),
            "unix sockets are not listed: {net}"
        );
    }

    #[test]
    fn the_logins_timeline_is_newest_first_without_utmp_and_marks_failures() {
        let login = |src: &str, kind: &str, user: &str, host: &str, time: &str| {
            serde_json::json!({"source": src, "file": format!("/var/log/{src}"), "type": kind,
                "user": user, "host": host, "line": "ssh:notty", "time": time})
        };
        let e = evidence(&[(
            "logins",
            vec![
                login(
                    "wtmp",
                    "USER_PROCESS",
                    "alice",
                    "10.0.0.5",
                    "2026-11-30T09:00:00Z",
                ),
                login(
                    "utmp",
                    "USER_PROCESS",
                    "alice",
                    "10.0.0.5",
                    "2026-11-30T09:00:00Z",
                ),
                login(
                    "btmp",
                    "LOGIN_PROCESS",
                    "root",
                    "198.51.100.7",
                    "2026-12-01T09:58:00Z",
                ),
                login(
                    "wtmp",
                    "USER_PROCESS",
                    "root",
                    "198.51.100.7",
                    "2026-12-01T09:59:00Z",
                ),
            ],
        )]);
        let page = render(&e, &[], "00");
        let logins = part(&page, "logins");
        assert!(
            logins.starts_with("Logins timeline (3, newest first)"),
            "{logins}"
        );
        let rows: Vec<&str> = logins.split("<tr class=").skip(1).collect();
        assert_eq!(
            rows,
            [
                "\"\"><td>2026-12-01T09:59:00Z</td><td>/var/log/wtmp</td><td>USER_PROCESS</td>\
<td>root</td><td>198.51.100.7</td><td>ssh:notty</td></tr>",
                "\"low\"><td>2026-12-01T09:58:00Z</td><td>/var/log/btmp</td><td>LOGIN_PROCESS</td>\
<td>root</td><td>198.51.100.7</td><td>ssh:notty</td></tr>",
                "\"\"><td>2026-11-30T09:00:00Z</td><td>/var/log/wtmp</td><td>USER_PROCESS</td>\
<td>alice</td><td>10.0.0.5</td><td>ssh:notty</td></tr></table>",
            ],
            "{logins}"
        );
    }

    #[test]
    fn memory_artifacts_and_flagged_regions_are_listed() {
        let region = |start: &str, perms: &str, anon_exec: bool, write_exec: bool, vdso: bool| {
            serde_json::json!({"pid": 7, "comm": "x", "start": start, "end": "ffff", "size": 4096,
                "perms": perms, "anonymous": anon_exec, "anon_exec": anon_exec,
                "write_exec": write_exec, "kernel_provided": vdso})
        };
        let mut e = evidence(&[(
            "memory_maps",
            vec![
                region("1000", "r--p", false, false, false),
                region("2000", "r-xp", true, false, false),
                region("3000", "rwxp", true, true, false),
                region("4000", "r-xp", true, false, true),
            ],
        )]);
        e.manifest.artifacts = vec![
            entry("processes.jsonl.gz", "processes", &[], 0),
            entry("memory/7-2000.bin.gz", "memory_region", &[], 0),
            entry("memory/<img>.bin.gz", "memory_region", &[], 0),
        ];
        let page = render(&e, &[], "00");
        let mem = part(&page, "memory");
        assert!(
            mem.contains(
                "<p>4 mapped regions recorded, 2 anonymous-executable or writable+executable.</p>"
            ),
            "{mem}"
        );
        assert!(
            mem.contains("<td>memory/7-2000.bin.gz</td><td>memory_region</td><td>4096</td>"),
            "{mem}"
        );
        assert!(mem.contains("<td>memory/&lt;img&gt;.bin.gz</td>"), "{mem}");
        assert!(!mem.contains("processes.jsonl.gz"), "{mem}");
        assert!(!mem.contains("No memory bytes"), "{mem}");

        let e = evidence(&[]);
        let mem = part(&render(&e, &[], "00"), "memory").to_owned();
        assert!(mem.contains("No memory bytes were captured"), "{mem}");
    }

    #[test]
    fn what_was_not_captured_names_each_error() {
        let mut e = evidence(&[]);
        let many: Vec<String> = (0..10).map(|i| format!("pid {i}: gone")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        e.manifest.artifacts = vec![
            entry(
                "processes.jsonl.gz",
                "processes",
                &["pid 4242: <permission denied>"],
                1,
            ),
            entry("memory_maps.jsonl.gz", "memory_maps", &many, 37),
            entry("mounts.jsonl.gz", "mounts", &[], 0),
        ];
        e.manifest.errors = vec![ircap_proto::manifest::CaptureError {
            source: "physical_memory".into(),
            message: "/proc/kcore: lockdown is confidentiality".into(),
        }];
        let page = render(&e, &[], "00");
        let gaps = part(&page, "gaps");
        assert!(
            gaps.contains(
                "<td>physical_memory</td><td>/proc/kcore: lockdown is confidentiality</td>"
            ),
            "{gaps}"
        );
        assert!(
            gaps.contains(
                "<td>processes.jsonl.gz</td><td>pid 4242: &lt;permission denied&gt;</td>"
            ),
            "{gaps}"
        );
        assert!(
            gaps.contains("<td>memory_maps.jsonl.gz</td><td>37 errors in all</td>"),
            "{gaps}"
        );
        assert_eq!(
            gaps.matches("<td>memory_maps.jsonl.gz</td>").count(),
            11,
            "{gaps}"
        );
        assert!(!gaps.contains("mounts"), "{gaps}");
        assert!(!gaps.contains("Nothing: every artifact"), "{gaps}");
    }

    #[test]
    fn a_ppid_cycle_still_lists_every_process_once() {
        let mut a = process(10, "cyc-a", "/a");
        a["ppid"] = 11.into();
        let mut b = process(11, "cyc-b", "/b");
        b["ppid"] = 10.into();
        let e = evidence(&[("processes", vec![a, b])]);
        let page = render(&e, &[], "00");
        assert_eq!(page.matches("<td>cyc-a</td>").count(), 1, "{page}");
        assert_eq!(
            page.matches("<td>&nbsp;&nbsp;cyc-b</td>").count(),
            1,
            "{page}"
        );
    }
}
