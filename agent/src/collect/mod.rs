//! One module per artifact. Each collector reads from injectable roots so
//! tests can feed fixtures, records what it cannot read as errors, and
//! never ends the capture: only a sink failure does.

pub mod accounts;
pub mod blocking_fs;
pub mod connections;
pub mod fsread;
pub mod imds;
pub mod journal_table;
pub mod kernel;
pub mod kernel_symbols;
pub mod logs;
pub mod memory_maps;
pub mod memory_regions;
pub mod network_state;
pub mod own_task;
pub mod physical;
pub mod proc_dir;
pub mod processes;
pub mod system;
pub mod users;
pub mod volatile_files;
pub mod yara;

use std::path::PathBuf;

use crate::options::CaptureOptions;
use crate::sink::CaptureSink;

/// Where host data is read from. `Roots::host()` is the real host; tests
/// point the fields at fixture trees.
#[derive(Debug, Clone)]
pub struct Roots {
    /// procfs mount (`/proc`).
    pub proc: PathBuf,
    /// `/etc`.
    pub etc: PathBuf,
    /// `/var/log`.
    pub var_log: PathBuf,
    /// `/var/run` / `/run` (utmp lives in `<run>/utmp`).
    pub run: PathBuf,
    /// sysfs mount (`/sys`).
    pub sys: PathBuf,
}

impl Roots {
    /// The running host.
    #[must_use]
    pub fn host() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            etc: PathBuf::from("/etc"),
            var_log: PathBuf::from("/var/log"),
            run: PathBuf::from("/run"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// What every collector gets.
pub struct Context<'a> {
    /// Destination of the artifacts.
    pub sink: &'a dyn CaptureSink,
    /// The capture's options.
    pub options: &'a CaptureOptions,
    /// Where host data is read from.
    pub roots: &'a Roots,
    /// uid/gid to name tables of the host.
    pub accounts: &'a accounts::Accounts,
    /// Boot time and tick rate, for absolute process start times.
    pub clock: &'a system::BootClock,
    /// Worker threads for parallel collectors.
    pub threads: usize,
    /// Mount points of file systems that can block, never entered or read
    /// (empty with `--enter-remote-fs`).
    pub blocking: blocking_fs::BlockingMounts,
    /// Artifacts a collector dropped because they could not be stored
    /// (it kept its other artifacts): the capture is partial.
    pub dropped: Dropped,
}

/// Artifacts dropped by collectors, with the reason.
#[derive(Debug, Default)]
pub struct Dropped(std::sync::Mutex<Vec<ircap_proto::manifest::CaptureError>>);

impl Dropped {
    /// Records that `artifact` was dropped for `why`.
    pub fn push(&self, artifact: &str, why: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(ircap_proto::manifest::CaptureError {
                source: artifact.to_owned(),
                message: why,
            });
    }

