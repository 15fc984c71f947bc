//! The capture index, built for listing: `list --since 30d` over 100,000
//! captures reads a few dozen small objects, never one per capture.
//!
//! ```text
//! index/records/<day>/<capture-id>.json   one record per committed capture, written at commit
//! index/days/<day>.ndjson                 that day's records merged: a header line, then one per line
//! ```
//!
//! - `<day>` is the UTC date (`YYYY-MM-DD`) on the committing collector's
//!   clock when it wrote the record: never a time the agent claims, so an
//!   agent cannot scatter its records over thousands of days, and a
//!   capture whose claimed start is at or after `--since` always has its
//!   record on the day of `--since` or later (it was committed after it
//!   started; one day of slack covers clock skew between agent and
//!   collector).
//! - Records are written by the collector from the verified manifest only
//!   (the agent identity is the certificate's, the host-supplied fields are
//!   cut to [`MAX_HOST_FIELD`] bytes), and the output side escapes them
//!   ([`crate::render`]); a record is JSON, so no host text can start a
//!   line of a segment.
//! - A day segment is a cache of the day's records: any replica *merges*
//!   a day by reading the segment (and its version), listing the day's
//!   records, reading those not in it, and writing the union with a
//!   conditional write (`If-None-Match: *` when there was none, `If-Match`
//!   on the version read otherwise). Of two replicas merging at once one
//!   write wins and the other reads again, so no record is ever dropped;
//!   records are never removed by a merge.
//! - A day merged more than [`SEAL_GRACE`] after it ended is *sealed*: no
//!   record can arrive for it any more, so a listing reads its segment and
//!   nothing else. A day not sealed (today, yesterday) is merged on read.
//!   A commit whose record write crossed midnight merges that day itself,
//!   so a sealed segment never misses a record unless a collector's clock
//!   is off by more than the grace.
//! - A segment that is missing, unreadable or does not match the digest in
//!   its header is rebuilt from the day's records when a listing meets it;
//!   [`Evidence::reindex`] rebuilds records and segments from the evidence
//!   itself (every committed manifest), for a lost or damaged index.

use std::collections::BTreeMap;
use std::time::Duration;

use ircap_proto::artifact_name::MANIFEST_FILE;
use ircap_proto::hashing::to_hex as hex;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

use super::blob::{Blob, Class, get_many};
use super::evidence::Evidence;
use super::{IndexEntry, StoreError};

/// How long after its end a day may still receive records (commits that
/// started before midnight, clock skew between replicas); merged later, a
/// day is sealed.
pub const SEAL_GRACE: Duration = Duration::from_secs(3600);

/// Longest host-supplied text kept in a record (hostname, instance id,
/// times); longer text is cut at a character boundary.
pub const MAX_HOST_FIELD: usize = 256;

/// Format version in a segment's header.
const SEGMENT_FORMAT: u32 = 1;

/// Attempts at a conditional segment write before giving up.
const MERGE_RETRIES: usize = 16;

/// Day segments a listing reads at once, ahead of the day it hands out.
pub const LIST_AHEAD: usize = 8;

const RECORDS_DIR: &str = "index/records";
const DAYS_DIR: &str = "index/days";

/// The first line of a day segment.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    ircap_index: u32,
    day: String,
    records: usize,
    /// SHA-256 (hex) of the lines after the header.
    sha256: String,
    sealed: bool,
}

/// A decoded day segment.
#[derive(Debug, Default)]
struct Segment {
    entries: BTreeMap<String, IndexEntry>,
    sealed: bool,
}

/// A merge read and not yet written ([`Evidence::prepare_merge`]).
#[derive(Debug)]
pub struct Merge {
    day: String,
    seg: Segment,
    version: Option<super::blob::Version>,
    unchanged: bool,
    added: usize,
}

/// What [`Evidence::reindex`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReindexReport {
    /// Committed captures found (a record written for each).
    pub captures: usize,
    /// Day segments written.
    pub days: usize,
    /// Captures whose manifest could not be read (logged, left out).
    pub skipped: usize,
}

