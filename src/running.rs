//! Whether a relay is running on a spool: `serve` (and `demo`) hold an
//! exclusive `flock` on `relay.lock` in the spool for their lifetime, so
//! `queue flush` can tell the administrator whether anyone will take its
//! request. The kernel drops the lock when the process dies, even by
//! SIGKILL, so a stale file never claims a relay that is gone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock file's name in the spool directory.
pub const LOCK_FILE: &str = "relay.lock";

/// Takes the lock for a starting relay; keep the file open while running.
/// `None` when it cannot be taken (another relay holds it, or the spool is
/// read-only): running without it only costs `queue flush` its answer.
pub fn hold(spool_root: &Path) -> Option<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool_root.join(LOCK_FILE))
        .ok()?;
    flock(&file, libc::LOCK_EX | libc::LOCK_NB).then_some(file)
}

/// True when some process holds the lock: a relay is running on this spool.
pub fn is_running(spool_root: &Path) -> bool {
    let Ok(file) = File::open(spool_root.join(LOCK_FILE)) else {
        return false;
    };
    // A shared lock is refused only while a relay holds the exclusive one;
    // ours is released when `file` is closed.
    !flock(&file, libc::LOCK_SH | libc::LOCK_NB)
}

fn flock(file: &File, operation: i32) -> bool {
    // SAFETY: flock(2) on a descriptor we own for the call's duration.
    unsafe { libc::flock(file.as_raw_fd(), operation) == 0 }
}