    /// Everything recorded.
    pub fn take(&self) -> Vec<ircap_proto::manifest::CaptureError> {
        std::mem::take(
            &mut self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Maps `items` on `threads` workers and hands each result to `emit` in
/// input order while the workers go on, so reading and writing overlap
/// and what is held at once is bounded by bytes, not by the number of
/// items: a worker starts no new item while the results waiting to be
/// emitted (as `size` counts them) weigh `max_bytes` or more, unless that
/// item is the next to be emitted, so a single result bigger than
/// `max_bytes` still makes progress. At most `max_bytes` plus one result
/// per worker is held.
///
/// # Errors
/// The first error `emit` returns (no later item is emitted, and the
/// workers start no new item).
pub fn bounded_ordered<T: Sync, R: Send, E>(
    items: &[T],
    threads: usize,
    max_bytes: u64,
    f: impl Fn(&T) -> R + Sync,
    size: impl Fn(&R) -> u64 + Sync,
    mut emit: impl FnMut(&T, R) -> Result<(), E>,
) -> Result<(), E> {
    use std::collections::BTreeMap;
    use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

    /// What the workers and the emitter share.
    struct Progress {
        /// The next item a worker may start.
        next_start: usize,
        /// The next item `emit` gets.
        next_emit: usize,
        /// Bytes of results read and not yet emitted.
        held: u64,
        /// Set when `emit` failed: start nothing more.
        stop: bool,
    }
    fn lock(m: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    let threads = threads.max(1);
    if threads == 1 || items.len() < 2 {
        for item in items {
            emit(item, f(item))?;
        }
        return Ok(());
    }
    let progress = Mutex::new(Progress {
        next_start: 0,
        next_emit: 0,
        held: 0,
        stop: false,
    });
    let room = Condvar::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, R, u64)>();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(items.len()) {
            let done_tx = done_tx.clone();
            let (progress, room, f, size) = (&progress, &room, &f, &size);
            scope.spawn(move || {
                loop {
                    let i = {
                        let mut p = lock(progress);
                        loop {
                            if p.stop || p.next_start >= items.len() {
                                return;
                            }
                            if p.held < max_bytes || p.next_start == p.next_emit {
                                break;
                            }
                            p = room.wait(p).unwrap_or_else(PoisonError::into_inner);
                        }
                        p.next_start += 1;
                        p.next_start - 1
                    };
                    let Some(item) = items.get(i) else { return };
                    let r = f(item);
                    let n = size(&r);
                    lock(progress).held += n;
                    if done_tx.send((i, r, n)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut waiting: BTreeMap<usize, (R, u64)> = BTreeMap::new();
        let mut outcome = Ok(());
        for (next, item) in items.iter().enumerate() {
            let (r, n) = loop {
                if let Some(ready) = waiting.remove(&next) {
                    break ready;
                }
                match done_rx.recv() {
                    Ok((i, r, n)) if i == next => break (r, n),
                    Ok((i, r, n)) => {
                        waiting.insert(i, (r, n));
                    }
                    // Every worker is gone: only after a panic in `f`.
                    Err(_) => return outcome,
                }
            };
            outcome = emit(item, r);
            {
                let mut p = lock(&progress);
                p.held = p.held.saturating_sub(n);
                p.next_emit = next + 1;
                p.stop = outcome.is_err();
            }
            room.notify_all();
            if outcome.is_err() {
                break;
            }
        }
        outcome
    })
}

/// Keeps at most `max` capture-level errors per source.
pub fn dedupe_capture_errors(errors: &mut Vec<ircap_proto::manifest::CaptureError>, max: usize) {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    errors.retain(|e| {
        let n = seen.entry(e.source.clone()).or_insert(0);
        *n += 1;
        *n <= max
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_ordered_stops_at_the_first_emit_error() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let items: Vec<usize> = (0..10_000).collect();
        let started = AtomicUsize::new(0);
        let mut emitted = Vec::new();
        let r = super::bounded_ordered(
            &items,
            2,
            64,
            |&x| {
                started.fetch_add(1, Ordering::SeqCst);
                x
            },
            |_| 8,
            |_, x| {
                if x == 10 {
                    return Err(x);
                }
                emitted.push(x);
                Ok(())
            },
        );
        assert_eq!(r, Err(10));
        assert_eq!(emitted, (0..10).collect::<Vec<_>>());
        // The workers stopped starting items soon after: the byte bound
        // (64 bytes of 8-byte results) keeps them close to the writer.
        let started = started.load(Ordering::SeqCst);
        assert!(started < 100, "{started} items started after the error");
    }

    #[test]
    fn bounded_ordered_keeps_order_and_bounds_what_is_held() {
        use std::sync::atomic::{AtomicU64, Ordering};
        /// A result that weighs its value while it is alive.
        struct Weight<'a>(u64, &'a AtomicU64);
        impl Drop for Weight<'_> {
            fn drop(&mut self) {
                self.1.fetch_sub(self.0, Ordering::SeqCst);
            }
        }
        let items: Vec<u64> = (0..1000).collect();
        let held = AtomicU64::new(0);
        let peak = AtomicU64::new(0);
        let mut out = Vec::new();
        let r: Result<(), ()> = super::bounded_ordered(
            &items,
            3,
            500,
            |&x| {
                let now = held.fetch_add(x, Ordering::SeqCst) + x;
                peak.fetch_max(now, Ordering::SeqCst);
                Weight(x, &held)
            },
            |w| w.0,
            |_, w| {
                out.push(w.0);
                Ok(())
            },
        );
        assert!(r.is_ok());
        assert_eq!(out, items);
        // A batch stops starting items at 500 bytes; each of the 3 threads
        // may have started one more (at most 999 bytes).
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak < 500 + 3 * 1000, "{peak}");
        assert_eq!(held.load(Ordering::SeqCst), 0);
        // One item bigger than the budget still goes through.
        let mut big = Vec::new();
        let r: Result<(), ()> = super::bounded_ordered(
            &[7u64, 8],
            2,
            1,
            |&x| x,
            |_| 1 << 40,
            |_, x| {
                big.push(x);
                Ok(())
            },
        );
        assert!(r.is_ok());
        assert_eq!(big, [7, 8]);
    }
}
