//! The per-step watchdog: each capture step runs on its own thread and is
//! waited for only as long as its share of `--deadline`.
//!
//! Every read of the host goes through the careful open, and file systems
//! that can block are not entered unless asked; this is the net under
//! both. A thread blocked in the kernel cannot be killed, so a step past
//! its share is *abandoned*: its [`StepSink`] door is shut (what it had
//! closed is kept, what it had open is dropped, it can store nothing
//! more), the step is recorded in the manifest's errors, and the capture
//! goes on and is committed as partial. The blocked thread is left behind;
//! a one-shot agent exits without joining it (exit kills it), and the
//! daemon restarts itself after reporting (see [`crate::daemon`]).
//!
//! A step's share is the time left before the deadline less a small
//! reserve for each step still to come, so one stuck step does not cost
//! the steps after it; a step that would start past the deadline is not
//! started and is recorded as cut.
//!
//! A step is also abandoned earlier, once it has made no progress for a
//! tenth of the deadline (5 s to 60 s): nothing stored through its door,
//! no call into the sink under way, and no CPU time used by its threads
//! (the step's own and the workers it started, which carry its name).
//! A read of a hung file system does none of these, so with the default
//! 10-minute deadline it costs one minute, not the nine the steps after it
//! need; a step that hashes, scans or waits for the collector is never
//! taken for stuck.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ircap_proto::ArtifactEntry;
use ircap_proto::manifest::CaptureError;

use crate::collect::accounts::Accounts;
use crate::collect::blocking_fs::BlockingMounts;
use crate::collect::system::BootClock;
use crate::collect::{Context, Dropped, Roots};
use crate::options::CaptureOptions;
use crate::sink::CaptureSink;
use crate::sink::step::StepSink;

/// Longest reserve kept for each step still to come.
const MAX_RESERVE: Duration = Duration::from_secs(2);

/// Bounds of how long a step may go without progress (a tenth of the
/// deadline, within these).
const MIN_STALL: Duration = Duration::from_secs(5);
const MAX_STALL: Duration = Duration::from_secs(60);

/// How often the watchdog looks at a running step's progress.
const TICK: Duration = Duration::from_millis(250);

