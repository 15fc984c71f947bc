//! What a rule reports: one [`Finding`] with pointers into the evidence.

use serde::{Deserialize, Serialize};

/// How urgent a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; often benign.
    Info,
    /// Unusual; look when time allows.
    Low,
    /// Suspicious; look today.
    Medium,
    /// Typical of an intrusion; look first.
    High,
}

impl Severity {
    /// Every severity, most urgent first.
    pub const ALL: [Self; 4] = [Self::High, Self::Medium, Self::Low, Self::Info];

    /// The name used in JSON and tables.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// Where in the capture a finding's evidence is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// Artifact name (`processes.jsonl.gz`).
    pub artifact: String,
    /// 1-based record line in it (`zcat ARTIFACT | sed -n LINEp`).
    pub line: u64,
    /// The process concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The file or address concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// One finding of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable id: the rule and its subject (`deleted_exe:pid=812@4711`),
    /// the same in two captures of one boot when the subject is the same.
    pub id: String,
    /// The rule that fired.
    pub rule: String,
    /// Short title.
    pub title: String,
    /// How urgent.
    pub severity: Severity,
    /// MITRE ATT&CK technique id (`T1620`).
    pub mitre: String,
    /// One line saying why this matters here.
    pub why: String,
    /// Where the evidence is.
    pub pointers: Vec<Pointer>,
}

/// At most this many findings per rule, so a hostile capture with a
/// million flagged rows yields a bounded report; the last one says so.
pub const MAX_PER_RULE: usize = 500;

/// Findings of one rule as it runs, capped at [`MAX_PER_RULE`].
#[derive(Debug)]
pub struct Sink<'a> {
    rule: &'static str,
    out: &'a mut Vec<Finding>,
    count: usize,
    dropped: usize,
}

impl<'a> Sink<'a> {
    /// Collects the findings of `rule` into `out`.
    pub fn new(rule: &'static str, out: &'a mut Vec<Finding>) -> Self {
        Self {
            rule,
            out,
            count: 0,
            dropped: 0,
        }
    }

    /// Adds a finding (`subject` completes its id).
    pub fn add(
        &mut self,
        subject: &str,
        title: impl Into<String>,
        severity: Severity,
        mitre: &str,
        why: impl Into<String>,
        pointers: Vec<Pointer>,
    ) {
        if self.count >= MAX_PER_RULE {
            self.dropped += 1;
            return;
        }
        self.count += 1;
        self.out.push(Finding {
            id: format!("{}:{subject}", self.rule),
            rule: self.rule.to_owned(),
            title: title.into(),
            severity,
            mitre: mitre.to_owned(),
            why: why.into(),
            pointers,
        });
    }
}

impl Drop for Sink<'_> {
    fn drop(&mut self) {
        if self.dropped > 0 {
            self.out.push(Finding {
                id: format!("{}:truncated", self.rule),
                rule: self.rule.to_owned(),
                title: format!("{} more findings of this rule not listed", self.dropped),
                severity: Severity::Info,
                mitre: String::new(),
                why: format!("each rule lists at most {MAX_PER_RULE} findings"),
                pointers: Vec::new(),
            });
        }
    }
}

/// A pointer to record `line` of table `table`.
#[must_use]
pub fn at(table: &str, line: u64) -> Pointer {
    Pointer {
        artifact: super::evidence::artifact(table),
        line,
        pid: None,
        path: None,
    }
}

impl Pointer {
    /// With the process concerned.
    #[must_use]
    pub fn pid(mut self, pid: i32) -> Self {
        self.pid = Some(pid);
        self
    }

    /// With the file or address concerned.
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}
