//! Postfix's `smtp-sink` as a real third-party upstream on loopback: each
//! transaction captured to its own file (`-d`), the conversation logged
//! (`-v`), its fault options (`-r`, `-f`, `-q`, `-Q` with `-b`/`-B` replies)
//! passed through. No CHUNKING, so a relay sends it DATA with dot-stuffing,
//! read by a parser that is not ours. Killed when dropped.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::harness::upstream_toml;
use super::tools::{INSTALL_HINT, find, is_root};
use super::wait::listening;

pub struct SmtpSink {
    /// Kept so the captures outlive the process.
    _dir: tempfile::TempDir,
    pub port: u16,
    /// The path it was started by: the prefix of each line it logs.
    program: PathBuf,
    dumps: PathBuf,
    log: PathBuf,
    _child: Child,
}

/// One transaction as smtp-sink captured it.
#[derive(Debug)]
pub struct Dump {
    /// What followed `MAIL FROM:`: the path and its parameters.
    pub mail_args: String,
    /// What followed each `RCPT TO:`.
    pub rcpt_args: Vec<String>,
    /// The message as received: LF line ends (smtp-sink writes lines), dots
    /// unstuffed, without smtp-sink's own headers and final empty line.
    pub message: Vec<u8>,
}

impl Dump {
    /// The envelope sender, without brackets or parameters.
    pub fn mail(&self) -> String {
        path_of(&self.mail_args)
    }

    /// The envelope recipients, likewise.
    pub fn rcpts(&self) -> Vec<String> {
        self.rcpt_args.iter().map(|a| path_of(a)).collect()
    }
}

/// The address in `<...>` at the start of `arg`.
pub fn path_of(arg: &str) -> String {
    arg.trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_owned()
}

impl SmtpSink {
    /// Starts smtp-sink on 127.0.0.1:`port` with more `options` (faults).
    pub async fn start(port: u16, options: &[&str]) -> SmtpSink {
        Self::spawn(port, true, options)
            .await
            .unwrap_or_else(|e| panic!("{e}; {INSTALL_HINT}"))
    }

    /// Protocol only: nothing captured or logged (a reference to measure
    /// against); Err says why it did not start.
    pub async fn start_bare(port: u16) -> Result<SmtpSink, String> {
        Self::spawn(port, false, &[]).await
    }

    async fn spawn(port: u16, capture: bool, options: &[&str]) -> Result<SmtpSink, String> {
        let program = find("smtp-sink").ok_or("smtp-sink (Debian package postfix) not found")?;
        let dir = tempfile::tempdir().unwrap();
        let dumps = dir.path().join("dumps");
        fs::create_dir(&dumps).unwrap();
        let log = dir.path().join("smtp-sink.log");
        let mut cmd = Command::new(&program);
        if is_root() {
            // smtp-sink refuses to run as root without -u; the unprivileged
            // user must be able to write the captures.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
            fs::set_permissions(&dumps, fs::Permissions::from_mode(0o777)).unwrap();
            cmd.args(["-u", "nobody"]);
        }
        if capture {
            cmd.arg("-v").arg("-d").arg(dumps.join("m."));
        }
        let mut child = cmd
            .args(options)
            .arg(format!("127.0.0.1:{port}"))
            // The listen backlog: room for a relay's parallel connections.
            .arg("64")
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        if let Err(e) = listening(port, &mut child).await {
            return Err(format!(
                "smtp-sink {e}: {}",
                fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        Ok(SmtpSink {
            _dir: dir,
            port,
            program,
            dumps,
            log,
            _child: child,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// This sink as the relay's upstream `name` (no TLS: smtp-sink has none).
    pub fn upstream(&self, name: &str) -> String {
        upstream_toml(name, self.addr(), "none")
    }

    /// The commands smtp-sink read (its -v log), DATA content excluded.
    pub fn commands(&self) -> Vec<String> {
        let prefix = format!("{}: ", self.program.display());
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Commands logged that begin with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.commands()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    /// Every capture file's bytes, complete or still being written.
    pub fn captures(&self) -> Vec<Vec<u8>> {
        fs::read_dir(&self.dumps)
            .unwrap()
            .map(|e| fs::read(e.unwrap().path()).unwrap())
            .collect()
    }

    /// Every complete capture, parsed.
    pub fn dumps(&self) -> Vec<Dump> {
        self.captures()
            .iter()
            .filter_map(|c| parse_dump(c))
            .collect()
    }
}

/// A capture: `X-...:` lines, smtp-sink's folded Received header, the
/// message, an empty line. None while it is still being written.
fn parse_dump(bytes: &[u8]) -> Option<Dump> {
    if !bytes.ends_with(b"\n\n") {
        return None;
    }
    let (mut mail_args, mut rcpt_args) = (String::new(), Vec::new());
    let mut pos = 0;
    let mut received = false;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let l = String::from_utf8_lossy(line);
        if received {
            // The Received header's continuation lines begin with a tab.
            if !l.starts_with('\t') {
                break;
            }
        } else if let Some(v) = l.strip_prefix("X-Mail-Args: ") {
            mail_args = v.trim_end().to_owned();
        } else if let Some(v) = l.strip_prefix("X-Rcpt-Args: ") {
            rcpt_args.push(v.trim_end().to_owned());
        } else if l.starts_with("Received: ") {
            received = true;
        } else if !l.starts_with("X-") {
            break;
        }
        pos += line.len();
    }
    Some(Dump {
        mail_args,
        rcpt_args,
        message: bytes[pos..bytes.len() - 1].to_vec(),
    })
}
