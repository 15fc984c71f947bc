//! The file store's read cache: capture states and finished-entry record
//! sets, kept in memory so that an upload stream's start and end read
//! them without a hand-off to a blocking thread (in the 500-agent load
//! run those hand-offs, three per artifact, cost more than the reads).
//!
//! It is correct because one collector process owns a store directory
//! (the file store's contract, see [`super::file`]): every write goes
//! through this process, and each one tells the cache.
//!
//! - A write of a key (object or record set) *begins* before it touches
//!   the disk and *ends* after it is durable or has failed. Beginning
//!   bumps the key's generation, so a read that went to the disk before
//!   or during the write never fills the cache with what it read.
//! - An object being written is not served from the cache (a read goes
//!   to the disk, like without the cache); its new bytes are cached when
//!   the write succeeds and no other write of it overlapped (two writes
//!   whose order on disk is unknown leave it uncached).
//! - A record set stays served while records are appended: each append
//!   adds its own record once durable (appends of different records
//!   commute); a failed one drops the set from the cache.
//! - Bounded: past [`MAX_ENTRIES`] keys or [`MAX_BYTES`] of values the
//!   cache is emptied (keys being written keep their place, without a
//!   value).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Most keys held.
pub const MAX_ENTRIES: usize = 4096;
/// Most bytes of values held (approximately: names and records).
pub const MAX_BYTES: usize = 32 << 20;

/// A value's size as the cache counts it.
pub trait Weigh {
    /// Bytes held.
    fn weight(&self) -> usize;
}

impl Weigh for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weigh for std::collections::BTreeMap<String, Vec<u8>> {
    fn weight(&self) -> usize {
        self.iter().map(|(k, v)| k.len() + v.len() + 32).sum()
    }
}

#[derive(Debug)]
struct Slot<V> {
    /// Bumped by every write that begins.
    generation: u64,
    /// Writes in progress.
    writing: u32,
    /// Another write began while one was in progress.
    overlapped: bool,
    value: Option<V>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Self {
            generation: 0,
            writing: 0,
            overlapped: false,
            value: None,
        }
    }
}

#[derive(Debug)]
struct Table<V> {
    /// Bumped when the cache is emptied.
    epoch: u64,
    slots: HashMap<String, Slot<V>>,
    bytes: usize,
}

/// What a read that missed must show to fill the cache: nothing was
/// written to the key (and the cache not emptied) since it looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillTicket {
    epoch: u64,
    generation: u64,
}

/// A write in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTicket {
    generation: u64,
}

/// A cache of values of type `V` by key (see the module docs).
#[derive(Debug)]
pub struct ReadCache<V> {
    table: Mutex<Table<V>>,
}

impl<V> Default for ReadCache<V> {
    fn default() -> Self {
        Self {
            table: Mutex::new(Table {
                epoch: 0,
                slots: HashMap::new(),
                bytes: 0,
            }),
        }
    }
}

impl<V: Weigh + Clone> ReadCache<V> {
    fn table(&self) -> MutexGuard<'_, Table<V>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached value of `key` (`f` applied to it), or the ticket to
    /// fill it with what the disk holds.
    pub fn get<T>(&self, key: &str, f: impl FnOnce(&V) -> T) -> Result<T, FillTicket> {
        let t = self.table();
        match t.slots.get(key) {
            // An object being written has no value; a record set does.
            Some(Slot { value: Some(v), .. }) => Ok(f(v)),
            Some(slot) => Err(FillTicket {
                epoch: t.epoch,
                // Being written: read the disk, and do not fill.
                generation: if slot.writing > 0 {
                    u64::MAX
                } else {
                    slot.generation
                },
            }),
            None => Err(FillTicket {
                epoch: t.epoch,
                generation: 0,
            }),
        }
    }

