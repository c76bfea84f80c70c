//! Third-party programs the tests drive (swaks, openssl, haproxy, Postfix's
//! smtp-sink, Exim, strace, ...): found or reported missing with the one
//! way to install them, and the few facts about this machine they depend on.

use std::path::{Path, PathBuf};

/// What to do when a program is missing: a missing one is a test failure,
/// never a skip.
pub const INSTALL_HINT: &str = "run scripts/install-test-deps.sh (as root) first";

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether this process runs as root (the owner of /proc/self is the
/// effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The full path of `program`: as given if it has a `/`, else searched in
/// PATH and then the sbin directories (where Postfix puts smtp-sink, and
/// which a user's PATH may lack).
pub fn find(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// `find`, failing the test with the install hint when it is not there.
pub fn require(program: &str) -> PathBuf {
    find(program).unwrap_or_else(|| panic!("`{program}` not found: {INSTALL_HINT}"))
}