/// `YYYY-MM-DD` of `t` (UTC).
fn day_of(t: OffsetDateTime) -> String {
    let d = t.to_offset(time::UtcOffset::UTC).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The date of a `YYYY-MM-DD` name, `None` for anything else.
fn parse_day(name: &str) -> Option<Date> {
    let b = name.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year: i32 = name.get(0..4)?.parse().ok()?;
    let month: u8 = name.get(5..7)?.parse().ok()?;
    let day: u8 = name.get(8..10)?.parse().ok()?;
    Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

/// Whether `day` ended more than [`SEAL_GRACE`] before `now`.
fn sealable(day: &str, now: OffsetDateTime) -> bool {
    parse_day(day).is_some_and(|d| {
        let end = d.midnight().assume_utc() + time::Duration::days(1);
        now - end > SEAL_GRACE
    })
}

fn record_key(day: &str, id: &str) -> String {
    format!("{RECORDS_DIR}/{day}/{id}.json")
}

fn segment_key(day: &str) -> String {
    format!("{DAYS_DIR}/{day}.ndjson")
}

/// `text` cut to at most [`MAX_HOST_FIELD`] bytes at a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_HOST_FIELD);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

/// The record as stored: host-supplied fields bounded.
#[must_use]
pub fn bounded_entry(entry: &IndexEntry) -> IndexEntry {
    IndexEntry {
        hostname: bounded(&entry.hostname),
        instance_id: entry.instance_id.as_deref().map(bounded),
        started_at: bounded(&entry.started_at),
        ended_at: bounded(&entry.ended_at),
        case: entry.case.as_deref().map(bounded),
        ..entry.clone()
    }
}

fn encode_segment(day: &str, seg: &Segment) -> Result<Vec<u8>, StoreError> {
    let mut body = Vec::new();
    for e in seg.entries.values() {
        serde_json::to_writer(&mut body, e).map_err(|e| StoreError::Corrupt {
            context: segment_key(day),
            message: e.to_string(),
        })?;
        body.push(b'\n');
    }
    let header = Header {
        ircap_index: SEGMENT_FORMAT,
        day: day.to_owned(),
        records: seg.entries.len(),
        sha256: hex(&sha2::Sha256::digest(&body)),
        sealed: seg.sealed,
    };
    let mut out = serde_json::to_vec(&header).map_err(|e| StoreError::Corrupt {
        context: segment_key(day),
        message: e.to_string(),
    })?;
    out.push(b'\n');
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode_segment(day: &str, bytes: &[u8]) -> Result<Segment, String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let (head, body) = (&bytes[..nl], &bytes[nl + 1..]);
    let header: Header = serde_json::from_slice(head).map_err(|e| format!("header: {e}"))?;
    if header.ircap_index != SEGMENT_FORMAT || header.day != day {
        return Err(format!(
            "header says format {} day {:?}",
            header.ircap_index, header.day
        ));
    }
    if hex(&sha2::Sha256::digest(body)) != header.sha256 {
        return Err("body does not match the header's SHA-256".into());
    }
    let mut entries = BTreeMap::new();
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let e: IndexEntry = serde_json::from_slice(line).map_err(|e| format!("record: {e}"))?;
        entries.insert(e.capture_id.clone(), e);
    }
    if entries.len() != header.records {
        return Err(format!(
            "{} records, the header says {}",
            entries.len(),
            header.records
        ));
    }
    Ok(Segment {
        entries,
        sealed: header.sealed,
    })
}

impl<B: Blob> Evidence<B> {
    /// Writes the index record of a committed capture under today's day;
    /// merges that day at once if the write crossed midnight (see the
    /// module docs).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be written.
    pub async fn write_index_record(&self, entry: &IndexEntry) -> Result<(), StoreError> {
        let day = day_of(OffsetDateTime::now_utc());
        self.put_index_record(&day, entry).await?;
        if day_of(OffsetDateTime::now_utc()) != day {
            self.merge_day(&day, false).await?;
        }
        Ok(())
    }

    async fn put_index_record(&self, day: &str, entry: &IndexEntry) -> Result<(), StoreError> {
        let key = record_key(day, &entry.capture_id);
        let bytes = serde_json::to_vec(&bounded_entry(entry)).map_err(|e| StoreError::Corrupt {
            context: key.clone(),
            message: e.to_string(),
        })?;
        self.blob().put(&key, bytes, Class::Control).await
    }

    /// The segment of `day` and its version; `Err` text when it is there
    /// but unreadable.
    async fn read_segment(
        &self,
        day: &str,
    ) -> Result<Option<(Result<Segment, String>, super::blob::Version)>, StoreError> {
        Ok(self
            .blob()
            .get_versioned(&segment_key(day))
            .await?
            .map(|(bytes, v)| (decode_segment(day, &bytes), v)))
    }

    /// Merges the records of `day` into its segment (see the module docs)
    /// and returns every record of the day. With `rebuild` the stored
    /// segment is ignored and rewritten from the records alone.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written, or the
    /// segment kept changing.
    pub async fn merge_day(&self, day: &str, rebuild: bool) -> Result<Vec<IndexEntry>, StoreError> {
        for attempt in 0..MERGE_RETRIES {
            let merge = self.prepare_merge(day, rebuild).await?;
            if let Some(entries) = self.write_merge(merge).await? {
                return Ok(entries);
            }
            tracing::debug!(day, "Index segment changed under us; merging again");
            // Replicas that collided wait a random while, longer each time
            // (up to 320 ms), so they stop colliding. The random bits of a
            // UUIDv7 serve as the random number.
            let cap_ms = 5u64 << attempt.min(6);
            #[allow(clippy::cast_possible_truncation)]
            let random = uuid::Uuid::now_v7().as_u128() as u64;
            tokio::time::sleep(std::time::Duration::from_millis(random % (cap_ms + 1))).await;
        }
        Err(StoreError::Backend {
            context: segment_key(day),
            message: format!("the segment kept changing over {MERGE_RETRIES} attempts"),
        })
    }

    /// The first half of [`Self::merge_day`]: the segment as read, with
    /// the day's records that were not in it.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn prepare_merge(&self, day: &str, rebuild: bool) -> Result<Merge, StoreError> {
        let key = segment_key(day);
        let (mut seg, version, damaged) = match self.read_segment(day).await? {
            Some((Ok(seg), v)) if !rebuild => (seg, Some(v), false),
            Some((Ok(_), v)) => (Segment::default(), Some(v), true),
            Some((Err(why), v)) => {
                tracing::warn!(key, why, "Rebuilding a damaged index segment");
                (Segment::default(), Some(v), true)
            }
            None => (Segment::default(), None, false),
        };
        let names = self.blob().list(&format!("{RECORDS_DIR}/{day}")).await?;
        let missing: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".json"))
            .filter(|id| !seg.entries.contains_key(*id))
            .map(|id| record_key(day, id))
            .collect();
        let added = missing.len();
        for (k, bytes) in get_many(self.blob(), &missing).await? {
            let Some(bytes) = bytes else { continue };
            match serde_json::from_slice::<IndexEntry>(&bytes) {
                Ok(e) => {
                    seg.entries.insert(e.capture_id.clone(), e);
                }
                Err(e) => {
                    tracing::warn!(key = k, error = %e, "Skipped an unreadable index record");
                }
            }
        }
        let seal = sealable(day, OffsetDateTime::now_utc());
        let unchanged = added == 0 && !damaged && version.is_some() && seg.sealed == seal;
        seg.sealed = seal;
        Ok(Merge {
            day: day.to_owned(),
            seg,
            version,
            unchanged,
            added,
        })
    }

    /// The second half of [`Self::merge_day`]: writes the merged segment
    /// only if the stored one is still the one read; `None` when it
    /// changed meanwhile (merge again).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be written.
    pub async fn write_merge(&self, merge: Merge) -> Result<Option<Vec<IndexEntry>>, StoreError> {
        let Merge {
            day,
            seg,
            version,
            unchanged,
            added,
        } = merge;
        if unchanged {
            return Ok(Some(seg.entries.into_values().collect()));
        }
        let key = segment_key(&day);
        let bytes = encode_segment(&day, &seg)?;
        let written = match &version {
            Some(v) => self.blob().replace_if(&key, bytes, v).await?,
            None => {
                self.blob()
                    .put_if_absent(&key, bytes, Class::Control)
                    .await?
            }
        };
        if !written {
            return Ok(None);
        }
        tracing::debug!(
            day,
            records = seg.entries.len(),
            added,
            "Merged an index day"
        );
        Ok(Some(seg.entries.into_values().collect()))
    }

    /// Every record of `day`: its segment alone when sealed, else merged.
    async fn day_entries(&self, day: &str) -> Result<Vec<IndexEntry>, StoreError> {
        if let Some((Ok(seg), _)) = self.read_segment(day).await?
            && seg.sealed
        {
            return Ok(seg.entries.into_values().collect());
        }
        self.merge_day(day, false).await
    }

    /// Days that have records, sorted.
    async fn index_days(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .blob()
            .list(RECORDS_DIR)
            .await?
            .into_iter()
            .filter(|n| parse_day(n).is_some())
            .collect())
    }

    /// The index days that can hold captures started at or after `since`
    /// (every day without it), oldest first.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn index_days_since(
        &self,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, StoreError> {
        // A day of slack: an agent's clock a little ahead of the
        // collector's.
        let first = since.map(|t| day_of(t - time::Duration::days(1)));
        Ok(self
            .index_days()
            .await?
            .into_iter()
            .filter(|d| first.as_ref().is_none_or(|f| d >= f))
            .collect())
    }

    /// A reader of the records of each of `days`, in the order of `days`
    /// (see [`DayReader`]).
    #[must_use]
    pub fn read_days(&self, days: Vec<String>) -> DayReader<B> {
        DayReader {
            ev: self.clone(),
            days: days.into_iter(),
            ahead: std::collections::VecDeque::new(),
        }
    }

    /// Every committed capture recorded on a day that can hold captures
    /// started at or after `since` (all of them without it), each once
    /// (a capture recorded twice, a commit repaired on a later day, is
    /// listed from its first day), by day and then capture id. The caller
    /// filters on the claimed start. Holds every record: listings to an
    /// analyst stream with [`Self::read_days`].
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn list_index(
        &self,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<IndexEntry>, StoreError> {
        let mut reader = self.read_days(self.index_days_since(since).await?);
        let mut seen = std::collections::HashSet::new();
        let mut all = Vec::new();
        while let Some(entries) = reader.next_day().await? {
            all.extend(
                entries
                    .into_iter()
                    .filter(|e| seen.insert(e.capture_id.clone())),
            );
        }
        Ok(all)
    }

    /// Merges the days that can still receive records (today, and days
    /// not sealed yet within the grace); run periodically so that a
    /// listing finds few records outside the segments.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn merge_recent(&self) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let oldest = day_of(now - time::Duration::days(2));
        for day in self.index_days().await? {
            if day >= oldest {
                self.merge_day(&day, false).await?;
            }
        }
        Ok(())
    }

    /// Moves index entries of the layout before day segments
    /// (`index/<capture-id>.json`) into records of their commit day;
    /// returns how many.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn migrate_flat_index(&self) -> Result<usize, StoreError> {
        let old: Vec<String> = self
            .blob()
            .list("index")
            .await?
            .into_iter()
            .filter(|n| n.ends_with(".json"))
            .map(|n| format!("index/{n}"))
            .collect();
        let mut days = std::collections::BTreeSet::new();
        for (key, bytes) in get_many(self.blob(), &old).await? {
            let Some(bytes) = bytes else { continue };
            match serde_json::from_slice::<IndexEntry>(&bytes) {
                Ok(e) => {
                    let day = committed_day(&e.committed_at);
                    self.put_index_record(&day, &e).await?;
                    days.insert(day);
                }
                Err(e) => tracing::warn!(key, error = %e, "Dropped an unreadable index entry"),
            }
            self.blob().delete(&key).await?;
        }
        for day in &days {
            self.merge_day(day, false).await?;
        }
        Ok(old.len())
    }

    /// Rebuilds the index from the evidence: a record for every capture
    /// with a committed manifest (on the day its receipt says it was
    /// committed, findings counted from its stored findings), then every
    /// day segment from the records.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn reindex(&self) -> Result<ReindexReport, StoreError> {
        let mut report = ReindexReport::default();
        let mut manifests = Vec::new();
        for agent in self.blob().list("captures").await? {
            for id in self.blob().list(&format!("captures/{agent}")).await? {
                manifests.push((
                    agent.clone(),
                    format!("captures/{agent}/{id}/{MANIFEST_FILE}"),
                ));
            }
        }
        let keys: Vec<String> = manifests.iter().map(|(_, k)| k.clone()).collect();
        let owners: BTreeMap<String, String> = manifests.into_iter().map(|(a, k)| (k, a)).collect();
        let mut days = std::collections::BTreeSet::new();
        for batch in keys.chunks(1024) {
            for (key, bytes) in get_many(self.blob(), batch).await? {
                let Some(bytes) = bytes else { continue };
                let manifest = match ircap_proto::manifest::Manifest::from_slice(&bytes, &key) {
                    Ok(m) if m.collector_receipt.is_some() => m,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(key, error = %e, "Cannot read a manifest; left out of the index");
                        report.skipped += 1;
                        continue;
                    }
                };
                let agent = owners.get(&key).cloned().unwrap_or_default();
                let committed_at = manifest
                    .collector_receipt
                    .as_ref()
                    .and_then(|r| r["committed_at"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let mut entry = super::repair::index_entry(&manifest, &agent, &committed_at);
                entry.findings = self.stored_findings(&manifest.capture_id).await;
                let day = committed_day(&committed_at);
                self.put_index_record(&day, &entry).await?;
                days.insert(day);
                report.captures += 1;
            }
        }
        for day in self.index_days().await? {
            self.merge_day(&day, true).await?;
            report.days += 1;
        }
        Ok(report)
    }

    /// Counts by severity of a capture's stored findings (empty when none).
    async fn stored_findings(&self, id: &str) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        let Ok(key) = crate::triage::at_commit::doc_key(id) else {
            return counts;
        };
        let Ok(Some(bytes)) = self.get_doc(&key).await else {
            return counts;
        };
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line)
                && let Some(sev) = v["severity"].as_str()
            {
                *counts.entry(bounded(sev)).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// The day of an RFC 3339 commit time; today when it is unreadable.
fn committed_day(at: &str) -> String {
    day_of(OffsetDateTime::parse(at, &Rfc3339).unwrap_or_else(|_| OffsetDateTime::now_utc()))
}

/// Reads an index day by day, [`LIST_AHEAD`] days ahead of the one it
/// hands out: memory holds a few days of records, whatever the index holds.
/// Dropping it stops the reads still running.
pub struct DayReader<B: Blob> {
    ev: Evidence<B>,
    days: std::vec::IntoIter<String>,
    ahead: std::collections::VecDeque<tokio::task::JoinHandle<Result<Vec<IndexEntry>, StoreError>>>,
}

impl<B: Blob> DayReader<B> {
    /// The next day's records sorted by capture id; `None` after the last.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn next_day(&mut self) -> Result<Option<Vec<IndexEntry>>, StoreError> {
        while self.ahead.len() < LIST_AHEAD {
            let Some(day) = self.days.next() else { break };
            let ev = self.ev.clone();
            self.ahead
                .push_back(tokio::spawn(async move { ev.day_entries(&day).await }));
        }
        let Some(next) = self.ahead.pop_front() else {
            return Ok(None);
        };
        let mut entries = next.await.map_err(|e| StoreError::Corrupt {
            context: "index listing".into(),
            message: e.to_string(),
        })??;
        entries.sort_by(|a, b| a.capture_id.cmp(&b.capture_id));
        Ok(Some(entries))
    }
}

