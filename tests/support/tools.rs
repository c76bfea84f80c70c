//! Third-party programs the tests drive (swaks, openssl, haproxy, Postfix's
//! smtp-sink, Exim, strace, ...): found or reported missing with the one
//! way to install them, run with a time limit; and the few facts about this
//! machine they depend on.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

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

/// How long any one tool may run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished tool left behind.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Everything it printed, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Asserts that stdout contains each of `needles`.
    #[track_caller]
    pub fn assert_stdout_has(&self, needles: &[&str]) {
        for needle in needles {
            assert!(self.stdout.contains(needle), "{}", self.output());
        }
    }
}

/// Runs `cmd` to completion with `input` on its stdin, within TOOL_TIMEOUT
/// (the child is killed if it overruns).
pub async fn run_tool(cmd: &mut Command, input: &[u8]) -> Ran {
    let what = format!("{:?}", cmd.as_std());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}; {INSTALL_HINT}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written alongside the wait so a tool that reads late cannot deadlock us;
    // an early exit (broken pipe) is the tool's business, judged by its output.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let output = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} still running after {TOOL_TIMEOUT:?}; killed"))
        .unwrap();
    writer.await.unwrap();
    Ran {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
