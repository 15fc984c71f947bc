//! Login records: bursts of failed logins (btmp) from one source, a
//! successful login from a source that had failed before (a guessed
//! password), and logins from a source first seen in the last day of a
//! longer wtmp history.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Rule, Sink};
use crate::triage::evidence::{Evidence, Login, Row};
use crate::triage::finding::{Finding, Pointer, Severity, at};

pub const RULE: Rule = Rule {
    name: "logins",
    summary: "burst of failed logins (btmp, 10 in 10 min from one source), success after failures, login from a source first seen in the last day",
    check,
};

/// Failed logins from one source within [`BURST_WINDOW`] that make a burst.
const BURST: usize = 10;
const BURST_WINDOW: i64 = 600;
/// A source is new when first seen this close to the capture...
const NEW_WITHIN: i64 = 86_400;
/// ...while the history it is compared with is at least this long.
const HISTORY: i64 = 7 * 86_400;

/// Where a login came from: the remote host, else the address, else local.
pub fn source(l: &Login) -> String {
    if !l.host.is_empty() {
        l.host.clone()
    } else {
        l.address
            .clone()
            .filter(|a| a != "0.0.0.0" && a != "::")
            .unwrap_or_else(|| "local".into())
    }
}

fn when(l: &Login) -> Option<i64> {
    let t = l.time.as_deref()?;
    OffsetDateTime::parse(t, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

fn pointer(r: &Row<Login>) -> Pointer {
    at("logins", r.line).path(format!("{} {} {}", r.rec.file, r.rec.user, source(&r.rec)))
}

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let mut sink = Sink::new(RULE.name, out);
    // Failed logins per source, in time order.
    let mut failed: BTreeMap<String, Vec<(i64, &Row<Login>)>> = BTreeMap::new();
    for r in e.tables.logins.iter().filter(|r| r.rec.source == "btmp") {
        if let Some(t) = when(&r.rec) {
            failed.entry(source(&r.rec)).or_default().push((t, r));
        }
    }
    for (src, tries) in &mut failed {
        tries.sort_by_key(|(t, r)| (*t, r.line));
        let burst = tries
            .windows(BURST)
            .find(|w| w.last().map_or(0, |l| l.0) - w.first().map_or(0, |f| f.0) <= BURST_WINDOW);
        if let Some(w) = burst {
            sink.add(
                &format!("burst/{src}"),
                format!(
                    "{} failed logins from {src} ({} within 10 minutes)",
                    tries.len(),
                    BURST
                ),
                Severity::Medium,
                "T1110",
                "many failed logins from one source in minutes is password guessing",
                w.iter().take(3).map(|(_, r)| pointer(r)).collect(),
            );
        }
    }
    let ok: Vec<(i64, &Row<Login>)> = e
        .tables
        .logins
        .iter()
        .filter(|r| r.rec.source == "wtmp" && r.rec.entry_type == "USER_PROCESS")
        .filter_map(|r| when(&r.rec).map(|t| (t, r)))
        .collect();
    let mut first_seen: BTreeMap<String, (i64, &Row<Login>)> = BTreeMap::new();
    for &(t, r) in &ok {
        let src = source(&r.rec);
        if let Some(tries) = failed.get(&src)
            && let Some((_, last_fail)) = tries.iter().rev().find(|(ft, _)| *ft <= t)
        {
            sink.add(
                &format!("after_failures/{src}/{}", r.rec.user),
                format!(
                    "{} logged in from {src} after {} failed attempts",
                    r.rec.user,
                    tries.len()
                ),
                Severity::High,
                "T1110",
                "a successful login from a source that was guessing passwords",
                vec![pointer(r), pointer(last_fail)],
            );
        }
        let entry = first_seen.entry(src).or_insert((t, r));
        if t < entry.0 {
            *entry = (t, r);
        }
    }
    let captured = OffsetDateTime::parse(&e.manifest.started_at, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .ok();
    let earliest = ok.iter().map(|(t, _)| *t).min();
    if let (Some(now), Some(earliest)) = (captured, earliest)
        && now - earliest >= HISTORY
    {
        for (src, (t, r)) in first_seen {
            if src != "local" && now - t <= NEW_WITHIN {
                sink.add(
                    &format!("new_source/{src}"),
                    format!("first login from {src} ({})", r.rec.user),
                    Severity::Low,
                    "T1078",
                    "this source never logged in before during the recorded history",
                    vec![pointer(r)],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixture::{evidence, run};
    use super::*;

    fn login(file: &str, kind: &str, user: &str, host: &str, time: &str) -> serde_json::Value {
        let source = file.trim_end_matches(".1");
        json!({"source": source, "file": format!("/var/log/{file}"), "type": kind, "user": user, "host": host, "time": time})
    }

    #[test]
    fn bursts_success_after_failures_and_new_sources_are_found() {
        let mut rows = vec![login(
            "wtmp",
            "USER_PROCESS",
            "ops",
            "10.0.0.2",
            "2026-11-01T09:00:00Z",
        )];
        for i in 0..12 {
            rows.push(login(
                "btmp",
                "LOGIN_PROCESS",
                "root",
                "203.0.113.9",
                &format!("2026-12-01T09:50:{i:02}Z"),
            ));
        }
        rows.push(login(
            "wtmp",
            "USER_PROCESS",
            "root",
            "203.0.113.9",
            "2026-12-01T09:55:00Z",
        ));
        let e = evidence(&[("logins", rows)]);
        let f = run(check, &e);
        let ids: Vec<&str> = f.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "logins:burst/203.0.113.9",
                "logins:after_failures/203.0.113.9/root",
                "logins:new_source/203.0.113.9"
            ]
        );
        assert_eq!(f[1].pointers[0].line, 14);
        assert_eq!(f[1].pointers[1].line, 13);
    }

    #[test]
    fn a_few_failures_and_known_sources_are_not_findings() {
        let rows = vec![
            login(
                "wtmp",
                "USER_PROCESS",
                "ops",
                "10.0.0.2",
                "2026-11-01T09:00:00Z",
            ),
            login(
                "btmp",
                "LOGIN_PROCESS",
                "ops",
                "10.0.0.3",
                "2026-12-01T09:00:00Z",
            ),
            login(
                "btmp",
                "LOGIN_PROCESS",
                "ops",
                "10.0.0.3",
                "2026-12-01T09:00:05Z",
            ),
            login(
                "wtmp",
                "USER_PROCESS",
                "ops",
                "10.0.0.2",
                "2026-12-01T09:55:00Z",
            ),
        ];
        assert!(run(check, &evidence(&[("logins", rows)])).is_empty());
    }
}