impl<B: Blob> Drop for DayReader<B> {
    fn drop(&mut self) {
        for task in &self.ahead {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::store::file::FileBlob;

    fn entry(id: &str, host: &str) -> IndexEntry {
        IndexEntry {
            capture_id: id.into(),
            agent: "web-1".into(),
            hostname: host.into(),
            instance_id: None,
            started_at: "2026-01-01T00:00:00Z".into(),
            ended_at: "2026-01-01T00:00:01Z".into(),
            stored_bytes: 1,
            artifacts: 1,
            committed_at: "2026-01-01T00:00:02Z".into(),
            findings: BTreeMap::new(),
            case: None,
        }
    }

    #[test]
    fn days_parse_strictly_and_seal_after_the_grace() {
        assert!(parse_day("2026-02-28").is_some());
        for bad in [
            "2026-02-30",
            "2026-2-28",
            "x026-02-28",
            "2026-02-280",
            "../../x",
        ] {
            assert!(parse_day(bad).is_none(), "{bad}");
        }
        let at = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
        assert!(!sealable("2026-01-01", at("2026-01-02T00:59:00Z")));
        assert!(sealable("2026-01-01", at("2026-01-02T01:01:00Z")));
        assert_eq!(day_of(at("2026-01-01T23:59:59-02:00")), "2026-01-02");
    }

    #[test]
    fn segments_round_trip_and_damage_is_detected() {
        let mut seg = Segment::default();
        for id in ["b", "a"] {
            seg.entries
                .insert(id.into(), entry(id, "evil\n{\"capture_id\":\"x\"}"));
        }
        let bytes = encode_segment("2026-01-01", &seg).unwrap();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 3);
        let back = decode_segment("2026-01-01", &bytes).unwrap();
        assert_eq!(back.entries.len(), 2);
        assert!(decode_segment("2026-01-02", &bytes).is_err());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 1;
        assert!(decode_segment("2026-01-01", &flipped).is_err());
        assert!(decode_segment("2026-01-01", b"garbage").is_err());
    }

    #[test]
    fn host_fields_are_bounded_at_character_boundaries() {
        let long = "é".repeat(MAX_HOST_FIELD);
        let e = bounded_entry(&entry("a", &long));
        assert!(e.hostname.len() <= MAX_HOST_FIELD);
        assert!(e.hostname.chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn file_store_lists_through_segments_and_rebuilds_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let ev = Evidence::new(FileBlob::open(dir.path()).unwrap());
        for i in 0..5 {
            ev.write_index_record(&entry(&format!("c{i}"), "h"))
                .await
                .unwrap();
        }
        assert_eq!(ev.list_index(None).await.unwrap().len(), 5);
        let today = day_of(OffsetDateTime::now_utc());
        let seg = dir.path().join(segment_key(&today));
        assert!(seg.is_file());
        std::fs::write(&seg, b"{\"not\":\"a segment\"}\n").unwrap();
        assert_eq!(ev.list_index(None).await.unwrap().len(), 5);
        std::fs::remove_file(&seg).unwrap();
        assert_eq!(ev.list_index(None).await.unwrap().len(), 5);
        assert!(seg.is_file());
        // --since far in the future reads no day at all.
        let later = OffsetDateTime::now_utc() + time::Duration::days(3);
        assert!(ev.list_index(Some(later)).await.unwrap().is_empty());
    }
}