    /// Caches `value`, read from the disk after `ticket` was taken, unless
    /// a write began since.
    pub fn fill(&self, key: &str, ticket: FillTicket, value: V) {
        let mut t = self.table();
        if ticket.epoch != t.epoch || ticket.generation == u64::MAX {
            return;
        }
        let generation = t.slots.get(key).map_or(0, |s| s.generation);
        if generation != ticket.generation || t.slots.get(key).is_some_and(|s| s.writing > 0) {
            return;
        }
        let weight = value.weight();
        if weight > MAX_BYTES / 4 {
            return;
        }
        Self::make_room(&mut t, weight);
        let slot = t.slots.entry(key.to_owned()).or_default();
        let old = slot.value.replace(value).map_or(0, |v| v.weight());
        t.bytes = t.bytes + weight - old.min(t.bytes);
    }

    /// A write of `key` begins. With `keep`, the cached value stays served
    /// (record sets); else it is dropped.
    pub fn begin_write(&self, key: &str, keep: bool) -> WriteTicket {
        let mut t = self.table();
        if !t.slots.contains_key(key) {
            Self::make_room(&mut t, 0);
        }
        let slot = t.slots.entry(key.to_owned()).or_default();
        slot.generation += 1;
        if slot.writing > 0 {
            slot.overlapped = true;
        }
        slot.writing += 1;
        let generation = slot.generation;
        let dropped = if keep {
            0
        } else {
            slot.value.take().map_or(0, |v| v.weight())
        };
        t.bytes -= dropped.min(t.bytes);
        WriteTicket { generation }
    }

    /// The write of `ticket` succeeded: `update` makes the new value from
    /// the cached one, if any (an object's new bytes, a set with the
    /// record added).
    pub fn end_write(
        &self,
        key: &str,
        ticket: WriteTicket,
        update: impl FnOnce(Option<V>) -> Option<V>,
    ) {
        self.finish(key, ticket, Some(update));
    }

    /// The write of `ticket` failed, or its outcome is unknown: the value
    /// is dropped.
    pub fn abandon_write(&self, key: &str, ticket: WriteTicket) {
        self.finish(key, ticket, None::<fn(Option<V>) -> Option<V>>);
    }

    fn finish(
        &self,
        key: &str,
        ticket: WriteTicket,
        update: Option<impl FnOnce(Option<V>) -> Option<V>>,
    ) {
        let mut t = self.table();
        let Some(slot) = t.slots.get_mut(key) else {
            return;
        };
        slot.writing = slot.writing.saturating_sub(1);
        let sole = !slot.overlapped && slot.generation == ticket.generation;
        let old = slot.value.take();
        let old_weight = old.as_ref().map_or(0, Weigh::weight);
        let new = match update {
            // An object: cached only when no other write overlapped.
            Some(update) if sole || old.is_some() => update(old),
            _ => None,
        };
        if slot.writing == 0 {
            slot.overlapped = false;
        }
        let new_weight = new.as_ref().map_or(0, Weigh::weight);
        slot.value = new;
        t.bytes = (t.bytes - old_weight.min(t.bytes)) + new_weight;
        if t.bytes > MAX_BYTES {
            Self::make_room(&mut t, 0);
        }
    }

    /// Drops every value, and every fill in progress (keys were changed
    /// behind the cache's back, e.g. a directory removed).
    pub fn forget_all(&self) {
        Self::empty(&mut self.table());
    }

    /// Empties the cache when adding `weight` bytes or one key would pass
    /// a bound; keys being written keep their slot (without a value).
    fn make_room(t: &mut Table<V>, weight: usize) {
        if t.slots.len() >= MAX_ENTRIES || t.bytes + weight > MAX_BYTES {
            Self::empty(t);
        }
    }

    fn empty(t: &mut Table<V>) {
        t.epoch += 1;
        t.slots.retain(|_, s| s.writing > 0);
        for slot in t.slots.values_mut() {
            slot.value = None;
        }
        t.bytes = 0;
    }
}

