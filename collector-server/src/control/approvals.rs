//! A second pair of eyes for intrusive requests (`serve --approvals`).
//!
//! A request of an approval class (memory, physical memory, one matching
//! more than N agents or targeting all, yara) is not written to
//! `requests/` — the only place delivery reads — but to `pending/<id>`,
//! where it waits until a *different* analyst approves it with
//! `ircap-collector approve ID`, or until its approval window lapses.
//! Approval writes the request to `requests/` (so request documents stay
//! immutable once delivery can see them) with the approver in its spec,
//! which the agent records in the manifest's `case.approved_by`.
//!
//! "Different" means neither the same certificate identity name (compared
//! without case: a second certificate issued to the same name is the same
//! person) nor the same certificate (SHA-256).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Status;

use super::docs::RequestDoc;

/// Default time a request may wait for approval.
pub const DEFAULT_APPROVAL_TTL: Duration = Duration::from_secs(4 * 3600);
/// Default fleet size above which a request needs approval.
pub const DEFAULT_FLEET_HOSTS: usize = 5;

/// What needs a second analyst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Classes that need approval: `memory`, `physical`, `fleet`, `yara`.
    pub classes: BTreeSet<String>,
    /// `fleet`: more than this many agents matched (or `--all`).
    pub fleet_hosts: usize,
    /// How long a request may wait for approval.
    pub ttl: Duration,
}

/// The approval classes there are.
pub const CLASSES: [&str; 4] = ["memory", "physical", "fleet", "yara"];

impl ApprovalPolicy {
    /// Parses `--approvals memory,fleet`.
    ///
    /// # Errors
    /// A message naming an unknown class.
    pub fn parse(list: &str, fleet_hosts: usize, ttl: Duration) -> Result<Self, String> {
        let mut classes = BTreeSet::new();
        for c in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !CLASSES.contains(&c) {
                return Err(format!(
                    "--approvals: unknown class {c:?} (expected {})",
                    CLASSES.join(", ")
                ));
            }
            classes.insert(c.to_owned());
        }
        Ok(Self {
            classes,
            fleet_hosts,
            ttl,
        })
    }

    /// The classes of `doc` (with `matched` agents connected) that need
    /// approval; empty when it can go out now.
    #[must_use]
    pub fn classes_of(&self, doc: &RequestDoc, matched: usize) -> Vec<String> {
        let spec = &doc.spec;
        let is = |class: &str| match class {
            "memory" => spec.memory_regions.is_some(),
            "physical" => spec.physical_memory,
            "fleet" => doc.target.all || matched > self.fleet_hosts,
            "yara" => spec
                .artifacts
                .iter()
                .chain(std::iter::once(&spec.profile))
                .any(|a| a.contains("yara")),
            _ => false,
        };
        self.classes.iter().filter(|c| is(c)).cloned().collect()
    }
}

/// `pending/<id>`: a request waiting for approval, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDoc {
    /// The request as it will be delivered once approved.
    pub request: RequestDoc,
    /// Why it needs approval.
    pub classes: Vec<String>,
    /// The requester's certificate SHA-256.
    pub requested_by_sha256: String,
    /// How long the request is delivered once approved (seconds).
    pub ttl_seconds: u64,
    /// When an unapproved request lapses (RFC 3339).
    pub approval_expires_at: String,
    /// `pending` or `approved`.
    pub status: String,
    /// The approving analyst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The approver's certificate SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by_sha256: Option<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
}

/// Checks that `approver` may approve `pending` now.
///
/// # Errors
/// `failed_precondition` when it is not pending or has lapsed;
/// `permission_denied` when the approver is the requester.
pub fn check_approver(
    pending: &PendingDoc,
    approver: &crate::auth::Identity,
) -> Result<(), Status> {
    let id = &pending.request.request_id;
    if pending.status != "pending" {
        return Err(Status::failed_precondition(format!(
            "request {id} is {} already (by {})",
            pending.status,
            pending.approved_by.as_deref().unwrap_or("-")
        )));
    }
    if super::docs::older_than(&pending.approval_expires_at, Duration::ZERO) {
        return Err(Status::failed_precondition(format!(
            "request {id} expired unapproved at {}",
            pending.approval_expires_at
        )));
    }
    if approver
        .name
        .eq_ignore_ascii_case(&pending.request.created_by)
        || approver.fingerprint_sha256 == pending.requested_by_sha256
    {
        return Err(Status::permission_denied(format!(
            "{} requested {id} and cannot approve it: another analyst must",
            pending.request.created_by
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Identity, Role};
    use crate::control::docs::TargetDoc;

    fn doc(spec: ircap_proto::v1::CaptureSpec, all: bool) -> RequestDoc {
        RequestDoc {
            request_id: "r1".into(),
            created_by: "alice".into(),
            created_at: super::super::docs::now(),
            expires_at: super::super::docs::from_now(Duration::from_secs(60)),
            target: TargetDoc {
                all,
                ..TargetDoc::default()
            },
            spec,
            max_bytes: 0,
            max_seconds: 0,
        }
    }

    fn who(name: &str, sha: &str) -> Identity {
        Identity {
            name: name.into(),
            role: Role::Analyst,
            fingerprint_sha256: sha.into(),
            subject: String::new(),
        }
    }

    #[test]
    fn classes_are_what_the_request_asks() {
        let policy = ApprovalPolicy::parse("memory,physical,fleet,yara", 3, DEFAULT_APPROVAL_TTL)
            .unwrap_or_else(|e| panic!("{e}"));
        let plain = ircap_proto::v1::CaptureSpec::default();
        assert!(policy.classes_of(&doc(plain.clone(), false), 3).is_empty());
        assert_eq!(policy.classes_of(&doc(plain.clone(), false), 4), ["fleet"]);
        assert_eq!(policy.classes_of(&doc(plain, true), 0), ["fleet"]);
        let physical = ircap_proto::v1::CaptureSpec {
            physical_memory: true,
            memory_regions: Some(ircap_proto::v1::MemorySelector::default()),
            ..Default::default()
        };
        assert_eq!(
            policy.classes_of(&doc(physical, false), 1),
            ["memory", "physical"]
        );
        assert!(ApprovalPolicy::parse("memory,cpu", 3, DEFAULT_APPROVAL_TTL).is_err());
    }

    #[test]
    fn the_requester_never_approves_under_any_certificate() {
        let pending = PendingDoc {
            request: doc(ircap_proto::v1::CaptureSpec::default(), true),
            classes: vec!["fleet".into()],
            requested_by_sha256: "aa".into(),
            ttl_seconds: 60,
            approval_expires_at: super::super::docs::from_now(Duration::from_secs(60)),
            status: "pending".into(),
            approved_by: None,
            approved_by_sha256: None,
            approved_at: None,
        };
        // Same name, another certificate; same certificate, another name.
        for (name, sha) in [("alice", "bb"), ("ALICE", "cc"), ("mallory", "aa")] {
            let err = check_approver(&pending, &who(name, sha));
            assert_eq!(
                err.map_err(|s| s.code()),
                Err(tonic::Code::PermissionDenied),
                "{name}"
            );
        }
        assert!(check_approver(&pending, &who("bob", "bb")).is_ok());
        let mut lapsed = pending.clone();
        lapsed.approval_expires_at = "2000-01-01T00:00:00Z".into();
        assert!(check_approver(&lapsed, &who("bob", "bb")).is_err());
        let mut done = pending;
        done.status = "approved".into();
        assert!(check_approver(&done, &who("bob", "bb")).is_err());
    }
}
