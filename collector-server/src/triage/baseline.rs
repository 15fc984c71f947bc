//! Which capture `diff --baseline B` compares B with: the host's capture
//! labelled `baseline=true` (by `ircap-agent capture --capture-label
//! baseline=true` at first boot, or `ircap-collector request
//! --capture-label baseline=true`), else the host's earliest; in both
//! cases only captures that began before B.
//!
//! Among several labelled captures the earliest wins, so a host that is
//! later compromised (and holds the agent's certificate) can add a capture
//! labelled baseline, but cannot displace the first-boot one. On a
//! collector, "the host" is the certificate identity the collector
//! recorded and "before" is the collector's own commit time, neither of
//! which the host can forge; beside a pulled capture only the manifests
//! are at hand, so the host is the claimed machine id (else hostname) and
//! the time the claimed start.

use ircap_proto::manifest::Manifest;
use ircap_proto::request_args::BASELINE_LABEL;
use ircap_proto::v1::{CaptureInfo, ListCapturesRequest};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::analyst::{AnalystClient, AnalystError};

/// Whether the capture carries the label `baseline=true` (its manifest's
/// `options.labels`).
#[must_use]
pub fn is_baseline(m: &Manifest) -> bool {
    let (key, value) = BASELINE_LABEL;
    m.options
        .get("labels")
        .and_then(|l| l.get(key))
        .and_then(serde_json::Value::as_str)
        == Some(value)
}

/// Why a capture was chosen as the baseline, as `diff --json` reports it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The earliest capture of the host labelled `baseline=true`.
    Labelled,
    /// No labelled one: the host's earliest capture.
    Earliest,
}

/// Where the baseline was looked for.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Among {
    /// Capture directories beside B.
    Beside,
    /// The collector's captures of B's agent identity.
    Collector,
}

/// How `diff --baseline` chose A.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Choice {
    /// Labelled or earliest.
    pub rule: Rule,
    /// Beside B or on the collector.
    pub among: Among,
}

/// A capture that could be the baseline: its time (start, or commit on a
/// collector) and whether it is labelled.
#[derive(Debug, Clone)]
pub struct Candidate<T> {
    /// What the caller needs back (a directory, an id).
    pub item: T,
    /// When it began (or was committed).
    pub at: OffsetDateTime,
    /// Labelled `baseline=true`.
    pub labelled: bool,
}

