//! Is a task the agent itself? The agent never reads its own memory or
//! file descriptors (they hold its private key and the capture in flight).
//!
//! `/proc/<tid>` exists for every thread even though `/proc` lists only
//! thread-group leaders, so a pid named by a request may be one of the
//! agent's threads: the test is whether the task is one of the agent's
//! thread group (listed under `/proc/<agent>/task/`), not the pid; that
//! is one lookup where reading `/proc/<pid>/status` for it was three
//! system calls and the kernel's rendering of the whole status per
//! process.

use std::path::Path;

/// The agent's thread-group id.
#[must_use]
pub fn agent_tgid() -> i32 {
    // The agent never forks, so its pid is read once (each scan asks for
    // every process).
    static TGID: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *TGID.get_or_init(|| i32::try_from(std::process::id()).unwrap_or(0))
}

/// Whether `pid` (a process or any thread) belongs to the agent: a task
/// of its thread group is always listed under its own `task` directory.
#[must_use]
pub fn is_agent(proc_root: &Path, pid: i32) -> bool {
    let me = agent_tgid();
    // A task of the agent's thread group is listed under its `task`.
    pid == me
        || proc_root
            .join(me.to_string())
            .join("task")
            .join(pid.to_string())
            .symlink_metadata()
            .is_ok()
}

/// The `Tgid:` of a `/proc/PID/status`.
#[must_use]
pub fn tgid(status: &[u8]) -> Option<i32> {
    status
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"Tgid:"))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_agents_own_threads_are_recognised() {
        let proc_root = Path::new("/proc");
        assert!(is_agent(proc_root, agent_tgid()));
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, agent_tgid());
        assert!(is_agent(proc_root, tid), "thread {tid}");
        assert!(!is_agent(proc_root, 1));
        t.join().unwrap();
        assert_eq!(tgid(b"Name:\tx\nTgid:\t42\nPid:\t43\n"), Some(42));
    }
}
