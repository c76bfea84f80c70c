//! Paths named in the config: where a relative one points, and whether a
//! secret's file is readable by more than it should be.

use std::path::{Path, PathBuf};

/// `p` resolved against the directory of the config file `file`, so
/// `certs/smarthost.crt` beside `/etc/smarthost/smarthost.toml` means
/// `/etc/smarthost/certs/smarthost.crt`.
pub(super) fn resolve(file: &Path, p: PathBuf) -> PathBuf {
    if p.is_relative() {
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        base.join(p)
    } else {
        p
    }
}

/// The mode of the secret at `path` when it lets anyone in beyond the owner
/// and a group that may only read (e.g. `ssl-cert`): any bit of 0o137. `None`
/// when tight, or when missing (loading it reports that).
pub(super) fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o137 != 0).then_some(mode)
}