/// An RFC 3339 time, `None` when unparsable.
#[must_use]
pub fn instant(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Among `candidates` (all of B's host, B excluded) that are earlier than
/// `before`: the earliest labelled one, else the earliest.
#[must_use]
pub fn choose<T>(before: OffsetDateTime, candidates: &[Candidate<T>]) -> Option<(&T, Rule)> {
    let earlier = || candidates.iter().filter(|c| c.at < before);
    earlier()
        .filter(|c| c.labelled)
        .min_by_key(|c| c.at)
        .map(|c| (&c.item, Rule::Labelled))
        .or_else(|| {
            earlier()
                .min_by_key(|c| c.at)
                .map(|c| (&c.item, Rule::Earliest))
        })
}

/// The baseline for `b` among capture directories beside it (`item`,
/// manifest): of the same claimed host (machine id when both have one,
/// else hostname), by claimed start time.
#[must_use]
pub fn beside<'a, T>(b: &Manifest, candidates: &'a [(T, Manifest)]) -> Option<(&'a T, Rule)> {
    let before = instant(&b.started_at)?;
    let hb = &b.host;
    let same_host = |m: &Manifest| match (&m.host.machine_id, &hb.machine_id) {
        (Some(x), Some(y)) => x == y,
        _ => m.host.hostname == hb.hostname,
    };
    let list: Vec<Candidate<&T>> = candidates
        .iter()
        .filter(|(_, m)| m.capture_id != b.capture_id && same_host(m))
        .filter_map(|(t, m)| {
            Some(Candidate {
                item: t,
                at: instant(&m.started_at)?,
                labelled: is_baseline(m),
            })
        })
        .collect();
    choose(before, &list).map(|(t, rule)| (*t, rule))
}

/// B's own row on the collector: among its recorded agent's captures when
/// the manifest names one, else among all.
async fn find_b(
    client: &mut AnalystClient,
    b: &Manifest,
) -> Result<Option<(CaptureInfo, Vec<CaptureInfo>)>, AnalystError> {
    let hint = b.agent.identity.clone().unwrap_or_default();
    for host in [hint, String::new()] {
        let all = client
            .list(ListCapturesRequest {
                host: host.clone(),
                ..ListCapturesRequest::default()
            })
            .await?;
        if let Some(info) = all.iter().find(|c| c.capture_id == b.capture_id).cloned() {
            let same: Vec<CaptureInfo> =
                all.into_iter().filter(|c| c.agent == info.agent).collect();
            return Ok(Some((info, same)));
        }
        if host.is_empty() {
            break;
        }
    }
    Ok(None)
}

/// The baseline of `b` among the collector's committed captures of the
/// same agent identity, by commit time; each candidate's manifest is read
/// for its label. Returns the chosen capture id.
///
/// # Errors
/// [`AnalystError`] when the collector refuses, or does not hold B.
pub async fn on_collector(
    client: &mut AnalystClient,
    b: &Manifest,
) -> Result<Option<(String, Rule)>, AnalystError> {
    let (info, same) = find_b(client, b).await?.ok_or_else(|| {
        AnalystError::Rpc(format!(
            "capture {} is not on this collector, so its host's captures there are unknown (leave out --server to look beside it)",
            b.capture_id
        ))
    })?;
    let Some(before) = instant(&info.committed_at) else {
        return Ok(None);
    };
    let mut list = Vec::new();
    for c in same {
        let Some(at) = instant(&c.committed_at).filter(|at| *at < before) else {
            continue;
        };
        if c.capture_id == info.capture_id || c.status != "complete" {
            continue;
        }
        let (m, _) = client.manifest(&c.capture_id).await?;
        list.push(Candidate {
            labelled: is_baseline(&m),
            item: c.capture_id,
            at,
        });
    }
    tracing::debug!(
        agent = %crate::render::escape(&info.agent),
        candidates = list.len(),
        "Baseline candidates on the collector"
    );
    Ok(choose(before, &list).map(|(id, rule)| (id.clone(), rule)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(id: &str, host: &str, start: &str) -> (String, Manifest) {
        let mut m = super::super::rules::fixture::manifest();
        m.capture_id = id.into();
        m.host.hostname = host.into();
        m.started_at = start.into();
        (id.to_owned(), m)
    }

    #[test]
    fn the_baseline_is_the_labelled_else_the_earliest_earlier_capture_of_the_host() {
        let b = at("B", "web-1", "2026-12-03T00:00:00Z").1;
        let mut c = vec![
            at("other-host", "db-1", "2026-11-01T00:00:00Z"),
            at("second", "web-1", "2026-12-02T00:00:00Z"),
            at("first", "web-1", "2026-12-01T00:00:00Z"),
            at("later", "web-1", "2026-12-04T00:00:00Z"),
        ];
        let pick = |c: &[(String, Manifest)]| beside(&b, c).map(|(t, r)| (t.clone(), r));
        assert_eq!(pick(&c), Some(("first".into(), Rule::Earliest)));
        c[1].1.options = json!({"labels": {"baseline": "true"}});
        assert_eq!(pick(&c), Some(("second".into(), Rule::Labelled)));
        // A labelled capture after B, or of another host, is no baseline.
        c[1].1.options = json!({});
        c[3].1.options = json!({"labels": {"baseline": "true"}});
        c[0].1.options = json!({"labels": {"baseline": "true"}});
        assert_eq!(pick(&c), Some(("first".into(), Rule::Earliest)));
        // Of two labelled ones, the earlier (a later one cannot displace it).
        c[1].1.options = json!({"labels": {"baseline": "true"}});
        c[2].1.options = json!({"labels": {"baseline": "true"}});
        assert_eq!(pick(&c), Some(("first".into(), Rule::Labelled)));
        // Any value but "true" is not the label.
        c[1].1.options = json!({"labels": {"baseline": "yes"}});
        c[2].1.options = json!({"labels": {"baseline": true}});
        c[3].1.options = json!({});
        assert_eq!(pick(&c), Some(("first".into(), Rule::Earliest)));
        assert_eq!(pick(&c[..1]), None);
    }

    #[test]
    fn the_same_machine_id_is_the_same_host_whatever_the_hostname() {
        let mut b = at("B", "ip-10-0-0-9", "2026-12-03T00:00:00Z").1;
        b.host.machine_id = Some("m1".into());
        let mut first = at("first", "ip-10-0-0-5", "2026-12-01T00:00:00Z");
        first.1.host.machine_id = Some("m1".into());
        let mut clone = at("clone", "ip-10-0-0-9", "2026-11-01T00:00:00Z");
        clone.1.host.machine_id = Some("m2".into());
        let c = vec![first, clone];
        assert_eq!(beside(&b, &c).map(|(t, _)| t.as_str()), Some("first"));
    }
}
