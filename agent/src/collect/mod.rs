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

/// Splits `items` into `threads` contiguous parts and maps each part on its
/// own scoped thread, keeping the input order in the output.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.max(1);
    if threads == 1 || items.len() < 2 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Maps `items` in parallel a batch at a time and hands each result to
/// `emit` in input order, so what is held at once is bounded by bytes, not
/// by the number of items: a batch stops starting items once its results
/// (as `size` counts them) pass `max_bytes`, and the items not started go
/// to the next batch. The first item of a batch always runs, so a single
/// result bigger than `max_bytes` still makes progress.
///
/// # Errors
/// The first error `emit` returns (no later item is emitted).
pub fn bounded_ordered<T: Sync, R: Send, E>(
    items: &[T],
    threads: usize,
    max_bytes: u64,
    f: impl Fn(&T) -> R + Sync,
    size: impl Fn(&R) -> u64 + Sync,
    mut emit: impl FnMut(&T, R) -> Result<(), E>,
) -> Result<(), E> {
    /// Items per batch: enough for every thread, few enough to keep the
    /// unstarted tail cheap.
    const BATCH: usize = 64;
    let mut start = 0;
    while start < items.len() {
        let end = start.saturating_add(BATCH).min(items.len());
        let used = std::sync::atomic::AtomicU64::new(0);
        let indices: Vec<usize> = (start..end).collect();
        let results = parallel_map(&indices, threads, |&i| {
            use std::sync::atomic::Ordering::Relaxed;
            if i != start && used.load(Relaxed) >= max_bytes {
                return None;
            }
            let item = items.get(i)?;
            let r = f(item);
            used.fetch_add(size(&r), Relaxed);
            Some(r)
        });
        let mut next = end;
        for (i, result) in indices.iter().zip(results) {
            let (Some(r), Some(item)) = (result, items.get(*i)) else {
                // Not started (the batch was full): the next batch starts
                // here; results read past it are read again there.
                next = *i;
                break;
            };
            emit(item, r)?;
        }
        start = next.max(start + 1);
    }
    Ok(())
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
    fn parallel_map_keeps_order() {
        let items: Vec<u32> = (0..1000).collect();
        let out = super::parallel_map(&items, 3, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
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