/// A cache shared by the clones of one store.
pub type Shared<V> = Arc<ReadCache<V>>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn bytes(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn set_to(v: Vec<u8>) -> impl FnOnce(Option<Vec<u8>>) -> Option<Vec<u8>> {
        move |_| Some(v)
    }

    #[test]
    fn a_read_never_caches_what_a_write_since_replaced() {
        let c = ReadCache::<Vec<u8>>::default();
        // A read misses and goes to the disk; a write begins and ends
        // meanwhile: the read's (old) bytes are not cached.
        let ticket = c.get("k", Clone::clone).unwrap_err();
        let w = c.begin_write("k", false);
        c.end_write("k", w, set_to(bytes("new")));
        c.fill("k", ticket, bytes("old"));
        assert_eq!(c.get("k", Clone::clone), Ok(bytes("new")));

        // While a write is in progress nothing is served from the cache.
        let w = c.begin_write("k", false);
        assert!(c.get("k", Clone::clone).is_err());
        let during = c.get("k", Clone::clone).unwrap_err();
        c.fill("k", during, bytes("stale"));
        assert!(c.get("k", Clone::clone).is_err());
        // A failed write leaves it uncached; the next read fills it.
        c.abandon_write("k", w);
        let t = c.get("k", Clone::clone).unwrap_err();
        c.fill("k", t, bytes("disk"));
        assert_eq!(c.get("k", Clone::clone), Ok(bytes("disk")));
    }

    #[test]
    fn overlapping_writes_of_an_object_leave_it_uncached() {
        let c = ReadCache::<Vec<u8>>::default();
        let a = c.begin_write("k", false);
        let b = c.begin_write("k", false);
        c.end_write("k", b, set_to(bytes("b")));
        c.end_write("k", a, set_to(bytes("a")));
        // Which rename came last is unknown: read the disk.
        assert!(c.get("k", Clone::clone).is_err());
        // A write on its own is cached again.
        let w = c.begin_write("k", false);
        c.end_write("k", w, set_to(bytes("c")));
        assert_eq!(c.get("k", Clone::clone), Ok(bytes("c")));
    }

    #[test]
    fn appends_to_a_cached_set_commute_and_a_failed_one_drops_it() {
        type Set = std::collections::BTreeMap<String, Vec<u8>>;
        let c = ReadCache::<Set>::default();
        let t = c.get("s", Set::len).unwrap_err();
        c.fill("s", t, Set::new());
        let add = |name: &'static str| {
            move |set: Option<Set>| {
                set.map(|mut s| {
                    s.insert(name.to_owned(), b"r".to_vec());
                    s
                })
            }
        };
        let a = c.begin_write("s", true);
        let b = c.begin_write("s", true);
        // Served while appends are in progress.
        assert_eq!(c.get("s", Set::len), Ok(0));
        c.end_write("s", b, add("b"));
        c.end_write("s", a, add("a"));
        assert_eq!(c.get("s", Set::len), Ok(2));
        let f = c.begin_write("s", true);
        c.abandon_write("s", f);
        assert!(c.get("s", Set::len).is_err());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let c = ReadCache::<Vec<u8>>::default();
        let held = c.begin_write("held", false);
        for i in 0..(MAX_ENTRIES * 2) {
            let key = format!("k{i}");
            let t = c.get(&key, Clone::clone).unwrap_err();
            c.fill(&key, t, vec![0; 64]);
        }
        assert!(c.table().slots.len() <= MAX_ENTRIES);
        // A fill from before the cache was emptied does not land.
        let t = c.get("late", Clone::clone).unwrap_err();
        for i in 0..MAX_ENTRIES {
            let key = format!("m{i}");
            let t = c.get(&key, Clone::clone).unwrap_err();
            c.fill(&key, t, vec![0; 8]);
        }
        c.fill("late", t, bytes("x"));
        assert!(c.get("late", Clone::clone).is_err());
        // The write in progress kept its slot and ends normally.
        c.end_write("held", held, set_to(bytes("h")));
        assert_eq!(c.get("held", Clone::clone), Ok(bytes("h")));
        // A value too large for the cache is not taken.
        let big = c.get("big", Clone::clone).unwrap_err();
        c.fill("big", big, vec![0; MAX_BYTES / 2]);
        assert!(c.get("big", Clone::clone).is_err());
        assert!(c.table().bytes <= MAX_BYTES);
    }
}