/// CPU clock ticks used so far by this process's threads named `comm`
/// (a step's thread and the unnamed workers it started, which inherit
/// its name). Our own `/proc/self/task`, never another process's.
fn cpu_ticks_named(comm: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read(t.path().join("stat")).ok())
        .filter_map(|stat| {
            let open = stat.iter().position(|&b| b == b'(')?;
            let close = stat.iter().rposition(|&b| b == b')')?;
            if stat.get(open + 1..close)? != comm.as_bytes() {
                return None;
            }
            let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
            // After the comm: state is field 3, utime 14, stime 15.
            let mut fields = rest.split_ascii_whitespace().skip(11);
            let utime: u64 = fields.next()?.parse().ok()?;
            let stime: u64 = fields.next()?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// The kernel's name of a thread named `name` (15 bytes at most).
fn kernel_comm(name: &str) -> String {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// What every step reads, shared with the step threads (an abandoned one
/// may outlive the capture).
pub struct Shared {
    /// The capture's sink; each step gets its own door into it.
    pub sink: Arc<dyn CaptureSink>,
    /// The capture's options.
    pub options: CaptureOptions,
    /// Where host data is read from.
    pub roots: Roots,
    /// uid/gid names.
    pub accounts: Accounts,
    /// Boot time and tick rate.
    pub clock: BootClock,
    /// Worker threads for parallel collectors.
    pub threads: usize,
    /// Mount points never entered.
    pub blocking: BlockingMounts,
}

/// Why the watchdog stopped waiting for a step.
enum Ended {
    /// Its share of the deadline ran out.
    Share,
    /// No progress for the stall time.
    Stalled,
    /// Its thread ended without a result (it panicked).
    Gone,
}

/// Why a step gave nothing back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Not started: the deadline had passed.
    Cut,
    /// Started and abandoned by the watchdog.
    Abandoned,
}

/// Runs the steps of one capture under the watchdog.
pub struct Steps {
    shared: Arc<Shared>,
    deadline: Instant,
    reserve: Duration,
    /// How long a step may go without progress.
    stall: Duration,
    /// Steps planned and not yet run.
    to_come: usize,
    /// Steps not started because the deadline had passed.
    pub cut: Vec<&'static str>,
    /// Steps abandoned, with what was recorded about each.
    pub abandoned: Vec<CaptureError>,
    /// Artifacts an abandoned step had finished: kept.
    pub kept: Vec<ArtifactEntry>,
    /// Artifacts a finished step dropped (it kept the others).
    pub dropped: Vec<CaptureError>,
}

impl Steps {
    /// A watchdog for `planned` steps that must end by `started` plus the
    /// capture's `--deadline`.
    #[must_use]
    pub fn new(shared: Arc<Shared>, started: Instant, planned: usize) -> Self {
        let total = shared.options.deadline;
        Self {
            deadline: started + total,
            reserve: (total / 20).min(MAX_RESERVE),
            stall: (total / 10).clamp(MIN_STALL, MAX_STALL),
            shared,
            to_come: planned,
            cut: Vec::new(),
            abandoned: Vec::new(),
            kept: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// How long the next step may take: the time left less a reserve for
    /// each step after it, and at least one reserve (within the time left).
    fn share(&self, left: Duration) -> Duration {
        let after = u32::try_from(self.to_come.saturating_sub(1)).unwrap_or(u32::MAX);
        left.saturating_sub(self.reserve.saturating_mul(after))
            .max(self.reserve.min(left))
    }

    /// Runs `step` (named as in the manifest) on its own thread and waits
    /// for its result up to its share of the deadline.
    ///
    /// # Errors
    /// [`Missed`] when the step was cut or abandoned (recorded here).
    pub fn run<T: Send + 'static>(
        &mut self,
        name: &'static str,
        step: impl FnOnce(&Context<'_>) -> T + Send + 'static,
    ) -> Result<T, Missed> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let share = self.share(left);
        self.to_come = self.to_come.saturating_sub(1);
        if left.is_zero() {
            if !self.cut.contains(&name) {
                self.cut.push(name);
            }
            return Err(Missed::Cut);
        }
        let door = StepSink::new(name, Arc::clone(&self.shared.sink));
        let handle = door.handle();
        let shared = Arc::clone(&self.shared);
        let (tx, rx) = mpsc::sync_channel(1);
        let t0 = Instant::now();
        let span = tracing::Span::current();
        let thread_name = format!("ircap-{name}");
        let comm = kernel_comm(&thread_name);
        let spawned = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let _span = span.enter();
                let ctx = Context {
                    sink: &door,
                    options: &shared.options,
                    roots: &shared.roots,
                    accounts: &shared.accounts,
                    clock: &shared.clock,
                    threads: shared.threads,
                    blocking: shared.blocking.clone(),
                    dropped: Dropped::default(),
                };
                let out = step(&ctx);
                // The watchdog may have gone: then nobody wants it.
                let _ = tx.send((out, ctx.dropped.take()));
            });
        if let Err(e) = spawned {
            self.abandoned.push(CaptureError {
                source: name.to_owned(),
                message: format!("not collected: cannot start its thread: {e}"),
            });
            return Err(Missed::Abandoned);
        }
        let until = t0 + share;
        let mut seen = (handle.progress().0, cpu_ticks_named(&comm));
        let mut moved_at = t0;
        let why = loop {
            let now = Instant::now();
            if now >= until {
                break Ended::Share;
            }
            match rx.recv_timeout(TICK.min(until - now)) {
                Ok((out, dropped)) => {
                    self.dropped.extend(dropped);
                    return Ok(out);
                }
                Err(RecvTimeoutError::Disconnected) => break Ended::Gone,
                Err(RecvTimeoutError::Timeout) => {
                    let (stored, in_sink) = handle.progress();
                    let now_seen = (stored, cpu_ticks_named(&comm));
                    if in_sink || now_seen != seen {
                        seen = now_seen;
                        moved_at = Instant::now();
                    } else if moved_at.elapsed() >= self.stall {
                        break Ended::Stalled;
                    }
                }
            }
        };
        let kept = handle.abandon();
        let message = match why {
            Ended::Share => format!(
                "abandoned after {:.1}s, its share of the --deadline of {}s: a read did not return; {} finished artifact(s) of it kept, the rest dropped",
                t0.elapsed().as_secs_f64(),
                self.shared.options.deadline.as_secs(),
                kept.len()
            ),
            Ended::Stalled => format!(
                "abandoned after {:.1}s without progress for {}s (nothing stored, no CPU used: a read did not return); {} finished artifact(s) of it kept, the rest dropped",
                t0.elapsed().as_secs_f64(),
                self.stall.as_secs(),
                kept.len()
            ),
            Ended::Gone => format!(
                "abandoned: its thread ended without a result; {} finished artifact(s) of it kept",
                kept.len()
            ),
        };
        tracing::warn!(step = name, "Step abandoned: {message}");
        self.kept.extend(kept);
        self.abandoned.push(CaptureError {
            source: name.to_owned(),
            message,
        });
        Err(Missed::Abandoned)
    }

    /// Records that `name` was not collected because the step it needed
    /// (`because`) was cut or abandoned.
    pub fn skipped(&mut self, name: &'static str, because: &str, missed: Missed) {
        match missed {
            Missed::Cut => {
                if !self.cut.contains(&name) {
                    self.cut.push(name);
                }
            }
            Missed::Abandoned => self.abandoned.push(CaptureError {
                source: name.to_owned(),
                message: format!("not collected: the {because} step it needs was abandoned"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::artifact::JsonlWriter;
    use crate::sink::dir::DirSink;

    fn steps(tmp: &std::path::Path, deadline: Duration, planned: usize) -> Steps {
        let mut options = CaptureOptions::with_defaults(tmp.to_path_buf());
        options.deadline = deadline;
        let shared = Shared {
            sink: Arc::new(DirSink::create(tmp, "c1").unwrap()),
            options,
            roots: Roots::host(),
            accounts: Accounts::default(),
            clock: BootClock::read(),
            threads: 1,
            blocking: BlockingMounts::default(),
        };
        Steps::new(Arc::new(shared), Instant::now(), planned)
    }

    #[test]
    fn a_step_that_never_returns_is_abandoned_within_its_share() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = steps(tmp.path(), Duration::from_secs(2), 3);
        // Blocks for real: a channel nobody ever sends on.
        let (never_tx, never_rx) = mpsc::channel::<()>();
        let t0 = Instant::now();
        let got = s.run("kernel", move |ctx| {
            let mut t = JsonlWriter::open(ctx.sink, "kernel", "kernel").unwrap();
            t.write(&1).unwrap();
            let done = t.finish().unwrap();
            let _open = JsonlWriter::open(ctx.sink, "mounts", "kernel").unwrap();
            let _ = never_rx.recv();
            done
        });
        let took = t0.elapsed();
        assert_eq!(got.err(), Some(Missed::Abandoned));
        // 2 s less a 100 ms reserve for each of the 2 steps after it.
        assert!(took >= Duration::from_millis(1700), "{took:?}");
        assert!(took < Duration::from_millis(1950), "{took:?}");
        assert_eq!(s.abandoned[0].source, "kernel");
        assert!(s.abandoned[0].message.contains("abandoned after"));
        assert_eq!(s.kept.len(), 1, "the finished table is kept");
        // The next steps still run, within the reserve kept for them.
        assert_eq!(s.run("users", |_| 7).ok(), Some(7));
        drop(never_tx);
    }

    /// A sink whose first artifact's first write waits `wait`, as an
    /// upload waits for a collector's acknowledgements or a reconnect.
    struct SlowSink {
        inner: DirSink,
        wait: Duration,
    }

    struct SlowArtifact {
        inner: Box<dyn crate::sink::ArtifactOut>,
        wait: Option<Duration>,
    }

    impl std::io::Write for SlowArtifact {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if let Some(wait) = self.wait.take() {
                std::thread::sleep(wait);
            }
            self.inner.write(data)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    impl crate::sink::ArtifactOut for SlowArtifact {
        fn close(
            self: Box<Self>,
            stored: &ircap_proto::Digest,
            content: &ircap_proto::Digest,
        ) -> Result<(), crate::sink::SinkError> {
            self.inner.close(stored, content)
        }
    }

    impl CaptureSink for SlowSink {
        fn create(
            &self,
            name: &ircap_proto::ArtifactName,
            encoding: ircap_proto::manifest::Encoding,
        ) -> Result<Box<dyn crate::sink::ArtifactOut>, crate::sink::SinkError> {
            Ok(Box::new(SlowArtifact {
                inner: self.inner.create(name, encoding)?,
                wait: Some(self.wait),
            }))
        }
        fn commit(&self, m: &ircap_proto::Manifest) -> Result<String, crate::sink::SinkError> {
            self.inner.commit(m)
        }
        fn abort(&self) {}
    }

    #[test]
    fn a_step_without_progress_is_abandoned_long_before_its_share() {
        let tmp = tempfile::tempdir().unwrap();
        // A tenth of 60 s: 6 s without progress, where the share is 56 s.
        let mut s = steps(tmp.path(), Duration::from_secs(60), 3);
        let (never_tx, never_rx) = mpsc::channel::<()>();
        let t0 = Instant::now();
        let got = s.run("kernel", move |ctx| {
            let mut t = JsonlWriter::open(ctx.sink, "kernel", "kernel").unwrap();
            t.write(&1).unwrap();
            let done = t.finish().unwrap();
            let _ = never_rx.recv();
            done
        });
        let took = t0.elapsed();
        assert_eq!(got.err(), Some(Missed::Abandoned));
        assert!(took >= Duration::from_secs(6), "{took:?}");
        assert!(took < Duration::from_secs(9), "{took:?}");
        let why = &s.abandoned[0].message;
        assert!(why.contains("without progress for 6s"), "{why}");
        assert_eq!(s.kept.len(), 1, "the finished table is kept");
        drop(never_tx);
    }

    #[test]
    fn a_step_using_cpu_or_waiting_for_the_sink_is_not_taken_for_stuck() {
        let tmp = tempfile::tempdir().unwrap();
        // 5 s without progress would abandon it; each step below goes
        // 7 s without storing a byte.
        let mut s = steps(tmp.path(), Duration::from_secs(50), 2);
        // (Named apart from the other tests' steps: CPU is counted by
        // thread name, and they share this process.)
        let busy = s.run("processes", |_| {
            let t0 = Instant::now();
            let mut x = 0u64;
            while t0.elapsed() < Duration::from_secs(7) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            x
        });
        assert!(busy.is_ok(), "{:?}", s.abandoned);

        let slow = Arc::new(SlowSink {
            inner: DirSink::create(tmp.path(), "c2").unwrap(),
            wait: Duration::from_secs(7),
        });
        let mut options = CaptureOptions::with_defaults(tmp.path().to_path_buf());
        options.deadline = Duration::from_secs(50);
        let shared = Shared {
            sink: slow,
            options,
            roots: Roots::host(),
            accounts: Accounts::default(),
            clock: BootClock::read(),
            threads: 1,
            blocking: BlockingMounts::default(),
        };
        let mut s = Steps::new(Arc::new(shared), Instant::now(), 1);
        let waited = s.run("users", |ctx| {
            let mut t = JsonlWriter::open(ctx.sink, "logins", "users").unwrap();
            t.write(&1).unwrap();
            t.finish().map(|e| e.name)
        });
        assert!(
            matches!(waited, Ok(Ok(ref n)) if n == "logins.jsonl.gz"),
            "{waited:?} {:?}",
            s.abandoned
        );
    }

    #[test]
    fn a_step_past_the_deadline_is_not_started() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = steps(tmp.path(), Duration::from_millis(1), 2);
        std::thread::sleep(Duration::from_millis(5));
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let got = s.run("users", move |_| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(got.err(), Some(Missed::Cut));
        assert_eq!(s.cut, ["users"]);
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
