//! Lowering the agent's own CPU and I/O priority.
//!
//! On Linux both the nice value and the I/O priority belong to a thread and
//! are inherited by threads it creates, so this runs first thing in `main`,
//! before any worker thread exists.

/// Nice value the agent runs at by default.
pub const NICE: i32 = 10;

const IOPRIO_WHO_PROCESS: libc::c_long = 1;
const IOPRIO_CLASS_BE: libc::c_long = 2;
const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
/// Lowest best-effort level: served after everyone else, but never starved
/// the way the idle class can be on a busy disk.
const IOPRIO_BE_LOWEST: libc::c_long = 7;

/// What [`lower`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lowered {
    /// Nice value set, or the error.
    pub nice: Result<i32, String>,
    /// I/O priority set (class/level), or the error.
    pub io: Result<String, String>,
}

impl Lowered {
    /// True when both were lowered.
    #[must_use]
    pub fn fully(&self) -> bool {
        self.nice.is_ok() && self.io.is_ok()
    }
}

/// Sets nice 10 and best-effort I/O level 7 on the calling thread (and so
/// on every thread it starts afterwards). Never fails the capture.
#[must_use]
pub fn lower() -> Lowered {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let nice = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    let nice = if nice == 0 {
        Ok(NICE)
    } else {
        Err(std::io::Error::last_os_error().to_string())
    };
    let prio = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | IOPRIO_BE_LOWEST;
    // SAFETY: ioprio_set takes plain integers and touches no memory of ours.
    let io = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio) };
    let io = if io == 0 {
        Ok(format!("best-effort/{IOPRIO_BE_LOWEST}"))
    } else {
        Err(std::io::Error::last_os_error().to_string())
    };
    Lowered { nice, io }
}
